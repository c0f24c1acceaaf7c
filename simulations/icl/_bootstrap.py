"""Per-prompt errors on a held-out set and percentile-bootstrap confidence intervals of their means.

`per_prompt_errors` draws the held-out prompts and keeps every prompt's squared error
(`simulations.icl._common.evaluate` is their mean). `bootstrap_ci` resamples prompts with
replacement (the same resamples for every series, so intervals of different models come from paired draws) and
returns the percentile interval of the mean; `ratio_ci` does the same for a ratio of two means (e.g. MSE / E y²).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.icl.tasks import Prompts, TaskConfig, TaskSampler

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B,N,d], y [B,N]) -> query predictions [B]


@torch.no_grad()
def per_prompt_errors(
    predictors: dict[str, Predictor],
    task: TaskConfig,
    *,
    prompts: int,
    device: str,
    seed: int,
    chunk: int = 10_000,
    transform: Callable[[Prompts], Prompts] | None = None,
) -> dict[str, torch.Tensor]:
    """Squared query errors (ŷ − y_q)² of each predictor on `prompts` held-out prompts, float64 on the CPU:
    [prompts] per predictor, or [T, prompts] for a predictor that returns [T, B]. "zero" holds y_q² (the error of
    predicting 0). `transform` maps a batch of prompts to a shifted one."""
    if prompts < 1 or chunk < 1:
        raise ValueError(f"prompts and chunk must be >= 1, got {prompts}, {chunk}")
    sampler = TaskSampler(task, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in predictors} | {"zero": []}
    done = 0
    while done < prompts:
        b = min(chunk, prompts - done)
        batch = sampler.sample(b, generator=gen)
        if transform is not None:
            batch = transform(batch)
        yq = batch.y[:, -1]
        for name, fn in predictors.items():
            parts[name].append((fn(batch.x, batch.y).float() - yq).pow(2).double().cpu())
        parts["zero"].append(yq.pow(2).double().cpu())
        done += b
    return {name: torch.cat(p, dim=-1) for name, p in parts.items()}


def _resampled_means(series: torch.Tensor, resamples: int, seed: int, block: int = 50) -> torch.Tensor:
    """Means of `series` [S, N] over `resamples` bootstrap resamples of its N columns: [resamples, S]."""
    n = series.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, resamples, block):
        r = min(block, resamples - start)
        idx = torch.randint(0, n, (r, n), generator=gen)
        counts = torch.zeros(r, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(r, n, dtype=torch.float64))
        out.append(counts @ series.T / n)
    return torch.cat(out)


def _check(resamples: int, level: float) -> None:
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _interval(draws: torch.Tensor, level: float) -> torch.Tensor:
    """Percentile interval [S, 2] of bootstrap draws [R, S]."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=draws.dtype)
    return torch.quantile(draws, q, dim=0).T


def bootstrap_ci(
    errors: torch.Tensor, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> list[float] | list[list[float]]:
    """Percentile-bootstrap `level` interval of the mean of `errors` over its last axis (prompts): [lo, hi] for
    errors [N], or one [lo, hi] per row for errors [T, N]."""
    _check(resamples, level)
    e = errors.double()
    rows = e.reshape(-1, e.shape[-1])
    ci = _interval(_resampled_means(rows, resamples, seed), level)
    return ci[0].tolist() if e.ndim == 1 else ci.tolist()


def ratio_ci(
    num: torch.Tensor, den: torch.Tensor, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> list[float] | list[list[float]]:
    """Percentile-bootstrap interval of mean(num) / mean(den), numerator and denominator resampled together
    (the same prompts): num [N] or [T, N], den [N]."""
    _check(resamples, level)
    if den.ndim != 1 or num.shape[-1] != den.shape[0]:
        raise ValueError(f"num must be [N] or [T, N] and den [N]; got {tuple(num.shape)}, {tuple(den.shape)}")
    rows = num.double().reshape(-1, num.shape[-1])
    draws = _resampled_means(torch.cat([rows, den.double()[None]]), resamples, seed)
    ci = _interval(draws[:, :-1] / draws[:, -1:], level)
    return ci[0].tolist() if num.ndim == 1 else ci.tolist()


def summarize(
    errors: dict[str, torch.Tensor], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[dict[str, float | list[float]], dict[str, list]]:
    """(means, intervals) of per-prompt errors from `per_prompt_errors`: {name: mean} (a list for [T, N]
    entries) and {name: [lo, hi]} (one pair per row for [T, N] entries)."""
    means = {k: (v.mean(-1).tolist() if v.ndim > 1 else float(v.mean())) for k, v in errors.items()}
    cis = {k: bootstrap_ci(v, resamples=resamples, level=level, seed=seed) for k, v in errors.items()}
    return means, cis
