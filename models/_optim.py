"""The default optimizer and moving its per-parameter state onto a replaced model (growth)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def adamw(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
          fused: bool) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (and embeddings) only, as nanoGPT: 1-D gains and biases not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused)


def _clone(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}


def transfer_state(old_opt: torch.optim.Optimizer, old_model: nn.Module, new_opt: torch.optim.Optimizer,
                   new_model: nn.Module, moments_from: Mapping[str, str], carry_moments: bool) -> dict[str, int]:
    """Give the new optimizer the per-parameter state (Adam's step, m, v) of the old one.

    A parameter the new model shares with the old one (the same tensor: a kept layer) keeps its state. A new
    parameter named in `moments_from` (new name -> old name: a copied layer) gets a copy of its source's state
    when carry_moments, else starts from zero moments like a fresh layer. Returns how many were kept/copied/fresh.
    """
    old_named = dict(old_model.named_parameters())
    by_id = {id(p): p for p in old_model.parameters()}
    unknown = sorted(set(moments_from.values()) - set(old_named))
    if unknown:
        raise ValueError(f"moments_from names parameters the old model does not have: {unknown[:5]}")
    counts = {"kept": 0, "copied": 0, "fresh": 0}
    for name, p in new_model.named_parameters():
        src = by_id.get(id(p))
        kind = "kept"
        if src is None and carry_moments and name in moments_from:
            src, kind = old_named[moments_from[name]], "copied"
        if src is None or src not in old_opt.state:
            counts["fresh"] += 1
            continue
        state = _clone(old_opt.state[src])
        for v in state.values():
            if torch.is_tensor(v) and v.ndim and v.shape != p.shape:
                raise ValueError(f"moments of {moments_from.get(name, name)!r} have shape {tuple(v.shape)}, "
                                 f"parameter {name!r} has {tuple(p.shape)}")
        new_opt.state[p] = state
        counts[kind] += 1
    return counts
