"""Out-of-distribution prompts for probing a trained in-context learner (Garg et al. 2022, §4).

Each function returns a transform, `Prompts -> Prompts`, for `_bootstrap.per_prompt_errors(transform=...)` or for
probing a model reloaded with `simulations.icl.weights.load_models`. The task vector w of every prompt is kept and
the labels are recomputed from the shifted inputs, so a shifted prompt is still a consistent regression problem
(label noise already in y is kept as it was). Three shifts, all applied at test time only:

- `scale_x(c)`: every input, context and query, multiplied by c (y scales with it; E y² grows by c²);
- `skew_cov(power)`: inputs re-drawn as x' = x S with Σ' = SᵀS having eigenvalues ∝ i^(−power), rescaled to
  trace d (E y² unchanged at ψ²d), in a random rotation fixed by `seed`;
- `label_noise(var)`: N(0, var) noise added to every label, the query's too (the Bayes predictor is then ridge
  with λ = var + the training noise).

Only linear-kind prompts (w given) can be shifted in x; `label_noise` works for every kind.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.icl.tasks import Prompts

Transform = Callable[[Prompts], Prompts]


def _relabel(p: Prompts, x: torch.Tensor, cov: torch.Tensor | None) -> Prompts:
    if p.w is None:
        raise ValueError("shifting x needs the prompts' task vectors w (a linear kind), got w=None")
    clean = (p.x @ p.w.unsqueeze(-1)).squeeze(-1)
    y = (x @ p.w.unsqueeze(-1)).squeeze(-1) + (p.y - clean)  # keep the label noise that was drawn
    return Prompts(x, y, p.w, cov)


def scale_x(c: float) -> Transform:
    """Multiply every input by c > 0 (c = 1 is the identity)."""
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")

    def transform(p: Prompts) -> Prompts:
        cov = None if p.cov is None else p.cov * c**2
        return _relabel(p, p.x * c, cov)

    return transform


def skewed_spectrum(d: int, power: float) -> torch.Tensor:
    """Eigenvalues ∝ i^(−power), i = 1..d, rescaled to sum to d (power = 0 is the identity's)."""
    if d < 1 or not power >= 0:
        raise ValueError(f"d must be >= 1 and power >= 0, got d={d}, power={power}")
    ev = torch.arange(1, d + 1, dtype=torch.float64).pow(-power)
    return (ev * d / ev.sum()).float()


def skew_cov(power: float, seed: int = 0) -> Transform:
    """Re-draw x under a skewed covariance Σ' = U diag(λ) Uᵀ, λ from `skewed_spectrum`, U Haar fixed by `seed`.
    Inputs must come from N(0, I) (identity-covariance prompts): x' = x diag(√λ) Uᵀ then has covariance Σ'."""
    if not power >= 0:
        raise ValueError(f"power must be >= 0, got {power}")

    def transform(p: Prompts) -> Prompts:
        if p.cov is not None:
            raise ValueError("skew_cov expects identity-covariance prompts (cov=None)")
        d = p.x.shape[-1]
        g = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        u = (q * torch.sign(torch.diagonal(r))).float().to(p.x.device)
        root = u * skewed_spectrum(d, power).to(p.x.device).sqrt()  # Σ' = root rootᵀ
        cov = (root @ root.T).expand(p.x.shape[0], d, d)
        return _relabel(p, p.x @ root.T, cov)

    return transform


def label_noise(var: float, seed: int = 0) -> Transform:
    """Add N(0, var) to every label (context and query), from a generator seeded by `seed` and advanced per
    batch, so the same sequence of batches gets the same noise."""
    if not var >= 0:
        raise ValueError(f"var must be >= 0, got {var}")
    gen: dict[str, torch.Generator] = {}

    def transform(p: Prompts) -> Prompts:
        g = gen.setdefault(str(p.y.device), torch.Generator(device=p.y.device).manual_seed(seed))
        noise = torch.randn(p.y.shape, generator=g, device=p.y.device) * var**0.5
        return Prompts(p.x, p.y + noise, p.w, p.cov)

    return transform
