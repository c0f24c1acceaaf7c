"""lm-cbs: the critical batch size of a small GPT grows as the target loss falls (Zhang et al., ICLR 2025).

For each width and batch size B from 8 to 512 sequences (×4 apart; every power of two in the gpu preset), a GPT trains on character-level Tiny Shakespeare at a
constant learning rate (after a short warmup) while an exponential weight average (EWA) of its weights is
validated on a geometric grid of steps; the first step at which the EWA model's validation loss reaches each
target is that run's steps-to-target (`models.lm.cbs`). Each B takes the best of a small learning-rate grid
(×0.25 … ×2 around lr_base·(B/8)^lr_power: Adam's optimal rate grows with B; a probe at width 32 found the best
rate 4·10⁻³ at B = 8 and 8·10⁻³ from B = 32 to 512, i.e. slower than √B, and the grid reaches down for the
wider model). Runs stop once they reached the lowest
target, can no longer beat the best rate's steps at this B, trail the leading rate's curve by more than
`drop_margin` (from `drop_after` steps on: a clear loser), or hit their step cap. steps(B) = a + b/B is
fitted per (width, target), and B* is where steps exceed ideal linear scaling from the smallest batch by 20%.

Claim (strict): at each width, B* is larger at the lower target (more progress, less gradient noise to average
away — the paper's "CBS grows with data"). Observation: the B* ratio between the two widths at the lower target
(the paper: roughly flat in model size at a fixed amount of data). Our widths differ 2× at equal depth, a far
narrower range than the paper's 85M–1.2B, and at a fixed *loss* target (not fixed data), so the ratio is only
reported. The EWA horizon is set in sequences (decay 1 − B/horizon, capped): the paper tunes the decay, which
we cannot afford at every B.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.lm import GPT, GPTConfig, RandomWindows, evaluate_loss, lm_loss
from models.lm.cbs import EWA, critical_batch_size, fit_steps, steps_to_target
from models.train import TrainConfig, Trainer
from simulations.config import ExperimentConfig, check_device, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "lm-cbs"
_MIN_STEPS = 2000  # the smallest batch's cap below which the claims are observations (smoke)


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: 2-layer GPTs of width 32 and 64, context 32, B = 8, 32, 128, 512 (×4 apart: the costly large
    batches spend their steps near the floor a, so fewer points there), four learning rates per B."""

    widths: tuple[int, ...] = param((32, 64), "model widths (n_embd) to measure", bounds="[8, 4096]",
                                    nonempty=True)
    n_layer: int = param(2, "transformer blocks", bounds="[1, 48]")
    head_dim: int = param(16, "width per attention head", bounds="[4, 256]")
    block_size: int = param(32, "context length (tokens)", bounds="[2, 2048]")
    batch_sizes: tuple[int, ...] = param((8, 32, 128, 512), "batch sizes B (sequences)",
                                         bounds="[1, 65536]", nonempty=True)
    targets: tuple[float, ...] = param((2.2, 1.95), "validation-loss targets (nats / token), higher first",
                                       bounds="(0, 20]", length=2)
    lr_base: float = param(4e-3, "grid centre at B = 8", bounds="(0, 1]")
    lr_power: float = param(0.2, "grid centre scales as (B / 8)^lr_power", bounds="[0, 1]")
    lr_multipliers: tuple[float, ...] = param((0.25, 0.5, 1.0, 2.0), "learning-rate grid around the centre",
                                              bounds="(0, 100]", nonempty=True)
    lr_max: float = param(3e-2, "cap on any learning rate", bounds="(0, 1]")
    beta2: float = param(0.99, "AdamW beta2", bounds="[0, 1)")
    warmup_steps: int = param(20, "linear warmup, then constant", bounds="[0, 1e6]")
    ewa_horizon: float = param(2048.0, "EWA horizon in sequences: decay = 1 - B / horizon", bounds="[1, 1e9]")
    ewa_max_decay: float = param(0.999, "cap on the EWA decay", bounds="[0, 1)")
    cap_a: int = param(600, "step cap = cap_a + cap_b / B", bounds="[1, 1e8]")
    cap_b: float = param(64_000.0, "step cap = cap_a + cap_b / B", bounds="[0, 1e12]")
    drop_margin: float = param(0.03, "stop a rate whose loss is this fraction above the leading rate's",
                               bounds="[0, 10]")
    drop_after: int = param(50, "never stop a rate for its loss before this step", bounds="[1, 1e8]")
    eval_growth: float = param(0.05, "validation steps grow geometrically by this factor", bounds="(0, 1]")
    eval_windows: int = param(64, "fixed validation windows (the split's first)", bounds="[1, 1e6]")
    reference: str = param("smallest", "ideal linear scaling from the smallest B, or from the fit's b/B asymptote",
                           choices=("smallest", "asymptote"))
    seed: int = param(0, "seed of the inits and the batch positions", bounds="[0, 4294967295]")
    device: str = param("cpu", "cpu or cuda[:i]")

    def check(self) -> None:
        check_device(self.device)
        for w in self.widths:
            if w % self.head_dim:
                raise ValueError(f"every width must be a multiple of head_dim={self.head_dim}, got {w}")
        if not self.targets[0] > self.targets[1]:
            raise ValueError(f"targets must be (higher, lower), got {self.targets}")
        if len(set(self.batch_sizes)) < 2 or list(self.batch_sizes) != sorted(self.batch_sizes):
            raise ValueError(f"batch_sizes must increase, with at least 2, got {self.batch_sizes}")

    @classmethod
    def smoke(cls) -> Config:
        """Seconds: one width, three batch sizes, two learning rates, easy targets."""
        return cls(widths=(16,), head_dim=8, block_size=16, batch_sizes=(8, 32, 128), targets=(3.3, 3.15),
                   lr_base=3e-3, lr_multipliers=(1.0, 2.0), warmup_steps=5, cap_a=60, cap_b=1600.0,
                   eval_windows=16, eval_growth=0.1)

    @classmethod
    def presets(cls):
        return {**super().presets(), "gpu": cls.gpu}

    @classmethod
    def gpu(cls) -> Config:
        """Widths 128 and 256 (4 layers, context 128), B = 8 … 1024, targets 1.6 / 1.5: about 40 minutes on one
        H100 (small models are launch-bound there; the cost is dominated by the small batches' step counts);
        not run here."""
        return cls(widths=(128, 256), n_layer=4, head_dim=32, block_size=128,
                   batch_sizes=(8, 16, 32, 64, 128, 256, 512, 1024), targets=(1.6, 1.5), lr_base=1e-3,
                   ewa_horizon=8192.0, cap_a=2000, cap_b=400_000.0, eval_windows=512, device="cuda")

    def model(self, vocab_size: int, width: int) -> GPT:
        cfg = GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                        n_head=width // self.head_dim, n_embd=width, bias=False)
        return GPT(cfg, seed=self.seed)

    def lrs(self, batch: int) -> list[float]:
        centre = self.lr_base * (batch / 8) ** self.lr_power
        return sorted({min(centre * m, self.lr_max) for m in self.lr_multipliers},
                      key=lambda lr: abs(math.log(lr / centre)))  # the centre first: it prunes the others

    def cap(self, batch: int) -> int:
        return int(math.ceil(self.cap_a + self.cap_b / batch))

    def ewa_decay(self, batch: int) -> float:
        return min(max(1.0 - batch / self.ewa_horizon, 0.0), self.ewa_max_decay)


def eval_steps(cap: int, growth: float) -> list[int]:
    """1, 2, … then geometric steps growing by `growth` (at least +1), up to and including cap."""
    out, s = [], 1
    while s < cap:
        out.append(s)
        s = max(s + 1, int(math.ceil(s * (1 + growth))))
    return [*out, cap]


def _one_run(c: Config, width: int, batch: int, lr: float, train: np.ndarray, val: np.ndarray, vocab: int,
             budget: list[float], leader: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one (width, B, lr) at constant lr with EWA; stop at the lowest target, when no target can beat
    `budget` (the best steps so far for each target at this B), or — from `drop_after` steps on — when its
    loss is more than `drop_margin` above the leading rate's curve at the same step (a clear loser)."""
    model = c.model(vocab, width)
    ewa = EWA(model, c.ewa_decay(batch))
    cap = c.cap(batch)
    cfg = TrainConfig(steps=cap, lr=lr, warmup_steps=min(c.warmup_steps, cap), schedule="constant",
                      betas=(0.9, c.beta2), weight_decay=0.0, device=c.device, log_every=0, progress=False)
    trainer = Trainer(model, RandomWindows(train, c.block_size, batch, seed=c.seed), lm_loss, cfg,
                      hooks=[ewa.hook])
    steps, losses = [], []
    reached = [math.inf] * len(c.targets)
    diverged = dropped = False
    for s in eval_steps(cap, c.eval_growth):
        trainer.fit(until=s)
        ewa.sync(trainer)
        loss = evaluate_loss(ewa.model, val, c.block_size, 128, max_windows=c.eval_windows, device=c.device)
        steps.append(s)
        losses.append(loss)
        if not math.isfinite(loss):
            diverged = True
            break
        reached = [steps_to_target(steps, losses, t) for t in c.targets]
        if math.isfinite(reached[-1]):
            break
        if all(math.isfinite(r) or s >= b for r, b in zip(reached, budget)):
            break  # every target either reached or already slower than the best rate at this B
        if leader is not None and s >= c.drop_after and s <= leader["steps"][-1]:
            if loss > (1 + c.drop_margin) * float(np.interp(s, leader["steps"], leader["loss"])):
                dropped = True
                break
    return {"lr": lr, "ewa_decay": ewa.decay, "cap": cap, "steps": steps, "loss": losses,
            "steps_to_target": reached, "diverged": diverged, "dropped": dropped}


def _rank(r: dict[str, Any]) -> tuple[float, ...]:
    """Order of runs: fewest steps to the lowest target, then to the next, ... (unreached = inf)."""
    return tuple(reversed(r["steps_to_target"]))


def run(config: Config, out_dir: Path) -> dict:
    from simulations.datasets import load_shakespeare_char

    c = config
    data = load_shakespeare_char()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(c.widths) * len(c.batch_sizes), desc=NAME, leave=False,
               disable=c.cap(c.batch_sizes[0]) < _MIN_STEPS)
    for width in c.widths:
        per_b: dict[str, Any] = {}
        for batch in c.batch_sizes:
            best = [math.inf] * len(c.targets)
            runs: list[dict[str, Any]] = []
            leader = None
            for lr in c.lrs(batch):
                r = _one_run(c, width, batch, lr, data.train, data.val, data.vocab_size, best, leader)
                runs.append(r)
                best = [min(b, s) for b, s in zip(best, r["steps_to_target"])]
                if leader is None or _rank(r) < _rank(leader):
                    leader = r
            best_lr = [runs[int(np.argmin([r["steps_to_target"][i] for r in runs]))]["lr"]
                       if math.isfinite(best[i]) else None for i in range(len(c.targets))]
            grid = c.lrs(batch)
            per_b[str(batch)] = {"runs": runs, "best_steps": best, "best_lr": best_lr,
                                 "lr_at_grid_edge": [lr is not None and lr in (min(grid), max(grid))
                                                     and len(grid) > 1 for lr in best_lr]}
            bar.update()
        fits = {}
        for i, target in enumerate(c.targets):
            B = np.array(c.batch_sizes, dtype=float)
            S = np.array([per_b[str(b)]["best_steps"][i] for b in c.batch_sizes])
            fit: dict[str, Any] = {"target": target, "reached": int(np.isfinite(S).sum())}
            try:
                a, b = fit_steps(B, S)
                ref = float(B[np.isfinite(S)][0]) if c.reference == "smallest" else 0.0
                fit.update(a=a, b=b, reference=ref, cbs=critical_batch_size(a, b, 0.2, ref),
                           rel_rmse=float(np.sqrt(np.mean((np.log(a + b / B[np.isfinite(S)])
                                                           - np.log(S[np.isfinite(S)])) ** 2))))
            except ValueError as e:
                fit.update(a=None, b=None, cbs=math.nan, error=str(e))
            fits[str(target)] = fit
        results[str(width)] = {"batches": per_b, "fits": fits,
                               "params": c.model(data.vocab_size, width).num_params()}
    bar.close()
    metrics = {"widths": results, "wall_s": time.perf_counter() - t0}
    _plot(c, results, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=c.seed, device=c.device)


def _plot(c: Config, results: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, len(c.widths) + 1, size=(5.0 * (len(c.widths) + 1), 4.0))
    B = np.array(c.batch_sizes, dtype=float)
    grid = np.geomspace(B[0], B[-1], 100)
    summary = axes[0, -1]
    for ax, width in zip(axes[0], c.widths):
        res = results[str(width)]
        for i, target in enumerate(c.targets):
            fit = res["fits"][str(target)]
            S = np.array([res["batches"][str(b)]["best_steps"][i] for b in c.batch_sizes])
            ok = np.isfinite(S)
            line = ax.plot(B[ok], S[ok], "o", label=f"target {target:g}")[0]
            if fit.get("a") is not None:
                a, b = fit["a"], fit["b"]
                ax.plot(grid, a + b / grid, "-", color=line.get_color(), lw=1,
                        label=f"fit {a:.0f} + {b:.3g}/B")
                ref = fit["reference"] or grid[0]
                s_ref = a + b / ref if fit["reference"] else b / grid[0]
                ax.plot(grid, s_ref * ref / grid, ":", color=line.get_color(), lw=0.8)
                if math.isfinite(fit["cbs"]):
                    ax.axvline(fit["cbs"], color=line.get_color(), ls="--", lw=0.8)
                    ax.annotate(f"B*={fit['cbs']:.0f}", (fit["cbs"], S[ok].max()), fontsize=8,
                                color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (sequences)")
        ax.set_ylabel("steps to target (EWA model)")
        ax.set_title(f"width {width} ({res['params'] / 1e3:.0f}k params); dotted: linear scaling")
        ax.legend(fontsize=7)
        summary.plot(c.targets, [res["fits"][str(t)]["cbs"] for t in c.targets], "o-", label=f"width {width}")
    summary.set_xlabel("target validation loss")
    summary.set_ylabel("critical batch size B* (sequences)")
    summary.invert_xaxis()
    summary.set_title("B* against the target")
    summary.legend(fontsize=7)
    save_figure(fig, out_dir, "cbs.png")


def claims(result: dict) -> list[Claim]:
    """Strict from a smallest-batch step cap of `_MIN_STEPS` (the smoke preset's targets are easy)."""
    m, cfg = result["metrics"], result["config"]
    trained = cfg["cap_a"] + cfg["cap_b"] / cfg["batch_sizes"][0] >= _MIN_STEPS
    hi, lo = (str(t) for t in cfg["targets"])
    out = []
    for w, res in m["widths"].items():
        c_hi, c_lo = res["fits"][hi]["cbs"], res["fits"][lo]["cbs"]
        ratio = c_lo / c_hi if c_hi and math.isfinite(c_hi) else math.nan
        out.append(Claim(f"width {w}: B* at target {lo} / B* at target {hi}", ratio, 1.0,
                         bool(ratio > 1.0), strict=trained))
    widths = list(m["widths"])
    if len(widths) >= 2:
        a, b = (m["widths"][w]["fits"][lo]["cbs"] for w in (widths[0], widths[-1]))
        ratio = b / a if a and math.isfinite(a) else math.nan
        out.append(Claim(f"B* width {widths[-1]} / width {widths[0]} at target {lo} (paper: ~flat)", ratio, 1.0,
                         bool(0.5 <= ratio <= 2.0), strict=False))
    return out


register(NAME, Config, run, claims, __doc__ or "",
         paper="Zhang, Morwani, Vyas, Wu, Zou, Ghai, Foster, Kakade, ICLR 2025")
