"""One prompt sampler for every in-context-learning experiment, and the two token layouts.

A prompt is n context pairs (x_i, y_i) plus a query x_q whose label is hidden from the model:

    x_i ~ N(0, Σ),   w ~ N(μ, ψ² I)  (or ψ² Σ⁻¹),   y_i = wᵀ x_i + ε_i,  ε_i ~ N(0, σ²)

Σ is the identity, one fixed matrix (given spectrum, optionally rotated), or a fresh random rotation per prompt
with eigenvalues in [1/κ, 1] (the task-diversity setting). Tasks w are drawn fresh every prompt (infinite tasks)
or from a finite pool of K tasks fixed by `pool_seed`. Besides linear regression: sparse linear regression and a
2-layer ReLU teacher (Garg et al. 2022). Shapes: x [B, N, d], y [B, N] with N = n + 1 and the query last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

_KINDS = ("linear", "sparse", "relu2nn")
_COVS = ("identity", "fixed", "random")
_SPECTRA = ("loguniform", "uniform", "geomspace")
_W_COVS = ("identity", "inverse_x")


class Prompts(NamedTuple):
    """A batch of prompts: x [B, N, d], y [B, N] (the query is row N-1; y[:, -1] is its true label),
    w the tasks ([B, d] for linear kinds, None for relu2nn), cov the per-prompt Σ [B, d, d] (None if identity)."""

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor | None
    cov: torch.Tensor | None


@dataclass(frozen=True)
class TaskConfig:
    """What prompts look like. `n` counts context points; every prompt has n + 1 rows (the query last).

    noise_var is σ²; w_mean is μ (a scalar, meaning μ·1, or a length-d tuple); w_scale is ψ.
    cov="fixed" uses `eigvals` (length d, default 1..1) rotated by a fixed Haar matrix when `rotate`;
    cov="random" draws per prompt a Haar rotation and eigenvalues in [1/κ, 1] by `spectrum`.
    w_cov="inverse_x" draws w ~ N(μ, ψ² Σ⁻¹) (Ahn et al.'s setting). num_tasks=K > 0 draws tasks from a pool of
    K fixed by pool_seed (the pool also fixes Σ for cov="random"); None means a fresh task per prompt.
    """

    d: int
    n: int
    kind: str = "linear"
    noise_var: float = 0.0
    w_mean: float | tuple[float, ...] = 0.0
    w_scale: float = 1.0
    w_cov: str = "identity"
    cov: str = "identity"
    eigvals: tuple[float, ...] | None = None
    rotate: bool = False
    kappa: float = 1.0
    spectrum: str = "loguniform"
    num_tasks: int | None = None
    pool_seed: int = 0
    sparsity: int = 3
    hidden: int = 100

    def __post_init__(self) -> None:
        if self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}")
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if self.cov not in _COVS:
            raise ValueError(f"cov must be one of {_COVS}, got {self.cov!r}")
        if self.spectrum not in _SPECTRA:
            raise ValueError(f"spectrum must be one of {_SPECTRA}, got {self.spectrum!r}")
        if self.w_cov not in _W_COVS:
            raise ValueError(f"w_cov must be one of {_W_COVS}, got {self.w_cov!r}")
        if not self.noise_var >= 0:
            raise ValueError(f"noise_var must be >= 0, got {self.noise_var}")
        if not self.w_scale > 0:
            raise ValueError(f"w_scale must be > 0, got {self.w_scale}")
        if not self.kappa >= 1:
            raise ValueError(f"kappa must be >= 1, got {self.kappa}")
        if isinstance(self.w_mean, tuple) and len(self.w_mean) != self.d:
            raise ValueError(f"w_mean must be a scalar or have length d={self.d}, got length {len(self.w_mean)}")
        if self.eigvals is not None:
            if len(self.eigvals) != self.d or min(self.eigvals) <= 0:
                raise ValueError(f"eigvals must be {self.d} positive numbers, got {self.eigvals}")
            if self.cov != "fixed":
                raise ValueError(f"eigvals needs cov='fixed', got cov={self.cov!r}")
        if self.num_tasks is not None and self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1 or None (infinite), got {self.num_tasks}")
        if self.kind == "sparse" and not 1 <= self.sparsity <= self.d:
            raise ValueError(f"sparsity must be in [1, d={self.d}], got {self.sparsity}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if self.kind == "relu2nn" and (self.w_cov != "identity" or self.w_mean != 0.0):
            raise ValueError("kind='relu2nn' supports only w_mean=0 and w_cov='identity'")


def _haar(b: int, d: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """b Haar-distributed orthogonal d×d matrices (QR of a Gaussian with the sign fix of Mezzadri 2007)."""
    g = torch.randn(b, d, d, generator=gen, device=device)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


class TaskSampler:
    """Draws `Prompts` for a `TaskConfig`, on any device, from an explicit generator (or the global RNG).

    Example: `TaskSampler(TaskConfig(d=5, n=20)).sample(64, generator=g)` gives x [64, 21, 5], y [64, 21].
    """

    def __init__(self, config: TaskConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        c = config
        pool_gen = torch.Generator().manual_seed(c.pool_seed)
        mu = torch.as_tensor(c.w_mean, dtype=torch.float32)
        self.w_mean = (mu * torch.ones(c.d) if mu.ndim == 0 else mu).to(self.device)
        # fixed covariance, as a square root S with Σ = S Sᵀ
        self._fixed_sqrt: torch.Tensor | None = None
        if c.cov == "fixed":
            ev = torch.tensor(c.eigvals if c.eigvals is not None else (1.0,) * c.d, dtype=torch.float32)
            u = _haar(1, c.d, pool_gen, torch.device("cpu"))[0] if c.rotate else torch.eye(c.d)
            self._fixed_sqrt = (u * ev.sqrt()).to(self.device)
        # finite pool of tasks (and of covariances, for cov="random")
        self._pool: dict[str, torch.Tensor] | None = None
        if c.num_tasks is not None:
            self._pool = {k: v.to(self.device) for k, v in self._draw_tasks(c.num_tasks, pool_gen, "cpu").items()}

    def _draw_cov_sqrt(self, b: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
        c = self.config
        u = _haar(b, c.d, gen, device)
        if c.spectrum == "geomspace":
            ev = torch.logspace(0, -math.log10(c.kappa), c.d, device=device).expand(b, c.d)
        else:
            r = torch.rand(b, c.d, generator=gen, device=device)
            if c.spectrum == "loguniform":
                ev = torch.exp(-r * math.log(c.kappa))
            else:
                ev = 1.0 / c.kappa + r * (1.0 - 1.0 / c.kappa)
            ev[:, 0] = 1.0  # pin the extremes so every prompt has condition number exactly κ
            if c.d > 1:
                ev[:, 1] = 1.0 / c.kappa
        return u * ev.sqrt().unsqueeze(-2)

    def _draw_tasks(self, b: int, gen: torch.Generator | None, device: torch.device | str,
                    d_active: int | None = None) -> dict:
        c = self.config
        device = torch.device(device)
        out: dict[str, torch.Tensor] = {}
        if c.cov == "random":
            out["sqrt"] = self._draw_cov_sqrt(b, gen, device)
        if c.kind == "relu2nn":
            out["w1"] = torch.randn(b, c.d, c.hidden, generator=gen, device=device)
            out["w2"] = torch.randn(b, c.hidden, generator=gen, device=device)
            return out
        z = torch.randn(b, c.d, generator=gen, device=device) * c.w_scale
        if c.w_cov == "inverse_x":  # w = S⁻ᵀ z has covariance ψ² Σ⁻¹
            s = out.get("sqrt", self._fixed_sqrt)
            if s is not None:
                s = s.to(device).expand(b, c.d, c.d)
                z = torch.linalg.solve(s.transpose(-1, -2), z.unsqueeze(-1)).squeeze(-1)
        if c.kind == "sparse":  # keep `sparsity` random coordinates
            r = torch.rand(b, c.d, generator=gen, device=device)
            if d_active is not None:  # the support lies in the active coordinates (dtsip's valid_coords)
                r[:, d_active:] += 1.0
            keep = r.argsort(dim=-1)[:, : c.sparsity]
            mask = torch.zeros(b, c.d, device=device).scatter_(1, keep, 1.0)
            z = z * mask
        out["w"] = z + self.w_mean.to(device)
        return out

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        n: int | None = None,
        d_active: int | None = None,
    ) -> Prompts:
        """Draw `batch_size` prompts with n (default config.n) context points each.

        d_active < d zeroes x's coordinates beyond d_active (the dimension curriculum of Garg et al.); for
        kind="sparse" the `sparsity` nonzero coordinates of w are then drawn among the active ones (all of them
        when d_active < sparsity), as Garg et al.'s `valid_coords`, so a curriculum stage keeps E y² = sparsity.
        The generator must live on the sampler's device (or be None for the global RNG).
        """
        c = self.config
        n = c.n if n is None else n
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if d_active is not None and not 1 <= d_active <= c.d:
            raise ValueError(f"d_active must be in [1, d={c.d}], got {d_active}")
        dev, g = self.device, generator
        if self._pool is None:
            task = self._draw_tasks(batch_size, g, dev, d_active)
        else:
            idx = torch.randint(0, c.num_tasks, (batch_size,), generator=g, device=dev)
            task = {k: v[idx] for k, v in self._pool.items()}
        x = torch.randn(batch_size, n + 1, c.d, generator=g, device=dev)
        sqrt = task.get("sqrt", self._fixed_sqrt)
        if sqrt is not None:  # x = S z has covariance S Sᵀ = Σ
            x = x @ sqrt.transpose(-1, -2)
        if d_active is not None and d_active < c.d:
            x[..., d_active:] = 0.0
        if c.kind == "relu2nn":
            h = torch.relu(torch.einsum("bnd,bdh->bnh", x, task["w1"]))
            y = (h @ task["w2"].unsqueeze(-1)).squeeze(-1) * math.sqrt(2.0 / c.hidden)
            w = None
        else:
            w = task["w"]
            y = (x @ w.unsqueeze(-1)).squeeze(-1)
        if c.noise_var > 0:
            y = y + math.sqrt(c.noise_var) * torch.randn(y.shape, generator=g, device=dev)
        cov = None if sqrt is None else (sqrt @ sqrt.transpose(-1, -2)).expand(batch_size, c.d, c.d)
        return Prompts(x, y, w, cov)


def interleave(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Layout L1 (Garg et al.): tokens x_1, ỹ_1, x_2, ỹ_2, … with ỹ_i = (y_i, 0, …, 0); shape [B, 2N, d].

    The prediction for y_i is read at the position of x_i, which under a causal mask sees only earlier pairs.
    """
    _check_xy(x, y)
    ypad = torch.zeros_like(x)
    ypad[..., 0] = y
    return torch.stack((x, ypad), dim=2).flatten(1, 2)


def stack_columns(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Layout L2 (linear attention): Z with rows z_i = (x_i, y_i) and the query row (x_q, 0); shape [B, N, d+1].

    This is the (d+1)×(n+1) matrix of von Oswald / Ahn et al. stored tokens-as-rows; the query's label is zeroed
    here, so nothing downstream can read it.
    """
    _check_xy(x, y)
    z = torch.cat((x, y.unsqueeze(-1)), dim=-1)
    z[:, -1, -1] = 0.0
    return z


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 3 or y.ndim != 2 or x.shape[:2] != y.shape:
        raise ValueError(f"x must be [B, N, d] and y [B, N] with matching B, N; got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] < 1:
        raise ValueError("prompts need at least one row (the query)")
