"""The messages between agent and server, as plain frozen dataclasses (encoded by `wire`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from spikewatch.protocol.names import Combine

Scalar: TypeAlias = float | int | str | bool | None


@dataclass(frozen=True, slots=True)
class Histogram:
    """Fixed-width bins over [lo, hi]; values outside go to the end bins, non-finite are counted."""

    lo: float
    hi: float
    counts: tuple[int, ...]
    nonfinite: int = 0


@dataclass(frozen=True, slots=True)
class Partial:
    """One rank's share of a sharded metric; the server combines ranks with `op`."""

    op: Combine
    num: float
    den: float = 1.0


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    """Everything measured at one training step."""

    step: int
    time: float
    scalars: Mapping[str, float] = field(default_factory=dict)
    layers: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    hists: Mapping[str, Mapping[str, Histogram]] = field(default_factory=dict)
    partials: Mapping[str, Partial] = field(default_factory=dict)
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Header:
    session: str
    seq: int
    run: str
    rank: int = 0
    world_size: int = 1
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Hello:
    """Run metadata: model size, optimizer and hyperparameters, world size, rank, resumed step."""

    header: Header
    meta: Mapping[str, Scalar]
    type: Literal["hello"] = "hello"


@dataclass(frozen=True, slots=True)
class Batch:
    header: Header
    records: tuple[Record, ...]
    type: Literal["batch"] = "batch"


@dataclass(frozen=True, slots=True)
class Ack:
    session: str
    seqs: tuple[int, ...]
    type: Literal["ack"] = "ack"


@dataclass(frozen=True, slots=True)
class Nack:
    session: str
    seq: int
    reason: str
    type: Literal["nack"] = "nack"


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert on the agent's run started or stopped firing on the server: sent with the acks of
    the commit whose observations decided it, to every session of the run in that commit."""

    session: str
    run: str
    rule: str
    severity: str  # "page" | "warning" | "info"
    state: str  # "firing" | "resolved"
    step: int
    value: float  # the value that decided it (may be non-finite)
    summary: str = ""
    type: Literal["alert"] = "alert"


Message: TypeAlias = Hello | Batch
Reply: TypeAlias = Ack | Nack | Alert
