"""Growing a GPT in depth: gradual stacking, MIDAS and the other candidates, and the PROP-α stage schedule.

Layers f_1..f_n bottom to top; a growth adds `block_size` = b layers. A *copy* strategy duplicates a contiguous
block B = f_{s+1}..f_{s+b} and inserts the copy right after B:

    top     (gradual stacking; Gong et al. 2019, Reddi et al. 2023):  s = n − b  (the copy goes on top)
    middle  (MIDAS, Saunshi et al. NeurIPS 2024):                     s = ⌊(n − b)/2⌋, the block centred on the
            depth midpoint — f_1..f_{s+b}, copy(B), f_{s+b+1}..f_n
    bottom:                                                           s = 0
    copy:S  any block start S (0-based), e.g. the other centring ⌈(n − b)/2⌉ for odd n − b
    interleave: b source layers evenly spaced over depth, each followed by its own copy (b = n doubles the model
            as f_1 f_1' f_2 f_2' ... f_n f_n')
    random:   b freshly initialised blocks on top (GPT-2 init for the grown depth)
    identity: b fresh blocks on top whose residual output projections are zero, so each computes x ↦ x and the
            grown model computes the same function as the old one (a function-preserving candidate for LAG)

The middle-block index for odd n − b and the "copy goes right after its source" rule are our reading of the
paper (the notes mark them recalled, not verified); `copy:S` is the switch to another reading. Token and
position embeddings, the final norm and the (tied) head are kept.

Kept modules are *shared* with the model that was grown (the same tensors: an optimizer's state for them carries
over unchanged); copied and fresh blocks are new tensors. `GrowthPlan.moments_from()` names each copied
parameter's source, which `Trainer.replace_model(..., moments_from=...)` uses to copy (or, with
carry_moments=False, reset) its Adam moments.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from models.lm.model import GPT
from models.nn import residual_projections

__all__ = ["STRATEGIES", "GrowthPlan", "plan_growth", "grow", "check_strategy"]

STRATEGIES = ("top", "middle", "bottom", "interleave", "random", "identity")  # plus "copy:S"
_COPYING = ("top", "middle", "bottom", "interleave")


@dataclass(frozen=True)
class GrowthPlan:
    """Where each layer of the grown model comes from.

    sources[i]: the old layer (0-based) that new layer i is, or is a copy of; None for a freshly initialised one.
    copied[i]: True when new layer i is a new tensor (a copy or fresh), False when it is the old layer kept."""

    strategy: str
    n_layer: int
    block_size: int
    sources: tuple[int | None, ...]
    copied: tuple[bool, ...]

    @property
    def new_layer(self) -> int:
        """Depth after the growth: n_layer + block_size."""
        return len(self.sources)

    def moments_from(self, model: GPT) -> dict[str, str]:
        """{new parameter name: old parameter name} of every copied layer's parameters (not fresh layers', not
        kept ones': those are the same tensors), for `Trainer.replace_model(..., moments_from=...)`."""
        out: dict[str, str] = {}
        block = model.blocks[0]
        for i, (src, new) in enumerate(zip(self.sources, self.copied)):
            if new and src is not None:
                out.update({f"blocks.{i}.{name}": f"blocks.{src}.{name}" for name, _ in block.named_parameters()})
        return out

    def apply(self, model: GPT, seed: int = 0) -> GPT:
        """The grown GPT (a new object; `model` itself is left as it was). seed: the init of fresh blocks."""
        if not isinstance(model, GPT):
            raise ValueError(f"grow needs a models.lm.GPT, got {type(model).__name__}")
        if len(model.blocks) != self.n_layer:
            raise ValueError(f"this plan grows a {self.n_layer}-layer model; the model has {len(model.blocks)}")
        ref = next(model.parameters())
        blocks: list[nn.Module] = []
        n_fresh = 0
        for src, new in zip(self.sources, self.copied):
            if not new:
                blocks.append(model.blocks[src])
            elif src is not None:
                blocks.append(copy.deepcopy(model.blocks[src]))  # new tensors, equal values
            else:
                blocks.append(_fresh_block(model, self.new_layer, seed + n_fresh, self.strategy == "identity")
                              .to(device=ref.device, dtype=ref.dtype))
                n_fresh += 1
        return _with_blocks(model, blocks)


def _fresh_block(model: GPT, n_layer: int, seed: int, identity: bool) -> nn.Module:
    block = model.init_block(model.make_block(), n_layer=n_layer, seed=seed)
    if identity:  # x + 0·attn(·) + 0·mlp(·) = x: zero each layer that writes to the residual stream
        writers = {id(p) for p in residual_projections(block)}
        with torch.no_grad():
            for m in block.modules():
                w = getattr(m, "weight", None)
                if isinstance(w, torch.Tensor) and id(w) in writers:
                    w.zero_()
                    if getattr(m, "bias", None) is not None:
                        m.bias.zero_()
    return block


def _with_blocks(model: GPT, blocks: list[nn.Module]) -> GPT:
    """A new GPT object holding `model`'s non-block modules (shared) and `blocks`. Built on the meta device so
    nothing is allocated or initialised twice; every tensor of the result is one of `model`'s or of `blocks`."""
    with torch.device("meta"):
        out = type(model)(model.config)
    for name, child in model.named_children():
        if name != "blocks":
            setattr(out, name, child)
    for name, p in model.named_parameters(recurse=False):
        setattr(out, name, p)
    for name, b in model.named_buffers(recurse=False):
        out.register_buffer(name, b)
    out.with_blocks(blocks)
    out.train(model.training)
    left = [n for n, t in [*out.named_parameters(), *out.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"grow left tensors on the meta device: {left[:5]}")
    return out


def check_strategy(strategy: str) -> None:
    """ValueError unless `strategy` is one of STRATEGIES or 'copy:S' with an integer S >= 0."""
    if not isinstance(strategy, str):
        raise ValueError(f"strategy must be a string, got {strategy!r}")
    if strategy.startswith("copy:"):
        tail = strategy[5:]
        if not tail.isdigit():
            raise ValueError(f"strategy {strategy!r}: 'copy:S' needs a block start S >= 0 (an integer)")
        return
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES} or 'copy:S' (S = block start), got {strategy!r}")


def plan_growth(n_layer: int, strategy: str, block_size: int) -> GrowthPlan:
    """Where each of the n_layer + block_size layers comes from (see the module docstring)."""
    check_strategy(strategy)
    if not isinstance(n_layer, int) or n_layer < 1:
        raise ValueError(f"n_layer must be an integer >= 1, got {n_layer!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    n, b = n_layer, block_size
    kept = [(i, False) for i in range(n)]
    if strategy in ("random", "identity"):
        layers = kept + [(None, True)] * b
    elif strategy == "interleave":
        if b > n:
            raise ValueError(f"block_size={b} does not fit a {n}-layer model: interleave copies b distinct layers "
                             f"(block_size <= n_layer)")
        picks = {min(n - 1, math.floor((j + 0.5) * n / b)) for j in range(b)}
        layers = [x for i in range(n) for x in ([(i, False), (i, True)] if i in picks else [(i, False)])]
    else:
        if b > n:
            raise ValueError(f"block_size={b} does not fit a {n}-layer model: strategy {strategy!r} copies a block "
                             f"of block_size consecutive layers (block_size <= n_layer)")
        start = {"top": n - b, "middle": (n - b) // 2, "bottom": 0}.get(strategy)
        if start is None:
            start = int(strategy[5:])
            if start + b > n:
                raise ValueError(f"strategy {strategy!r} with block_size={b} does not fit a {n}-layer model: the "
                                 f"block start must be in [0, {n - b}]")
        end = start + b
        layers = kept[:end] + [(i, True) for i in range(start, end)] + kept[end:]
    return GrowthPlan(strategy, n, b, tuple(s for s, _ in layers), tuple(c for _, c in layers))


def grow(model: GPT, strategy: str, block_size: int, seed: int = 0) -> GPT:
    """`model` deeper by `block_size` layers grown by `strategy` ('top' = gradual stacking, 'middle' = MIDAS,
    'bottom', 'copy:S', 'interleave', 'random', 'identity'). Embeddings, final norm and head are kept (shared
    with `model`, as are the kept blocks); copies are new tensors. seed: the init of fresh blocks.

        from models.lm import GPT, GPTConfig, grow
        deeper = grow(GPT(GPTConfig.preset("tiny")), "middle", 2)   # 2 -> 4 layers"""
    if not isinstance(model, GPT):
        raise ValueError(f"grow needs a models.lm.GPT, got {type(model).__name__}")
    return plan_growth(len(model.blocks), strategy, block_size).apply(model, seed)
