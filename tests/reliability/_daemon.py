"""The real spikewatch daemon (`spikewatch serve`) as a subprocess on fixed ports: the shipped
`ServerProcess`, under the name the reliability tests use.

Its ports are chosen once, so the daemon can be killed (`kill()`: SIGKILL) and restarted on the
same endpoints and database while agents keep their connection target.
"""

from __future__ import annotations

from spikewatch.server.process import ServerProcess as Daemon

__all__ = ["Daemon"]
