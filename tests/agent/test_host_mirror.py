"""The predictor's values on the host without waiting for the device."""

from __future__ import annotations

import pytest
import torch

from spikewatch.agent._host_mirror import HostMirror


def test_cpu_values_are_read_at_once() -> None:
    m = HostMirror()
    assert m.latest is None
    assert m.update(torch.tensor([1.0, 2.0])) == [1.0, 2.0]
    assert m.latest == [1.0, 2.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_values_arrive_a_step_or_two_late_without_a_sync() -> None:
    m = HostMirror()
    assert m.update(torch.full((4,), 1.0, device="cuda")) is None  # copied, not yet read
    torch.cuda.synchronize()  # the copy has completed: the next call reads it without waiting
    assert m.update(torch.full((4,), 2.0, device="cuda")) == [1.0] * 4
