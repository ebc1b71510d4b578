"""Which modules the agent hooks: torch.compile's wrapper seen through, and the Linear layers
whose inputs the spectral-alignment probe watches (chosen, or spread over the model)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from spikewatch.agent._probe_base import MAX_SA_LAYERS, layer_name

__all__ = ["is_compiled", "select_layers", "uncompiled"]


def is_compiled(model: nn.Module) -> bool:
    """Whether torch.compile wraps the model or any of its modules (wrapper or in place)."""
    return any(isinstance(getattr(m, "_orig_mod", None), nn.Module)
               or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def uncompiled(model: nn.Module) -> nn.Module:
    """The module inside torch.compile's wrapper: layers and parameters keep the model's own
    names (not `_orig_mod.…`), and hooks go on the modules the compiled code calls."""
    while isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
        model = inner
    return model


def select_layers(model: nn.Module, layers: Iterable[str | nn.Module] | None
                   ) -> list[tuple[str, nn.Module]]:
    by_name = {layer_name(n): m for n, m in model.named_modules()}
    # nn.MultiheadAttention multiplies by out_proj.weight itself: out_proj's forward never runs,
    # so a hook there would never see an input
    never_called = {id(m.out_proj) for m in model.modules()
                    if isinstance(m, nn.MultiheadAttention)}
    if layers is None:
        lin: list[tuple[str, nn.Module]] = [(n, m) for n, m in by_name.items()
                                            if isinstance(m, nn.Linear)
                                            and id(m) not in never_called]
        if len(lin) <= MAX_SA_LAYERS:
            return lin
        return [lin[i * (len(lin) - 1) // (MAX_SA_LAYERS - 1)] for i in range(MAX_SA_LAYERS)]
    ids = {id(m): n for n, m in by_name.items()}
    out = []
    for item in layers:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"layers: the model has no module named {item!r}")
            out.append((item, by_name[item]))
        elif isinstance(item, nn.Module):
            if id(item) not in ids:
                raise ValueError(f"layers: {type(item).__name__} is not a module of the model")
            out.append((ids[id(item)], item))
        else:
            raise TypeError(f"layers: expected module names or modules, got {type(item).__name__}")
        if id(out[-1][1]) in never_called:
            raise ValueError(f"layers: {out[-1][0]!r} is the out_proj of an nn.MultiheadAttention, "
                             "which uses its weight directly and never calls its forward: its "
                             "inputs cannot be observed")
    return out
