"""lm-salt: a 2-layer GPT teaches a 6-layer one early (SALT), and the student gets there in fewer steps.

SALT (Rawat et al. 2024): pretrain a small LM first, then train the large one on (1 − ω)·CE + ω·KL(teacher ‖
student) for the first `kd_fraction` of its steps and on plain CE after (`models.lm.distill`). Arms, all from
the same initialisation, the same batches and the same learning-rate schedule:
- baseline: CE throughout;
- salt: KD for the first kd_fraction of the steps, then CE;
- kd_all: KD for the whole run (the teacher's bias stays in the loss to the end);
- salt_ds: SALT whose KD phase trains on the windows the teacher scores "challenging but learnable" (median
  per-token teacher loss in the `ds_band` quantile band of `ds_candidates` random windows).

Claims (strict): SALT reaches the baseline's final validation loss within 90% of the baseline's steps (read off
SALT's validation curve on the same fixed validation windows, linearly interpolated); distilling for the whole
run ends worse than SALT. Observation: SALT_DS's step ratio (the data selection's exact rule is not recovered
from the paper; the band is our reading).

Defaults that are only recalled from the paper ([mem] in ../shared/notes/lm.md §2) are fields: ω = 0.67,
τ = 1, kd_fraction = 0.2, a hard switch (kd_decay_fraction = 0; > 0 ramps ω down linearly over that fraction of
the KD phase), DS band 0.5–0.9 of the median teacher loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.lm import GPT, GPTConfig, RandomWindows, TokenSplits, evaluate_loss
from models.lm.cbs import steps_to_target
from models.lm.distill import DistillLoss, KDSchedule, PhasedBatches, WindowSet, select_band, sequence_scores
from models.train import TrainConfig, Trainer
from simulations.config import ExperimentConfig, check_device, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "lm-salt"
ARMS = ("baseline", "salt", "kd_all", "salt_ds")
CORPORA = ("shakespeare_char", "wikitext2")
_MIN_STEPS = 500  # below this the model claims are observations (a smoke run trains for seconds)


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: character-level Tiny Shakespeare, width 64, teacher 2 layers, student 6, context 64."""

    corpus: str = param("shakespeare_char", "training corpus", choices=CORPORA)
    n_embd: int = param(64, "width of teacher and student", bounds="[8, 4096]")
    n_head: int = param(4, "attention heads", bounds="[1, 64]")
    teacher_layers: int = param(2, "teacher depth (the small model)", bounds="[1, 48]")
    student_layers: int = param(6, "student depth (the large model)", bounds="[1, 96]")
    block_size: int = param(64, "context length (tokens)", bounds="[2, 2048]")
    batch_size: int = param(32, "sequences per step", bounds="[1, 4096]")
    teacher_steps: int = param(1000, "teacher training steps", bounds="[1, 1e7]")
    steps: int = param(1000, "student training steps (every arm)", bounds="[1, 1e7]")
    lr: float = param(2e-3, "peak learning rate (teacher and students)", bounds="(0, 1]")
    warmup_steps: int = param(50, "linear warmup steps", bounds="[0, 1e6]")
    min_lr_ratio: float = param(0.1, "final lr / peak lr of the cosine decay", bounds="[0, 1]")
    beta2: float = param(0.99, "AdamW beta2", bounds="[0, 1)")
    weight_decay: float = param(0.1, "AdamW weight decay", bounds="[0, 10]")
    omega: float = param(0.67, "distillation weight ω in the KD phase [mem: paper ~0.67]", bounds="[0, 1]")
    tau: float = param(1.0, "distillation temperature τ [mem: paper 1]", bounds="(0, 100]")
    kd_fraction: float = param(0.2, "fraction of student steps that distill (SALT, SALT_DS) [mem: ~15-20%]",
                               bounds="(0, 1]")
    kd_decay_fraction: float = param(0.0, "last fraction of the KD phase over which ω ramps to 0 (0: hard switch)",
                                     bounds="[0, 1]")
    arms: tuple[str, ...] = param(ARMS, "arms to train (baseline and salt are needed for the claims)",
                                  choices=ARMS, nonempty=True)
    ds_candidates: int = param(20_000, "random windows the teacher scores for SALT_DS", bounds="[1, 1e8]")
    ds_band: tuple[float, float] = param((0.5, 0.9), "quantile band of the teacher's median loss kept by SALT_DS",
                                         bounds="[0, 1]")
    eval_every: int = param(50, "validate every this many steps on the fixed validation windows",
                            bounds="[1, 1e6]")
    eval_windows: int = param(256, "validation windows (non-overlapping, the split's first) for the curves",
                              bounds="[1, 1e7]")
    seed: int = param(0, "seed of the inits and the batch positions", bounds="[0, 4294967295]")
    device: str = param("cpu", "cpu or cuda[:i]")

    def check(self) -> None:
        check_device(self.device)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.warmup_steps > min(self.steps, self.teacher_steps):
            raise ValueError(f"warmup_steps={self.warmup_steps} must be <= steps and teacher_steps")
        if not self.ds_band[0] < self.ds_band[1]:
            raise ValueError(f"ds_band must be (lo, hi) with lo < hi, got {self.ds_band}")
        if "salt_ds" in self.arms and self.ds_candidates * (self.ds_band[1] - self.ds_band[0]) < self.batch_size:
            raise ValueError(f"ds_candidates={self.ds_candidates} x band width cannot fill a batch of "
                             f"{self.batch_size}")

    @classmethod
    def smoke(cls) -> Config:
        """Seconds: width 32, 60 student steps, a short corpus prefix is not needed (windows are random)."""
        return cls(n_embd=32, n_head=2, block_size=32, batch_size=8, teacher_steps=60, steps=60, warmup_steps=5,
                   eval_every=20, eval_windows=16, ds_candidates=512)

    @classmethod
    def presets(cls):
        return {**super().presets(), "gpu": cls.gpu}

    @classmethod
    def gpu(cls) -> Config:
        """nanoGPT's baby-GPT shape (width 384, 6 heads, context 256, batch 64) for a 6-layer student and 2-layer
        teacher, 5,000 steps each: about 20 minutes on one H100 (nanoGPT's baby GPT trains 5,000 steps in ~3
        minutes on an A100 with torch.compile; here four uncompiled student arms, the teacher and the teacher's
        forward passes in the KD phases); not run here."""
        return cls(n_embd=384, n_head=6, block_size=256, batch_size=64, teacher_steps=5000, steps=5000,
                   lr=1e-3, warmup_steps=100, eval_every=250, eval_windows=512, ds_candidates=200_000,
                   device="cuda")

    def gpt(self, vocab_size: int, layers: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=layers, n_head=self.n_head,
                         n_embd=self.n_embd, bias=False)

    def train_config(self, steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, lr=self.lr, warmup_steps=self.warmup_steps, schedule="cosine",
                           min_lr_ratio=self.min_lr_ratio, betas=(0.9, self.beta2), weight_decay=self.weight_decay,
                           device=self.device, log_every=max(steps // 50, 1), eval_every=self.eval_every,
                           progress=steps >= 500)


def _corpus(name: str) -> TokenSplits:
    from simulations import datasets

    return datasets.load_shakespeare_char() if name == "shakespeare_char" else datasets.load_wikitext2()


def _train(c: Config, model: GPT, batches: Any, loss_fn: Any, steps: int, val: np.ndarray,
           teacher: GPT | None = None) -> dict[str, Any]:
    """Train with the shared Trainer; the validation curve (step 0 included) on the fixed windows."""
    def val_loss(m: torch.nn.Module) -> dict[str, float]:
        return {"val": evaluate_loss(m, val, c.block_size, 64, max_windows=c.eval_windows, device=c.device)}

    trainer = Trainer(model, batches, loss_fn, c.train_config(steps), eval_fns=[val_loss], teacher=teacher,
                      tokens_per_batch=c.batch_size * c.block_size,
                      flops_per_token=lambda m: m.flops_per_token(c.block_size))
    first = val_loss(model)["val"]
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    evals = [(0, first)] + [(r["step"], r["eval/val"]) for r in trainer.history if "eval/val" in r]
    train = [(r["step"], r["loss"]) for r in trainer.history if "loss" in r]
    return {"val_steps": [s for s, _ in evals], "val": [v for _, v in evals],
            "train_steps": [s for s, _ in train], "train": [v for _, v in train],
            "final_val": evals[-1][1], "train_s": wall, "train_flops": trainer.flops_done}


def _schedule(c: Config, arm: str) -> KDSchedule:
    if arm == "baseline":
        return KDSchedule(omega=c.omega, kd_steps=0)
    if arm == "kd_all":
        return KDSchedule(omega=c.omega, kd_steps=c.steps)
    kd = max(1, round(c.kd_fraction * c.steps))
    return KDSchedule(omega=c.omega, kd_steps=kd, decay_steps=round(c.kd_decay_fraction * kd))


def run(config: Config, out_dir: Path) -> dict:
    c = config
    data = _corpus(c.corpus)
    val = data.val
    t_start = time.perf_counter()
    torch.manual_seed(c.seed)
    # 1. the teacher: the small model, trained first on the same corpus
    teacher = GPT(c.gpt(data.vocab_size, c.teacher_layers), seed=c.seed + 1)
    t_run = _train(c, teacher, RandomWindows(data.train, c.block_size, c.batch_size, seed=c.seed + 1),
                   DistillLoss(KDSchedule(kd_steps=0)), c.teacher_steps, val)
    teacher.eval()
    runs: dict[str, dict[str, Any]] = {"teacher": t_run}
    ds: dict[str, Any] = {}
    for arm in c.arms:
        schedule = _schedule(c, arm)
        corpus = RandomWindows(data.train, c.block_size, c.batch_size, seed=c.seed)
        batches: Any = corpus
        if arm == "salt_ds":
            rng = np.random.default_rng(c.seed + 2)
            starts = rng.integers(0, len(data.train) - c.block_size, size=c.ds_candidates)
            scores = sequence_scores(teacher, data.train, starts, c.block_size, "median", device=c.device)
            keep = select_band(scores, *c.ds_band)
            ds = {"candidates": int(starts.size), "kept": int(keep.size),
                  "band_scores": [float(np.quantile(scores, q)) for q in c.ds_band],
                  "score_quantiles": {str(q): float(np.quantile(scores, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}}
            selected = WindowSet(data.train, starts[keep], c.block_size, c.batch_size, seed=c.seed)
            batches = PhasedBatches(selected, corpus, schedule.kd_steps)
        student = GPT(c.gpt(data.vocab_size, c.student_layers), seed=c.seed)
        runs[arm] = _train(c, student, batches, DistillLoss(schedule, c.tau), c.steps, val,
                           teacher=teacher if schedule.kd_steps else None)
        runs[arm]["kd_steps"] = schedule.kd_steps
    metrics: dict[str, Any] = {"corpus": {"name": data.name, "vocab_size": data.vocab_size,
                                          "train_tokens": len(data.train), "val_tokens": len(val)},
                               "runs": runs, "ds": ds, "steps": c.steps, "wall_s": time.perf_counter() - t_start}
    base = runs.get("baseline")
    if base is not None:
        target = base["final_val"]
        metrics["baseline_final_val"] = target
        for arm in c.arms:
            if arm != "baseline":
                s = steps_to_target(runs[arm]["val_steps"], runs[arm]["val"], target)
                metrics[f"{arm}_steps_to_baseline_final"] = s
                metrics[f"{arm}_step_ratio"] = s / c.steps
    _plot(c, runs, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=c.seed, device=c.device)


def _plot(c: Config, runs: dict, metrics: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 2, size=(12.0, 4.2))
    ax, zoom = axes[0]
    styles = {"teacher": ("k", ":"), "baseline": ("C0", "-"), "salt": ("C1", "-"), "kd_all": ("C3", "--"),
              "salt_ds": ("C2", "-.")}
    for name, r in runs.items():
        color, ls = styles[name]
        label = f"{name} ({c.teacher_layers if name == 'teacher' else c.student_layers} layers)"
        for a in (ax, zoom):
            a.plot(r["val_steps"], r["val"], color=color, ls=ls, marker="o", ms=2.5, label=label)
    kd = max(1, round(c.kd_fraction * c.steps))
    target = metrics.get("baseline_final_val")
    for a in (ax, zoom):
        a.axvline(kd, color="gray", lw=0.8, ls=":")
        if target is not None:
            a.axhline(target, color="C0", lw=0.6, ls=":")
        a.set_xlabel("step")
        a.set_ylabel("validation loss (nats / token)")
    s = metrics.get("salt_steps_to_baseline_final")
    if s is not None and math.isfinite(s):
        zoom.axvline(s, color="C1", lw=0.8)
        zoom.annotate(f"SALT reaches baseline's final\nat {s / c.steps:.0%} of the steps", (s, target),
                      textcoords="offset points", xytext=(-150, 25), fontsize=8)
    ax.set_title(f"{metrics['corpus']['name']}: KD phase = first {c.kd_fraction:.0%} (dotted)")
    lo = min(min(r["val"]) for r in runs.values() if r is not runs.get("teacher"))
    hi = max(r["val"][len(r["val"]) // 2] for r in runs.values())
    zoom.set_xlim(c.steps * 0.45, c.steps * 1.02)
    zoom.set_ylim(lo - 0.02, hi + 0.02)
    zoom.set_title("second half, zoomed")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "salt.png")


def claims(result: dict) -> list[Claim]:
    """Strict from `_MIN_STEPS` student steps (a smoke run cannot show a trained-model effect)."""
    m, cfg = result["metrics"], result["config"]
    trained = cfg["steps"] >= _MIN_STEPS
    out = []
    if "salt_step_ratio" in m:
        r = m["salt_step_ratio"]
        out.append(Claim("SALT's steps to the baseline's final val loss / baseline's steps", r, 0.9, r <= 0.9,
                         strict=trained))
    runs = m["runs"]
    if "kd_all" in runs and "salt" in runs:
        gap = runs["kd_all"]["final_val"] - runs["salt"]["final_val"]
        out.append(Claim("KD for the whole run ends worse than SALT: final val loss kd_all - salt", gap, 0.0,
                         gap > 0, strict=trained))
    if "salt_ds_step_ratio" in m:
        r = m["salt_ds_step_ratio"]
        out.append(Claim("SALT_DS's steps to the baseline's final val loss / baseline's steps", r, 0.9, r <= 0.9,
                         strict=False))
    if "teacher" in runs and "baseline" in runs:
        gap = runs["teacher"]["final_val"] - runs["baseline"]["final_val"]
        out.append(Claim("the teacher is the weaker model: teacher - baseline final val loss", gap, 0.0, gap > 0,
                         strict=False))
    return out


register(NAME, Config, run, claims, __doc__ or "", paper="Rawat et al., arXiv 2410.18779, 2024")
