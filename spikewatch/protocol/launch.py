"""How a `spikewatch serve` child process is launched, for the two sides that launch one: the
server's process helper (`server.process`: the demo, the benchmarks, the tests) and the agent's
local mode (`agent._local_server`), which may not import the server package.

The command line, the child's environment (no inherited SPIKEWATCH_* settings: the server's come
from its flags; the same spikewatch as the caller's), free ports on 127.0.0.1 and the tail of the
child's log. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

HOST: Final = "127.0.0.1"
SERVER_MODULE: Final = "spikewatch.server.cli"
_SOURCE: Final = str(Path(__file__).resolve().parents[2])  # the folder holding spikewatch/


def free_port(preferred: int | None = None) -> int:
    """`preferred` if it is free on 127.0.0.1, else a port that was free a moment ago."""
    if preferred is not None:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind((HOST, preferred))
            return preferred
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve_command(zmq: str, http_port: int, db: str | None = None,
                  args: Sequence[str] = ()) -> list[str]:
    """`python -m spikewatch.server.cli serve` on `zmq` and 127.0.0.1:`http_port` (`db` None:
    the server's default database), then `args`."""
    cmd = [sys.executable, "-m", SERVER_MODULE, "serve", "--zmq", zmq, "--http-host", HOST,
           "--http-port", str(http_port)]
    if db is not None:
        cmd += ["--db", db]
    return cmd + list(args)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without SPIKEWATCH_* settings, plus `extra`; the child imports the same
    spikewatch as this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIKEWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE, env.get("PYTHONPATH", "")) if p)
    return {**env, **(extra or {})}


def log_tail(log: Path, lines: int = 40) -> str:
    """The last `lines` lines of `log` ("(no log)" where it cannot be read)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
