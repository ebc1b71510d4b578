"""Device-side accumulation of measurements and their bulk drain into wire records.

Probes hand over device tensors (0-d scalars, histogram count vectors) without reading them; the
collector copies each into a buffer of its own on the same device (an asynchronous device copy,
no read). `drain()` copies what is pending on each device to the host with one `.cpu()` per
device: the only host-device synchronisation the agent performs, on a cadence, never per
parameter or per probe.

CPU tensors are read at once: their values already sit in host memory, so reading them waits for
nothing, and one read is the cheapest thing to do with them (a step's first tensor operation
runs with cold caches; in situ on the CPU benchmark model `.item()` on the loss took 7 µs, the
copy into a buffer 65 µs). A 0-d device value is copied through a view made once per buffer slot,
one operation instead of four.

Why copy rather than keep references: holding the training step's own small tensors (the loss
above all) until the drain pins small blocks between the step's large temporaries in the host
heap. On the CPU benchmark model that fragmentation cost about 1% of step time and 100 MiB of RSS
(benchmarks/agent_overhead.py with every probe off, agent_memory.py); the buffers are allocated
once and reused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from spikewatch.protocol import wire
from spikewatch.protocol.names import Combine

Value = torch.Tensor | float | int
# (device, start, length) into a pending device buffer; or already on the host
_Ref = tuple[torch.device, int, int] | float | list[float]


class _Step:
    """One step's pending values (refs into device buffers or host numbers) and events."""

    __slots__ = ("events", "hists", "layers", "partials", "scalars", "time")

    def __init__(self, t: float) -> None:  # plain literals: made once per step on the hot path
        self.time = t
        self.scalars: dict[str, _Ref] = {}
        self.layers: dict[str, dict[str, _Ref]] = {}
        self.hists: dict[str, dict[str, tuple[float, float, _Ref, _Ref]]] = {}
        self.partials: dict[str, tuple[Combine, _Ref, _Ref]] = {}
        self.events: list[wire.Event] = []


_CHUNK = 4096  # values per buffer chunk
_KEEP_CHUNKS = 4  # chunks per device kept for reuse after a drain
_SLOTS = 256  # leading positions of each chunk with a ready-made 0-d view


class _DeviceBuffer:
    """Reused storage for one device's pending values, filled chunk by chunk."""

    __slots__ = ("chunks", "cur", "dtype", "fills", "slots", "used")

    def __init__(self, device: torch.device) -> None:
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.chunks: list[torch.Tensor] = []
        self.slots: list[Sequence[torch.Tensor]] = []  # 0-d views of each chunk's first values
        self.fills: list[int] = []
        self.cur = 0  # the chunk being filled; those before it are final
        self.used = 0  # values written since the last drain (= start of the next one)

    def put(self, t: torch.Tensor) -> int:
        """Copy `t` (any shape, any real dtype) in; returns its start index."""
        n = t.numel()
        k = self.cur
        if k < len(self.chunks) and self.fills[k] + n > self.chunks[k].numel():
            k += 1
        if k == len(self.chunks) or self.chunks[k].numel() < n:
            chunk = torch.empty(max(_CHUNK, n), dtype=self.dtype, device=t.device)
            self.chunks.insert(k, chunk)
            self.slots.insert(k, chunk.narrow(0, 0, _SLOTS).unbind(0))
            self.fills.insert(k, 0)
        f = self.fills[k]
        with torch.no_grad():
            if t.dim() == 0 and f < _SLOTS:
                self.slots[k][f].copy_(t)
            else:
                self.chunks[k].narrow(0, f, n).copy_(t.reshape(-1))
        self.fills[k], self.cur = f + n, k
        start, self.used = self.used, self.used + n
        return start

    def to_host(self) -> list[float]:
        """Everything pending, in write order, as Python floats; then empty (chunks kept)."""
        parts = [c.narrow(0, 0, f) for c, f in zip(self.chunks, self.fills, strict=True) if f]
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]
        host: list[float] = flat.cpu().tolist()
        del self.chunks[_KEEP_CHUNKS:], self.slots[_KEEP_CHUNKS:], self.fills[_KEEP_CHUNKS:]
        self.fills = [0] * len(self.chunks)
        self.cur = self.used = 0
        return host


class Collector:
    """Pending measurements of not yet drained steps (single-threaded; owned by one monitor)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_values: int = 1 << 20,
                 max_steps: int = 4096, read_cpu: bool = True):
        self._clock = clock
        self.max_values = max_values
        self.max_steps = max_steps
        self._read_cpu = read_cpu  # False: CPU values take the device path too (tests)
        self._steps: dict[int, _Step] = {}
        self._bufs: dict[torch.device, _DeviceBuffer] = {}
        self._pending = 0  # device values written since the last drain, over all devices

    def __len__(self) -> int:
        """Number of pending device values (drain when it grows past `max_values`)."""
        return self._pending

    @property
    def full(self) -> bool:
        """Time to drain early: too many pending device values or pending steps."""
        return len(self._steps) >= self.max_steps or self._pending >= self.max_values

    def _step(self, step: int) -> _Step:
        s = self._steps.get(step)
        if s is None:
            s = self._steps[step] = _Step(self._clock())
        return s

    def _ref(self, v: Value) -> _Ref:
        if not isinstance(v, torch.Tensor):
            return float(v)
        if self._read_cpu and v.is_cpu:
            if v.dim() == 0:
                return float(v.item())
            return [float(x) for x in v.reshape(-1).tolist()]
        return self._vec(v)

    def _vec(self, v: torch.Tensor) -> tuple[torch.device, int, int]:
        dev = v.device
        buf = self._bufs.get(dev)
        if buf is None:
            buf = self._bufs[dev] = _DeviceBuffer(dev)
        n = v.numel()
        self._pending += n
        return (dev, buf.put(v), n)

    # --- recording (no host sync) -----------------------------------------------------------
    def scalar(self, step: int, name: str, value: Value) -> None:
        self._step(step).scalars[name] = self._ref(value)

    def scalar_vector(self, step: int, names: Sequence[str], values: torch.Tensor) -> None:
        """Several scalars given as one vector (element i is `names[i]`): one read or copy."""
        if values.numel() != len(names):
            raise ValueError(f"{len(names)} names for {values.numel()} values")
        ref = self._ref(values)
        per = self._step(step).scalars
        for i, name in enumerate(names):
            per[name] = _item(ref, i)

    def partial_vector(self, step: int, names: Sequence[str], ops: Sequence[Combine],
                       num: torch.Tensor, den: torch.Tensor) -> None:
        """Several partial sums given as vectors of numerators and denominators."""
        if not num.numel() == den.numel() == len(names) == len(ops):
            raise ValueError(f"{len(names)} names for {num.numel()}/{den.numel()} values")
        nref, dref = self._ref(num), self._ref(den)
        per = self._step(step).partials
        for i, (name, op) in enumerate(zip(names, ops, strict=True)):
            per[name] = (op, _item(nref, i), _item(dref, i))

    def host_scalars(self, step: int, values: dict[str, float]) -> None:
        """Several host numbers at once."""
        self._step(step).scalars.update(values)

    def layer(self, step: int, name: str, layer: str, value: Value) -> None:
        self._step(step).layers.setdefault(name, {})[layer] = self._ref(value)

    def layer_vector(self, step: int, name: str, layers: Sequence[str], values: torch.Tensor
                     ) -> None:
        """Per-layer values given as one vector (element i belongs to `layers[i]`)."""
        if values.numel() != len(layers):
            raise ValueError(f"{name}: {values.numel()} values for {len(layers)} layers")
        ref = self._ref(values)
        per = self._step(step).layers.setdefault(name, {})
        for i, lay in enumerate(layers):
            per[lay] = _item(ref, i)

    def hist(self, step: int, name: str, layer: str, counts: torch.Tensor, lo: float, hi: float,
             nonfinite: Value = 0) -> None:
        self._step(step).hists.setdefault(name, {})[layer] = (
            lo, hi, self._ref(counts), self._ref(nonfinite))

    def partial(self, step: int, name: str, op: Combine, num: Value, den: Value = 1.0) -> None:
        self._step(step).partials[name] = (op, self._ref(num), self._ref(den))

    def event(self, step: int, event: wire.Event) -> None:
        self._step(step).events.append(event)

    # --- drain ------------------------------------------------------------------------------
    def drain(self, upto: int | None = None) -> list[wire.Record]:
        """Copy every pending value to the host (one transfer per device); build the records of
        steps ≤ `upto` (all when None). Later steps stay pending, already on the host."""
        host = {dev: buf.to_host() for dev, buf in self._bufs.items() if buf.used}
        self._pending = 0

        def res(r: _Ref) -> _Ref:
            if isinstance(r, tuple):
                dev, start, n = r
                return host[dev][start] if n == 1 else host[dev][start:start + n]
            return r

        def one(r: _Ref) -> float:
            r = res(r)
            return r if isinstance(r, float) else math.fsum(r)  # type: ignore[arg-type]

        def many(r: _Ref) -> list[float]:
            r = res(r)
            return [r] if isinstance(r, float) else r  # type: ignore[return-value]

        records = []
        for step in sorted(self._steps):
            s = self._steps[step]
            if upto is not None and step > upto:
                s.scalars = {k: res(r) for k, r in s.scalars.items()}
                s.layers = {k: {lay: res(r) for lay, r in per.items()}
                            for k, per in s.layers.items()}
                s.hists = {k: {lay: (lo, hi, res(c), res(n)) for lay, (lo, hi, c, n) in per.items()}
                           for k, per in s.hists.items()}
                s.partials = {k: (op, res(n), res(d)) for k, (op, n, d) in s.partials.items()}
                continue
            del self._steps[step]
            hists = {
                name: {lay: wire.Histogram(lo, hi, tuple(_count(c) for c in many(cr)),
                                           _count(one(nr)))
                       for lay, (lo, hi, cr, nr) in per.items()}
                for name, per in s.hists.items()
            }
            records.append(wire.Record(
                step=step, time=s.time,
                scalars={k: one(r) for k, r in s.scalars.items()},
                layers={k: {lay: one(r) for lay, r in per.items()} for k, per in s.layers.items()},
                hists=hists,
                partials={k: wire.Partial(op, one(n), one(d))
                          for k, (op, n, d) in s.partials.items()},
                events=tuple(s.events),
            ))
        return records


def _item(ref: _Ref, i: int) -> _Ref:
    """Element i of a vector reference."""
    if isinstance(ref, tuple):
        return (ref[0], ref[1] + i, 1)
    return ref[i] if isinstance(ref, list) else ref


def _count(x: float) -> int:
    return int(x) if math.isfinite(x) and x >= 0 else 0
