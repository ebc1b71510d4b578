"""attach() on a torch.compile'd model: the same signals under the same names as eager, whole
graphs (no graph break, no recompile after the first due and ordinary steps), and no agent code in
the graph of an ordinary step.

Dynamo inlines a compiled module's forward hooks, so a naive agent would be traced into the
user's graphs (graph breaks, a recompile per hooked layer) or, when its hooks come after the first
compiled forward, be ignored without a word. The backend here records every graph Dynamo hands
over and which source files its operations came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import fx, nn
from torch._dynamo.utils import counters

from spikewatch import agent
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType
from tests.agent._loop import train_on
from tests.agent._peer import Peer

ROOT = str(Path(agent.__file__).resolve().parents[1]) + "/"

SIGNALS = (nm.LOSS, nm.SA_MEAN, nm.SA_SIGN_DIVERSITY, nm.SA_HIST, nm.MAX_PROB, nm.ENTROPY,
           nm.STABILITY_RATIO_TWO_SECANT, nm.GRAD_NORM)


class RecordingBackend:
    """A Dynamo backend that runs graphs as traced (no code generation) and keeps, per graph, the
    source files its operations came from."""

    def __init__(self) -> None:
        self.files: list[set[str]] = []

    @property
    def graphs(self) -> int:
        return len(self.files)

    def __call__(self, gm: fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        traces = [str(n.meta.get("stack_trace") or "") for n in gm.graph.nodes]
        self.files.append({f for t in traces for f in re.findall(r'File "([^"]+)"', t)})
        return gm.forward


def _ours(files: set[str]) -> set[str]:
    """The spikewatch files among `files`, relative to the project root (spikewatch/agent is a
    link to agent/)."""
    real = {str(Path(f).resolve()) for f in files}
    return {f[len(ROOT):] for f in real
            if f.startswith(ROOT) and f[len(ROOT):].split("/")[0] in ("agent", "monitor")}


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _run(backend: RecordingBackend | None, profile: str = "full", steps: int = 30,
         warm_up: bool = False, attach_plain: bool = False
         ) -> tuple[dict[str, dict[int, Any]], list[int], list[wire.Event]]:
    """Train a small MLP for `steps` steps, compiled with `backend` unless None. `warm_up`: one
    compiled forward before attach(); `attach_plain`: attach() is given the plain module. Returns
    the signals received per step, the number of graphs compiled after each step, the events."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(),
                          nn.Linear(24, 3))
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    net = model if backend is None else cast(nn.Module, torch.compile(model, backend=backend))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    if warm_up:
        net(x)
    graphs = []
    with Peer() as peer:
        monitor = agent.attach(model if attach_plain else net, opt, run="compiled",
                               endpoint=peer.endpoint, profile=profile,
                               overhead_budget=math.inf, logits_module=model[4])
        train_on(monitor, opt, lambda: nn.functional.cross_entropy(net(x), y), steps,
                 before=lambda i: graphs.append(0 if backend is None else backend.graphs))
        graphs = [*graphs[1:], 0 if backend is None else backend.graphs]  # after each step
        monitor.close(timeout=5.0)
        assert dict(counters["graph_break"]) == {}  # whole graphs only
        assert peer.wait_for(lambda: monitor.counters().acked == monitor.counters().submitted, 10)
        assert peer.invalid == []
        records = [r for m in peer.first_seen() if isinstance(m, wire.Batch) for r in m.records]
    got: dict[str, dict[int, Any]] = {}  # "scalars:loss" -> step -> value
    for r in records:
        for part, values in (("scalars", r.scalars), ("layers", r.layers), ("hists", r.hists)):
            for signal in SIGNALS:
                if signal in values:
                    got.setdefault(f"{part}:{signal}", {})[r.step] = values[signal]
    return got, graphs, [e for r in records for e in r.events]


def test_compiled_model_streams_the_same_signals_and_layer_names_as_eager() -> None:
    eager, _, eager_events = _run(None)
    compiled, _, events = _run(RecordingBackend())
    assert eager_events == events == []  # no probe failed
    assert {key.split(":")[1] for key in eager} == set(SIGNALS)
    assert compiled.keys() == eager.keys()
    for key, by_step in eager.items():
        assert compiled[key].keys() == by_step.keys(), key
        for step, value in by_step.items():
            if key.startswith("scalars:"):
                assert compiled[key][step] == pytest.approx(value, rel=1e-5, nan_ok=True), key
            elif key.startswith("layers:"):
                # per-layer values under the model's own layer names, not torch.compile's
                assert compiled[key][step] == pytest.approx(value, rel=1e-5, nan_ok=True), key
            else:
                assert {k: h.counts for k, h in compiled[key][step].items()} == {
                    k: h.counts for k, h in value.items()}, key
    # the same operations run (no code generation): the loss is bit-identical
    assert compiled["scalars:" + nm.LOSS] == eager["scalars:" + nm.LOSS]


def test_compiled_forward_has_no_graph_break_and_ordinary_steps_carry_no_agent_code() -> None:
    backend = RecordingBackend()
    # default profile: hooks armed at steps 0, 10, 20, 30 only (logits; alignment at 0)
    got, graphs, events = _run(backend, profile="default", steps=40)
    assert events == []
    assert sorted(got["scalars:" + nm.MAX_PROB]) == [0, 10, 20, 30]
    assert sorted(got["layers:" + nm.SA_MEAN]) == [0]
    # two whole graphs, made at steps 0 and 1 and reused after: armed and ordinary steps
    assert graphs[0] == 1
    assert graphs[1] == graphs[-1] == 2
    armed, ordinary = backend.files
    assert _ours(ordinary) == set()
    # the armed graph holds the captures only (cosines against v₁, reduced over-confidence);
    # v₁'s power iteration, the summaries and the collector run eagerly
    assert _ours(armed) == {"agent/_forward_probes.py", "monitor/spectral_alignment.py",
                            "monitor/overconfidence.py"}


def test_model_compiled_before_attach_is_reported_not_silently_missing() -> None:
    got, _, events = _run(RecordingBackend(), profile="full", steps=12, warm_up=True)
    errors = {e.data["probe"]: e.data for e in events if e.type == EventType.PROBE_ERROR}
    assert set(errors) == {"alignment", "logits"}
    for data in errors.values():
        assert data["error"] == "HooksNotCalledError"
        assert data["disabled"] is True
        assert "torch.compile" in str(data["message"])
    assert "layers:" + nm.SA_MEAN not in got
    assert sorted(got["scalars:" + nm.LOSS]) == list(range(12))  # the rest keeps running


def test_compiling_a_module_attach_was_given_plain_recovers_after_one_due_step() -> None:
    got, graphs, events = _run(RecordingBackend(), profile="full", steps=12, attach_plain=True)
    assert events == []
    # over-confidence needs nothing prepared; alignment's v₁ is prepared once a compiled
    # forward was seen, so its first due step (0) is lost and the next (5) is measured
    assert sorted(got["scalars:" + nm.MAX_PROB]) == list(range(12))
    assert sorted(got["layers:" + nm.SA_MEAN]) == [5, 10]
    # whole graphs, one per set of hooks in place; settled once each set was seen
    assert graphs[5] == graphs[-1] == 3


def test_a_compiled_training_step_calls_the_agent_without_tracing_it(peer: Peer) -> None:
    """The user compiles the whole step: forward, backward, optimizer step and log()."""
    backend = RecordingBackend()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3))
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    monitor = agent.attach(model, opt, run="compiled-step", endpoint=peer.endpoint,
                           profile="full", overhead_budget=math.inf, logits_module=model[2])

    @torch.compile(backend=backend)
    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)

    for _ in range(6):
        step()
    monitor.close(timeout=5.0)
    assert peer.wait_for(lambda: monitor.counters().acked == monitor.counters().submitted, 10)
    records = [r for m in peer.first_seen() if isinstance(m, wire.Batch) for r in m.records]
    assert [e for r in records for e in r.events] == []
    for signal in (nm.LOSS, nm.GRAD_NORM, nm.RHO, nm.MAX_PROB):
        assert sorted(r.step for r in records if signal in r.scalars) == list(range(6)), signal
    # the agent ran eagerly at graph breaks; the graphs hold the model, the loss and the captures
    assert set().union(*map(_ours, backend.files)) <= {
        "agent/_forward_probes.py", "monitor/spectral_alignment.py", "monitor/overconfidence.py"}
