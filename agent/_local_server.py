"""`endpoint="local"`: one `spikewatch serve` beside the job, started once and shared.

The folder (``./spikewatch-local``, or ``$SPIKEWATCH_LOCAL_DIR``) holds the SQLite database
``spikewatch.db``, the server's log ``server.log``, ``server.json`` (its pid, endpoints and
database) and ``server.pid`` (the pid alone: ``kill $(cat spikewatch-local/server.pid)`` stops it
gracefully). Under the folder's lock a job reuses the server ``server.json`` names while that
process is alive and a `spikewatch serve`; otherwise (no file, or a stale one) it starts a new one
on free 127.0.0.1 ports, detached (its own session, stdin /dev/null, output to the log), so it
outlives the job and the run page stays up. Either way it waits, bounded, until ``/readyz``
answers; a server slow to come up is used anyway (the agent resends until it is there).

The agent may not import the server package: the server runs as ``python -m
spikewatch.server.cli serve`` and the ``[server]`` extra is detected with `find_spec` alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from spikewatch.protocol.launch import (
    HOST,
    SERVER_MODULE,
    child_env,
    free_port,
    log_tail,
    serve_command,
)

__all__ = ["LocalServer", "LocalServerError", "ServerExtraMissingError", "local_endpoint"]

log = logging.getLogger("spikewatch.agent")

LOCAL: Final = "local"  # the `endpoint` value that selects this mode
DEFAULT_DIR: Final = Path("spikewatch-local")
# the [server] extra's import names (pyproject.toml); find_spec imports none of them
SERVER_EXTRA: Final = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "yaml", "httpx")
READY_TIMEOUT: Final = 60.0  # seconds for /readyz: imports and SQLite migrations on a busy host
LOCK_TIMEOUT: Final = 3 * READY_TIMEOUT  # another job may be starting it
START_ATTEMPTS: Final = 2  # a port picked free may be taken before the server binds it
POLL_S: Final = 0.1
_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LocalServerError(RuntimeError):
    """The local server could not be started or reached; the message ends with its log's tail."""


class ServerExtraMissingError(ImportError):
    """`endpoint="local"` without the `[server]` extra installed."""


@dataclass(frozen=True, slots=True)
class LocalServer:
    """A running local `spikewatch serve`, as `server.json` records it."""

    pid: int
    zmq: str  # where the agent connects
    http: str  # the API and the run pages
    db: str  # its database URL
    log: str  # its log file

    def run_page(self, run: str) -> str:
        return f"{self.http}/runs/{run}"


@dataclass(frozen=True, slots=True)
class _Files:
    """The files of one local-server folder."""

    state: Path  # server.json: the `LocalServer`
    pid: Path  # its pid alone, for `kill $(cat ...)`
    lock: Path
    log: Path
    db: Path

    @classmethod
    def of(cls, folder: Path) -> _Files:
        return cls(folder / "server.json", folder / "server.pid", folder / "server.lock",
                   folder / "server.log", folder / "spikewatch.db")


def local_endpoint(folder: Path, run: str, ready_timeout: float = READY_TIMEOUT) -> str:
    """The ZeroMQ endpoint of the folder's local server, started if none runs; says (log and one
    stderr line) where the run's page is."""
    check_server_extra()
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = _Files.of(folder)
    with _locked(files.lock):
        server, started = _reuse_or_start(files, ready_timeout)
    how = "started" if started else "reusing"
    stop = f"kill $(cat {files.pid})"
    log.info("%s local spikewatch server pid %d (%s, log %s); run page %s; stop it with: %s",
             how, server.pid, server.db, server.log, server.run_page(run), stop)
    print(f"spikewatch: run page {server.run_page(run)} (local server pid {server.pid}, "
          f"{how}; stop it with: {stop})", file=sys.stderr, flush=True)
    return server.zmq


def check_server_extra() -> None:
    """ServerExtraMissingError unless every import name of the `[server]` extra is installed."""
    missing = [name for name in SERVER_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ServerExtraMissingError(
            f"endpoint='local' runs a spikewatch server beside the job, which needs the server's "
            f"packages ({', '.join(missing)} missing): pip install 'spikewatch[server]'")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (one job at a time starts or checks the server)."""
    import fcntl  # POSIX, like the detached start: imported only in local mode

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the server
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LocalServerError(f"{path} stayed locked for {LOCK_TIMEOUT:.0f} s "
                                           "(another job starting the local server?)") from None
                time.sleep(POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def _reuse_or_start(files: _Files, ready_timeout: float) -> tuple[LocalServer, bool]:
    """(the server, whether it was started now)."""
    known = _read_state(files)
    if known is not None and _is_server(known.pid):
        _wait_ready(known, files, ready_timeout)
        return known, False
    if known is not None:
        log.warning("spikewatch: stale %s (pid %d is not a running spikewatch server): starting "
                    "a new local server", files.state, known.pid)
    for path in (files.state, files.pid):
        path.unlink(missing_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        server = _spawn(files)
        try:
            _wait_ready(server, files, ready_timeout)
        except LocalServerError:
            if attempt == START_ATTEMPTS:
                raise
            continue
        _write_state(files, server)
        return server, True
    raise AssertionError("unreachable")  # pragma: no cover


def _read_state(files: _Files) -> LocalServer | None:
    """The server `server.json` records; None where there is none or it cannot be read."""
    try:
        return LocalServer(**json.loads(files.state.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        log.warning("spikewatch: ignoring unreadable %s (%s)", files.state, e)
        return None


def _write_state(files: _Files, server: LocalServer) -> None:
    """`server.json` and `server.pid`, each replaced in one rename."""
    for path, text in ((files.state, json.dumps(asdict(server), indent=1) + "\n"),
                       (files.pid, f"{server.pid}\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _is_server(pid: int) -> bool:
    """Whether `pid` runs, is not a zombie of ours, and (where /proc tells) is `spikewatch
    serve`, not another program that got the pid after the server ended."""
    with contextlib.suppress(ChildProcessError):  # not our child: nothing to reap
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # ours, exited: now reaped
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{pid}")
    try:
        if proc.joinpath("stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False  # someone else's exited child
        cmdline = proc.joinpath("cmdline").read_bytes()
    except (OSError, IndexError):
        return True  # no /proc: /readyz decides
    return not cmdline or SERVER_MODULE.encode() in cmdline  # empty while it execs


def _spawn(files: _Files) -> LocalServer:
    """Start `spikewatch serve` detached on free ports, appending its output to the log."""
    zmq = f"tcp://{HOST}:{free_port()}"
    http_port = free_port()
    db = f"sqlite:///{files.db}"
    argv = serve_command(zmq, http_port, db)
    with files.log.open("a") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} started by pid {os.getpid()}: "
                  f"{' '.join(argv[1:])}\n")
    pid = os.posix_spawn(sys.executable, argv, child_env(), setsid=True, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(files.log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2)])
    return LocalServer(pid=pid, zmq=zmq, http=f"http://{HOST}:{http_port}", db=db,
                       log=str(files.log))


def _ready(http: str) -> bool:
    try:
        with _NO_PROXY.open(f"{http}/readyz", timeout=1.0) as r:
            return int(r.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_ready(server: LocalServer, files: _Files, timeout: float) -> None:
    """Until /readyz answers; LocalServerError if the process ends first. Past `timeout` a live
    server is used anyway (warned): the agent spools and resends until it answers."""
    deadline = time.monotonic() + timeout
    while not _ready(server.http):
        if not _is_server(server.pid):
            raise LocalServerError(f"the local spikewatch server (pid {server.pid}) exited; "
                                   f"last lines of {files.log}:\n{log_tail(files.log, 30)}")
        if time.monotonic() > deadline:
            log.warning("spikewatch: the local server (pid %d) is not ready after %.0f s; the "
                        "agent sends once it is (log %s)", server.pid, timeout, files.log)
            return
        time.sleep(POLL_S)
