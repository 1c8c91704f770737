"""The local Prefect server `k2 run` records its runs on when no server is configured.

Prefect's ephemeral API starts a server subprocess for every command (~7 s on 2 cores) and its runs
land in a database no UI of k2's shows. Instead `k2 run` starts `prefect server start` once —
the same server, database and UI as `k2 server` (under ``$K2_HOME/prefect``) — detached, and every
later run reuses it: its runs are in the UI at the printed address, and a run pays no server start.
``k2 server --stop`` stops it; ``K2_LOCAL_API=ephemeral`` brings back Prefect's per-command API.

The state file ``$K2_HOME/prefect/api.json`` names the server's address and process; `k2 server`
in the foreground writes it too, so `k2 run` uses that one while it is up.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flows.cli_server import k2_home, prefect_cmd, server_env
from k2core.errors import K2Error

DEFAULT_PORT = 4200


def home() -> Path:
    return k2_home() / "prefect"


def state_file() -> Path:
    return home() / "api.json"


@dataclass
class LocalAPI:
    url: str                       # the API, http://127.0.0.1:PORT/api
    pid: int
    log: Path | None               # None: a foreground `k2 server` (it logs to its terminal)
    started: bool = False          # started by this process (its start may still be under way)
    started_at: float = 0.0        # when the state file was written (time.time())

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def wait(self, timeout: float = 180.0) -> "LocalAPI":
        """Block until the server answers; a server that dies or never answers is named with its log."""
        deadline = time.monotonic() + timeout
        while not self.healthy(timeout=2.0):
            if not _alive(self.pid):
                raise K2Error(f"the local Prefect server (pid {self.pid}) exited while starting; its log "
                              f"{self.log} ends:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise K2Error(f"the local Prefect server at {self.ui} did not answer within {timeout:.0f} s; "
                              f"its log {self.log} ends:\n{_tail(self.log)}")
            time.sleep(0.1)
        return self


def write_state(url: str, pid: int, log: Path | None) -> None:
    home().mkdir(parents=True, exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": pid, "log": str(log) if log else None, "started_at": time.time()}))
    os.replace(tmp, state_file())


def _read_state() -> LocalAPI | None:
    try:
        s = json.loads(state_file().read_text())
        return LocalAPI(s["url"], int(s["pid"]), Path(s["log"]) if s.get("log") else None,
                        started_at=float(s.get("started_at", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find() -> LocalAPI | None:
    """The server the state file names, if its process lives and it answers."""
    api = _read_state()
    return api if api is not None and _alive(api.pid) and api.healthy() else None


def begin() -> LocalAPI:
    """The running local server, or one just started (detached; call `.wait()` before using it)."""
    home().mkdir(parents=True, exist_ok=True)
    with open(home() / "api.lock", "w") as lock:       # two `k2 run`s at once start one server
        fcntl.flock(lock, fcntl.LOCK_EX)
        api = find()
        if api is not None:
            return api
        starting = _starting()
        if starting is not None:
            return starting
        port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else _free_port()
        log = home() / "server.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([*prefect_cmd(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                    env=server_env("127.0.0.1", port, None), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)   # outlives this command
        url = f"http://127.0.0.1:{port}/api"
        write_state(url, proc.pid, log)
        return LocalAPI(url, proc.pid, log, started=True)


def stop() -> LocalAPI | None:
    """Stop the local server (its whole process group); None when none runs."""
    api = _read_state()
    if api is None:
        return None
    if not _alive(api.pid):
        state_file().unlink(missing_ok=True)
        return None
    def send(sig: int) -> None:          # a server k2 run started leads its own process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(api.pid, sig) if os.getpgid(api.pid) == api.pid else os.kill(api.pid, sig)

    send(signal.SIGTERM)
    for _ in range(100):
        if not _alive(api.pid):
            break
        time.sleep(0.1)
    else:
        send(signal.SIGKILL)
    state_file().unlink(missing_ok=True)
    return api


def _starting() -> LocalAPI | None:
    """A server another command started moments ago (process alive, not answering yet)."""
    api = _read_state()
    return api if api is not None and _alive(api.pid) and time.time() - api.started_at < 180 else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):          # a zombie (our own child that exited) is not alive
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path | None, n: int = 15) -> str:
    if path is None:
        return "(a foreground `k2 server`: see its terminal)"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
