"""The drain labels records with the run's last instability: how far it moved the loss
(`instability_rise`) and where the loss stands against the floor it rose from
(`instability_recovery`, the page's last gate), from the drained loss and stability ratio."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from spikewatch.agent._drain import Reactive
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire


def _records(rows: Sequence[tuple[float | None, float]], start: int = 0) -> list[wire.Record]:
    out = []
    for i, (loss, ratio) in enumerate(rows):
        scalars = {nm.STABILITY_RATIO_TWO_SECANT: ratio}
        if loss is not None:
            scalars[nm.LOSS] = loss
        out.append(wire.Record(step=start + i, time=float(start + i), scalars=scalars))
    return out


def test_records_carry_the_recovery_once_an_instability_has_moved_the_loss() -> None:
    reactive = Reactive()
    flat = reactive.observe(_records([(1.0, 0.5)] * 60), beta2=0.999)
    assert all(nm.INSTABILITY_RECOVERY not in r.scalars for r in flat)  # no instability yet
    spike = [(1.0, 1.01)] * 3 + [(2.5, 0.9)] * 5 + [(1.0, 0.9)] * 100  # a 2.5× spike at 62
    out = reactive.observe(_records(spike, start=60), beta2=0.999)
    assert out[-1].scalars[nm.INSTABILITY_RISE] == pytest.approx(2.5)
    assert out[-1].scalars[nm.INSTABILITY_RECOVERY] == pytest.approx(1.0)  # back on the floor
    lower = reactive.observe(_records([(0.9, 0.9), (None, 0.9)], start=168), beta2=0.999)
    assert lower[0].scalars[nm.INSTABILITY_RECOVERY] == pytest.approx(0.9)  # past it
    assert nm.INSTABILITY_RECOVERY not in lower[1].scalars  # no loss logged at this step
