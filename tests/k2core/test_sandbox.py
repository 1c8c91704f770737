"""Escape tests: hostile programs must be contained and leave the host unaffected."""
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from k2core import sandbox as sb
from k2core.sandbox import Limits, run, run_function_tests, run_stdio_tests

LAYER = sb.detect_isolation()


class _Warm:
    """The same job in a fresh warm worker, after a first job (so it is not the worker's first):
    exec'd from the worker's fork (`python ...`) or run in the fork itself (`python -S ...`)."""

    def __init__(self, fork: bool):
        self.fork, self.workers, self.baseline = fork, [], 0

    def __call__(self, argv, limits=Limits(), **kw):
        argv = list(argv)
        if self.fork:
            argv[1:1] = ["-S"]
        w = sb.WarmWorker(limits)
        self.workers.append(w)
        w.run(["python", "-S", "-c", "pass"])
        if w.uid is not None:
            self.baseline += len(sb.uid_processes(w.uid))
        return w.run(argv, limits=limits, **kw)

    def resident(self) -> int:
        """Processes the live workers themselves keep under their slot uids (bwrap, the worker)."""
        return self.baseline


@pytest.fixture(params=["one-shot", "warm-exec", "warm-fork"])
def sbx(request):
    """`run`, or the job in a warm worker: every hostile program below must be contained either way."""
    if request.param == "one-shot":
        one = lambda *a, **kw: run(*a, **kw)  # noqa: E731
        one.resident = lambda: 0
        yield one
        return
    if LAYER != "bubblewrap":
        pytest.skip("warm workers need the bubblewrap layer")
    warm = _Warm(fork=request.param == "warm-fork")
    yield warm
    for w in warm.workers:
        w.close()
    assert _uid_procs() == 0


_py = lambda code, **kw: run(["python", "-c", code], **kw)  # noqa: E731


@pytest.fixture
def py(sbx):
    return lambda code, **kw: sbx(["python", "-c", code], **kw)


def test_bubblewrap_is_used_where_installed(py):
    import shutil

    if shutil.which("bwrap"):
        assert LAYER == "bubblewrap"  # `make test` installs it; a silent downgrade would be a bug
    assert py("print(1)").isolation == LAYER


@pytest.fixture
def host_secret_files(tmp_path):
    """A secret in the user's home and in a project store, both outside the work dir."""
    home_file = Path.home() / f".k2-sandbox-test-{os.getpid()}"
    home_file.write_text("home secret")
    store_file = tmp_path / "k2-store" / "secret.txt"
    store_file.parent.mkdir()
    store_file.write_text("store secret")
    yield [home_file, store_file]
    home_file.unlink()


def test_reads_outside_the_work_dir_fail(host_secret_files, sbx):
    paths = ["/etc/shadow", "/etc/passwd", *map(str, host_secret_files)]
    code = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        print(p, 'READ', open(p).read()[:20])\n"
            "    except Exception as e:\n        print(p, 'DENIED', type(e).__name__)")
    r = sbx(["python", "-c", code, *paths])
    assert r.ok, r.stderr
    lines = r.stdout.strip().splitlines()
    denied = [p for p in paths if f"{p} DENIED" in r.stdout]
    if LAYER == "bubblewrap":
        assert denied == paths, lines  # not even /etc/passwd exists in there
    else:  # the other layers see the host's files; an unprivileged uid keeps private ones out
        assert "/etc/shadow" in denied and str(host_secret_files[0]) in denied
    assert "home secret" not in r.stdout and "store secret" not in r.stdout


def test_writes_outside_the_work_dir_do_not_reach_the_host(tmp_path, sbx):
    target = tmp_path / "escaped.txt"
    code = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'w').write('x'); print(p, 'WROTE')\n"
            "    except Exception as e:\n        print(p, 'DENIED', type(e).__name__)\nopen('inside.txt','w').write('ok')")
    r = sbx(["python", "-c", code, str(target), "/usr/k2-escape", "/tmp/k2-escape-probe"])
    assert r.ok, r.stderr
    assert f"{target} DENIED" in r.stdout and "/usr/k2-escape DENIED" in r.stdout
    assert not target.exists() and not Path("/usr/k2-escape").exists()
    if LAYER == "bubblewrap":  # /tmp inside is a private tmpfs
        assert "/tmp/k2-escape-probe WROTE" in r.stdout and not Path("/tmp/k2-escape-probe").exists()


@pytest.mark.skipif(LAYER == "rlimits", reason="the rlimits layer has no network namespace")
def test_no_network(sbx):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    code = ("import socket, sys\ntry:\n    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n"
            "    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', e.errno)\n"
            "print('IFACES', sorted(n for _, n in socket.if_nameindex()))\n"
            "print('ROUTES', len(open('/proc/net/route').read().splitlines()) - 1)")
    r = sbx(["python", "-c", code, str(port)])
    server.close()
    assert "BLOCKED" in r.stdout and not accepted
    assert "IFACES ['lo']" in r.stdout  # no interface to reach any other host through
    assert "ROUTES 0" in r.stdout


def _uid_procs():
    """Live processes under any sandbox slot uid."""
    return sum(len(sb.uid_processes(sb.BASE_UID + i)) for i in range(64))


def test_fork_bomb_is_contained(py, sbx):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    t0 = time.monotonic()
    r = py(code, limits=Limits(timeout_s=3, max_procs=32))
    assert time.monotonic() - t0 < 15
    assert r.stopped_by in ("timeout", "cpu_time") and not r.ok
    assert _uid_procs() == sbx.resident()  # nothing left behind (but a warm worker itself)
    assert py("print('still fine')").stdout.strip() == "still fine"


def test_memory_bomb_is_stopped(py):
    r = py("x = bytearray(4 * 1024**3)", limits=Limits(memory_mb=256))
    assert r.stopped_by == "memory" and "MemoryError" in r.stderr and r.peak_memory_mb < 256
    r = py("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024**2))", limits=Limits(memory_mb=300))
    assert r.stopped_by == "memory" and r.peak_memory_mb < 300


def test_infinite_loop_hits_wall_and_cpu_limits(py):
    r = py("while True: pass", limits=Limits(timeout_s=1))
    assert r.stopped_by == "timeout" and 0.9 < r.wall_s < 3 and r.cpu_s > 0.5
    r = py("while True: pass", limits=Limits(timeout_s=10, cpu_s=1))
    assert r.stopped_by == "cpu_time" and r.wall_s < 5


def test_huge_output_is_capped(py):
    r = py("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=Limits(max_output_bytes=100_000))
    assert r.stopped_by == "output_limit" and r.stdout_truncated and len(r.stdout) == 100_000


def test_file_size_limit(py):
    r = py("open('big', 'wb').write(b'0' * (8 << 20))", limits=Limits(max_file_mb=1))
    assert r.stopped_by == "file_size" and not r.ok


def test_signals_cannot_reach_the_host(py, sbx):
    me = os.getpid()
    code = ("import os, signal, sys\nfor pid in (int(sys.argv[1]), os.getppid(), 1):\n    try:\n"
            "        os.kill(pid, signal.SIGKILL); print(pid, 'SENT')\n    except OSError as e:\n"
            "        print(pid, 'DENIED', e.errno)\ntry:\n    os.killpg(int(sys.argv[1]), signal.SIGKILL)\n"
            "except OSError as e:\n    print('killpg DENIED')")
    sbx(["python", "-c", code, str(me)])
    assert os.getpid() == me  # this test process is alive to assert it
    assert py("print('ok')").ok


def test_no_background_processes_survive(sbx):
    marker = f"k2-bg-{os.getpid()}-{time.time_ns()}"
    code = ("import subprocess, sys, os\nsubprocess.Popen(['/usr/bin/python3', '-c', 'import time; time.sleep(600)', "
            "sys.argv[1]], start_new_session=True)\nif os.fork() == 0:\n    os.setsid()\n    import time; time.sleep(600)\n"
            "print('parent exits')")
    r = sbx(["python", "-c", code, marker])
    assert r.ok and "parent exits" in r.stdout
    time.sleep(0.2)
    leftovers = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker.encode() in (p / "cmdline").read_bytes():
                leftovers.append(p.name)
        except OSError:
            pass
    assert leftovers == [] and _uid_procs() == sbx.resident()


def test_environment_is_minimal(monkeypatch, py):
    monkeypatch.setenv("K2_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    r = py("import os; print(sorted(os.environ)); print(os.environ.get('K2_SECRET_TOKEN'))")
    assert "hunter2" not in r.stdout and "AWS_SECRET_ACCESS_KEY" not in r.stdout and "K2_SECRET_TOKEN" not in r.stdout


def test_work_dir_is_private_and_removed():
    base = Path(__import__("tempfile").gettempdir()) / "k2-sandbox"
    before = set(base.iterdir()) if base.exists() else set()
    r = run(["python", "main.py"], files={"main.py": "print(open('data/in.txt').read())", "data/in.txt": "42"})
    assert r.stdout.strip() == "42"
    assert set(base.iterdir()) == before
    with pytest.raises(sb.SandboxError, match="outside the work dir"):
        run(["python", "-c", "pass"], files={"../escape.txt": "x"})


def test_result_reports_times_memory_and_exit(py):
    r = py("import sys; x = bytearray(64 * 1024**2); x[::4096] = b'1' * len(x[::4096]); sys.exit(3)")
    assert r.exit_code == 3 and r.stopped_by is None and not r.ok
    assert 64 < r.peak_memory_mb < 120 and r.wall_s > 0 and r.cpu_s > 0
    r = py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert r.exit_code is None and r.signal == "SIGSEGV" and r.stopped_by == "signal"


@pytest.mark.parametrize("layer", ["unshare", "rlimits"])
def test_weaker_layers_still_enforce_limits(layer, caplog):
    r = _py("while True: pass", limits=Limits(timeout_s=1), layer=layer)
    assert r.isolation == layer and r.stopped_by == "timeout"
    r = _py("x = bytearray(4 * 1024**3)", limits=Limits(memory_mb=256), layer=layer)
    assert r.stopped_by == "memory"


def test_function_tests_runner():
    sol = "def solve(a, b):\n    if isinstance(a, int) and a < 0:\n        raise ValueError('negative')\n    return a + b if a != 2 else 0"
    res = run_function_tests(sol, "solve", [((1, 2), 3), ((2, 2), 4), ((-1, 0), -1), (([1], [2]), [1, 2])])
    assert [t.passed for t in res.tests] == [True, False, False, True] and res.passed == 2
    assert res.tests[1].detail == "got 0, expected 4" and "ValueError: negative" in res.tests[2].detail
    slow = run_function_tests("def f(x):\n    while True: pass", "f", [((1,), 1)], limits=Limits(timeout_s=1))
    assert slow.passed == 0 and "timeout" in slow.tests[0].detail


def test_stdio_tests_runner():
    prog = "a, b = map(int, input().split())\nprint(a + b)\nprint()  # trailing blank line is ignored"
    res = run_stdio_tests(prog, [("1 2\n", "3\n"), ("5 5\n", "11"), ("x y\n", "0")])
    assert [t.passed for t in res.tests] == [True, False, False]
    assert "ValueError" in res.tests[2].detail and res.tests[1].detail == "got '10\\n\\n'"


def test_slots_are_exclusive_across_processes(tmp_path):
    import subprocess
    import sys

    holder = ("import sys, time\nfrom k2core.sandbox import _Slots\n"
              f"s = _Slots(lock_dir={str(tmp_path)!r})\nprint(s.acquire(), flush=True)\ntime.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"
        stale = []
        mine = sb._Slots(n=4, lock_dir=tmp_path, on_stale=stale.append)
        assert mine.acquire() == 1 and mine.acquire() == 2      # 0 is the other process's
        mine.release(1)
        # round robin: the next free slot after the last one handed out, not the one just released
        assert mine.acquire() == 3 and stale == []
        mine.release(3)
    finally:
        proc.kill()
        proc.wait()
    assert mine.acquire() == 0                                   # a killed holder frees its slot
    assert stale == [0]                                          # ... and its leftovers are cleaned
    assert mine.acquire() == 1 and stale == [0]                  # 1 was released cleanly


@pytest.mark.skipif(os.geteuid() != 0, reason="slot uids are used only when k2 runs as root")
def test_two_processes_never_share_a_uid(tmp_path):
    """One process's cleanup kills every process of its slot uid: a shared uid would kill the
    other process's running program."""
    import json
    import subprocess
    import sys

    k2 = str(Path(sys.executable).parent / "k2")
    prog = "import os, time; print(os.getuid()); time.sleep(2); print('done')"
    other = subprocess.Popen([k2, "sandbox", "run", "--timeout", "30", "--", "python", "-c", prog],
                             stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _uid_procs() == 0 and other.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)                                         # its program is running
    mine = _py("import os; print(os.getuid())")
    res = json.loads(other.communicate(timeout=60)[0])
    assert res["exit_code"] == 0 and res["stdout"].split()[1] == "done", res
    assert int(mine.stdout) != int(res["stdout"].split()[0])


def test_cli_prints_json(tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / "prog.py").write_text("import sys; print('got', sys.stdin.read().strip())")
    (tmp_path / "in.txt").write_text("7")
    k2 = str(Path(sys.executable).parent / "k2")
    out = subprocess.run([k2, "sandbox", "run", "--timeout", "5", "--files", str(tmp_path), "--stdin",
                          str(tmp_path / "in.txt"), "--", "python", "prog.py"], capture_output=True, text=True)
    res = json.loads(out.stdout)
    assert res["stdout"] == "got 7\n" and res["isolation"] == LAYER and res["exit_code"] == 0


@pytest.mark.skipif(LAYER != "bubblewrap", reason="warm workers need the bubblewrap layer")
def test_warm_worker_runs_leave_nothing_for_the_next():
    leave = ("import os, subprocess, sys\nopen('/tmp/left.txt', 'w').write('secret')\nopen('../left.txt', 'w').write('x')\n"
             "subprocess.Popen(['/usr/bin/python3', '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
             "os.environ['LEFT'] = '1'\nimport json\nprint(os.getcwd())")
    look = ("import json, os\nothers = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getppid(), os.getpid())]\n"
            "print(json.dumps([os.listdir('/tmp'), os.listdir('..'), os.environ.get('LEFT'), others]))")
    with sb.WarmWorker() as w:
        base = len(sb.uid_processes(w.uid)) if w.uid is not None else None
        first = w.run(["python", "-S", "-c", leave])
        assert first.ok, first.stderr
        r = w.run(["python", "-S", "-c", look])
        assert r.ok, r.stderr
        tmp, siblings, env, others = json.loads(r.stdout)
        assert tmp == [] and env is None and others == []                # no file, variable or process left
        assert len(siblings) == 1 and siblings[0] != Path(first.stdout.strip()).name  # only its own work dir
        if base is not None:
            assert len(sb.uid_processes(w.uid)) == base  # the sleeper was killed, the worker stays
    assert _uid_procs() == 0


@pytest.mark.skipif(LAYER != "bubblewrap", reason="warm workers need the bubblewrap layer")
def test_a_program_that_kills_its_worker_fails_and_the_pool_goes_on():
    jobs = [{"argv": ["python", "-S", "-c", c]} for c in
            ("print(1)", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)", "print(3)")]
    with sb.SandboxPool(1) as pool:
        a, b, c = pool.map(jobs)
    assert a.stdout == "1\n" and c.stdout == "3\n" and a.ok and c.ok
    assert not b.ok and b.stopped_by == "signal" and "worker lost" in b.stderr


def test_pool_results_equal_one_shot_runs():
    progs = ["print('a')", "import sys; sys.exit(4)", "raise ValueError('bad')", "import sys; print(sys.argv[1:])",
             "print(input().upper())", "x = (", "import sys; sys.exit('message')"]
    jobs = [{"argv": ["python", "-S", "-c", p, "arg"], "stdin": "in\n", "limits": Limits(timeout_s=5)} for p in progs]
    with sb.SandboxPool(2) as pool:
        warm = pool.map(jobs)
    cold = [run(**j) for j in jobs]
    for w, c in zip(warm, cold):
        assert (w.exit_code, w.stdout, w.stopped_by) == (c.exit_code, c.stdout, c.stopped_by)
        assert w.stderr.strip().splitlines()[-1:] == c.stderr.strip().splitlines()[-1:]


@pytest.mark.skipif(LAYER != "bubblewrap" or not sb._is_root(), reason="slot uids (root) and bubblewrap")
def test_a_program_the_worker_cannot_fork_runs_one_shot(caplog):
    tight = Limits(max_procs=3)          # bwrap and the worker hold them all: its fork gets EAGAIN
    with sb.WarmWorker(tight) as w:
        r = w.run(["python", "-S", "-c", "print(1)"], limits=tight)
    cold = run(["python", "-S", "-c", "print(1)"], limits=tight)
    assert "running it one-shot" in caplog.text
    assert (r.exit_code, r.stdout, r.stderr.splitlines()[-1:]) == (cold.exit_code, cold.stdout, cold.stderr.splitlines()[-1:])
