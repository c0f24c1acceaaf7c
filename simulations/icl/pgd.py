"""icl-pgd: trained multilayer and looped linear transformers vs tuned L-step (preconditioned) GD.

Ahn et al. NeurIPS 2023; Gatmiry et al. ICML 2024. Also probes the models past their training depth.

Setting (Ahn et al.'s `variable_L_exp`): d=5, n=20, x ~ N(0, Σ) with Σ = U diag(1, 1, 1/4, 1/16, 1) Uᵀ (a fixed
random rotation U), w ~ N(0, Σ⁻¹), noiseless. Baselines, with the step size tuned on a separate batch:
L-step plain GD, and L-step GD preconditioned by Σ⁻¹ (PGD).

- Multilayer: an L-layer linear transformer (Ahn et al.'s parameterization, P = [[B,0],[0,1]], Q = [[A,0],[0,0]]),
  L ∈ {1, 2, 4}, each trained on its own.
- Looped: one restricted layer (a single shared preconditioner A) looped L times, L ∈ {1, 2, 4, 8} (the full
  default keeps these grids so that it fits one CPU core; batch 2048).
Deeper products of linear layers are stiffer, so AdamW's peak step size is lr/L for the multilayer models (at
lr/√L an 8-layer one diverged); the looped ones, with one shared A, train stably at lr_looped for every L (a CPU
sweep at L=8: 0.05 reached 0.78 × PGD in 1000 steps, 0.02 only 1.12 ×).

Claims, per L: trained error ≤ 1.02 × PGD error (the 2% slack the issue allows for training); the looped model's
shared preconditioner A aligns with −Σ⁻¹ (Frobenius cosine ≥ 0.99; the theory's optimum is a multiple of −Σ⁻¹).
Sanity (no trained model): tuned PGD ≤ tuned plain GD.
Then a looped model with 8 loops, trained on the mean loss over its loops (Yang et al.'s loop window, which asks
every loop to improve, so the shared step has to be a contraction), is run for 1..40 loops: from loop 8 on its
error never rises (each loop is one more step of a convergent preconditioned GD). Trained on the loss at loop 8
alone, the shared step is tuned for exactly 8 steps and may overshoot on prompts with large Σ̂ eigenvalues.
This claim does NOT hold at n/d = 4 and is an observation: with n = 20 samples Σ̂'s spectrum is much wider than
Σ's, and one shared preconditioner that is fast on most prompts has ρ(I − AΣ̂) > 1 on a few, whose error then
grows geometrically. Measured on the CPU (2000 steps, batch 1024, 8 loops, window loss): the error falls to 0.074
at loop 7, then grows ×1.8 per loop (0.16 at 10, 3.8 at 16, 5·10⁶ at 40). It is still far tamer than the unshared
model, whose last layer repeated grew by 10⁷ within 4× its depth in a smoke run. Gatmiry et al.'s monotonicity
is a property of the population-optimal (or robustly trained) looped model; checking it needs larger n/d. An unshared 8-layer model (restricted: one A per layer)
run past its depth (its last layer repeated) is reported beside it as an observation: nothing in its training
asks its last layer to be a contraction, so it may or may not degrade (Gatmiry et al. 2024 show it can).
Smoke size (a few hundred CPU steps, depths ≤ 4, probe at 4 loops) cannot train the models to PGD's level — the
Σ⁻¹-like preconditioner has entries ~8 (κ = 16), far from the 0.01 init — so the trained-vs-PGD claims are
observations below `_MIN_STEPS` steps and strict above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.icl import LinearAttention, LoopedTransformer, TaskConfig, TaskSampler
from simulations.icl._common import (
    check_device,
    evaluate,
    gd_predictor,
    model_predictor,
    seed_all,
    train,
    tuned_gd,
)
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "icl-pgd"
_SLACK = 1.02
_MIN_STEPS = 2000
_ALIGN = 0.99  # the issue measured 1.0000 (one layer) and 0.9986 (looped L = 3) on the CPU


@dataclass(frozen=True)
class Config:
    """layers: depths of the unshared models; loops: loop counts of the looped models; probe_depth: the loop
    count (in `loops`) whose looped model, and an unshared model of that depth, run for 1..probe_max."""

    d: int = 5
    n: int = 20
    eigvals: tuple[float, ...] = (1.0, 1.0, 0.25, 0.0625, 1.0)
    layers: tuple[int, ...] = (1, 2, 4)
    loops: tuple[int, ...] = (1, 2, 4, 8)
    probe_depth: int = 8
    probe_max: int = 40
    steps: int = 2000
    batch_size: int = 2048
    lr: float = 5e-2
    lr_looped: float = 5e-2
    eval_prompts: int = 100_000
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.d < 1 or self.n < 1:
            raise ValueError(f"d and n must be >= 1, got {self.d}, {self.n}")
        if len(self.eigvals) != self.d or min(self.eigvals) <= 0:
            raise ValueError(f"eigvals must be d={self.d} positive numbers, got {self.eigvals}")
        if not self.layers or not self.loops or min(self.layers + self.loops) < 1:
            raise ValueError(f"layers and loops must be non-empty lists of depths >= 1, got {self.layers}, {self.loops}")
        if self.probe_depth not in self.loops:
            raise ValueError(f"probe_depth must be one of loops {self.loops}, got {self.probe_depth}")
        if self.probe_max <= self.probe_depth:
            raise ValueError(f"probe_max must be > probe_depth={self.probe_depth}, got {self.probe_max}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_prompts < 1:
            raise ValueError(f"steps, batch_size, eval_prompts must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.eval_prompts}")
        if not self.lr > 0 or not self.lr_looped > 0:
            raise ValueError(f"lr and lr_looped must be > 0, got {self.lr}, {self.lr_looped}")
        check_device(self.device)

    @classmethod
    def smoke(cls) -> Config:
        return cls(layers=(1, 2), loops=(1, 2, 4), probe_depth=4, probe_max=16, steps=500, batch_size=512,
                   eval_prompts=20_000)


def _all_depths(model: torch.nn.Module, block: LinearAttention, depth: int, shared: bool):
    """Predictions after 1..depth layers/loops, [depth, B], in one pass (an unshared model repeats its last
    layer beyond its trained depth, as `LinearAttention.forward(depth=...)` does)."""

    def predict(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z, outs = block.embed(x, y), []
        for t in range(depth):
            z = block.layer(z, 0 if shared else min(t, block.n_layers - 1))
            outs.append(-z[:, -1, block.d])
        return torch.stack(outs)

    model.eval()
    return predict


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frobenius cosine <a, b> / (|a| |b|)."""
    return float((a * b).sum() / (a.norm() * b.norm()))


def _window_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Mean over the model's loop window of the query MSE after each loop (Yang et al. 2023)."""
    preds = model(batch.x, batch.y, return_all=True)
    return (preds - batch.y[:, -1]).pow(2).mean()


def run(config: Config, out_dir: Path) -> dict:
    seed_all(config.seed)
    c = config
    task = TaskConfig(d=c.d, n=c.n, cov="fixed", eigvals=c.eigvals, rotate=True, w_cov="inverse_x")
    cov = TaskSampler(task, device=c.device).sample(1).cov[0]
    sigma_inv = torch.linalg.inv(cov)
    kw = dict(steps=c.steps, batch_size=c.batch_size, device=c.device, seed=c.seed)
    preds, curves, probes, align = {}, {}, {}, {}
    for depth in c.layers:
        model = LinearAttention(c.d, depth, param="sparse", seed=c.seed)
        curves[f"layers={depth}"] = train(model, task, lr=c.lr / depth, **kw)
        preds[f"multilayer L={depth}"] = model_predictor(model)
    model = LinearAttention(c.d, c.probe_depth, param="restricted", seed=c.seed)
    curves[f"unshared restricted, layers={c.probe_depth}"] = train(model, task, lr=c.lr / c.probe_depth, **kw)
    probes["multilayer"] = _all_depths(model, model, c.probe_max, shared=False)
    for depth in c.loops:
        model = LoopedTransformer(c.d, depth, kind="linear", param="restricted", seed=c.seed)
        curves[f"loops={depth}"] = train(model, task, lr=c.lr_looped, **kw)
        preds[f"looped L={depth}"] = model_predictor(model)
        align[f"looped L={depth}"] = _cosine(model.block.A[0, 0].detach(), -sigma_inv)
    model = LoopedTransformer(c.d, c.probe_depth, kind="linear", param="restricted", seed=c.seed)
    curves[f"looped, window loss, loops={c.probe_depth}"] = train(model, task, lr=c.lr_looped,
                                                                  loss_fn=_window_loss, **kw)
    probes["looped"] = _all_depths(model, model.block, c.probe_max, shared=True)
    for depth in sorted(set(c.layers) | set(c.loops)):
        for name, pre in (("GD", None), ("PGD", sigma_inv)):
            lr = tuned_gd(task, depth, device=c.device, seed=c.seed + 500, precond=pre)
            preds[f"{name} L={depth}"] = gd_predictor(depth, lr, pre)
    mse = evaluate(preds | probes, task, prompts=c.eval_prompts, device=c.device, seed=c.seed + 1000)
    probe = {k: mse.pop(k) for k in probes}
    metrics = {"mse": mse, "probe": probe, "curves": curves, "alignment": align}

    fig, axes = new_figure(1, 2)
    ax = axes[0, 0]
    for name, depths, style in (("GD", sorted(set(c.layers) | set(c.loops)), "k:"),
                                ("PGD", sorted(set(c.layers) | set(c.loops)), "k--"),
                                ("multilayer", c.layers, "o-"), ("looped", c.loops, "s-")):
        ax.plot(depths, [mse[f"{name} L={t}"] for t in depths], style, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("layers / loops / GD steps L")
    ax.set_ylabel("test MSE")
    ax.set_title(f"d={c.d}, n={c.n}, Ahn et al. covariance")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ts = range(1, c.probe_max + 1)
    for name, errs in probe.items():
        ax.plot(ts, errs, label=f"{name} (trained at depth {c.probe_depth})")
    ax.axvline(c.probe_depth, color="gray", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("layers / loops at test time")
    ax.set_ylabel("test MSE")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "pgd.png")
    return finalize(out_dir, NAME, config, metrics, claims, seed=c.seed, device=c.device)


def claims(result: dict) -> list[Claim]:
    """trained ≤ 1.02·PGD ≤ 1.02·GD per depth; looped error non-increasing past its training depth."""
    m, cfg, probe = result["metrics"]["mse"], result["config"], result["metrics"]["probe"]
    trained = cfg["steps"] >= _MIN_STEPS
    out = []
    for kind, depths in (("multilayer", cfg["layers"]), ("looped", cfg["loops"])):
        for t in depths:
            r = m[f"{kind} L={t}"] / m[f"PGD L={t}"]
            out.append(Claim(f"{kind} L={t}: trained / tuned PGD", r, _SLACK, r <= _SLACK, strict=trained))
    for t in sorted(set(cfg["layers"]) | set(cfg["loops"])):
        r = m[f"PGD L={t}"] / m[f"GD L={t}"]
        out.append(Claim(f"L={t}: tuned PGD / tuned GD", r, 1.0, r <= 1.0, sanity=True))
    for name, cos in result["metrics"].get("alignment", {}).items():
        out.append(Claim(f"{name}: cosine of the shared preconditioner A with -Σ⁻¹", cos, _ALIGN, cos >= _ALIGN,
                         strict=trained))
    k = cfg["probe_depth"]
    tail = probe["looped"][k - 1:]
    rise = max(b / a for a, b in zip(tail, tail[1:]))
    out.append(Claim(f"looped (trained at {k}): max error ratio loop t+1 / t for t >= {k}", rise, 1.0,
                     rise <= 1.0, strict=False))
    deg = probe["multilayer"][-1] / probe["multilayer"][k - 1]
    out.append(Claim(f"unshared {k}-layer run to {cfg['probe_max']}: error / error at {k} (degrades)", deg, 1.0,
                     deg > 1.0, strict=False))
    return out


register(NAME, Config, run, claims, __doc__)
