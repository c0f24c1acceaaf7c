"""Row-sparse per-sample gradients (embedding tables, sparse features): the same clip and sum as the dense path,
which is Opacus' bit for bit."""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers import DPOptimizer

from dpopt._clip import SparseAwareDPOptimizer
from dpopt.dp2 import DP2Config, DP2RMSprop

ROWS, K, N = 12, 3, 10


def _per_sample(seed: int = 0):
    """Embedding-style per-sample gradients: example i touches row rows[i] of the (ROWS, K) table only."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, ROWS, (N,), generator=g)
    vals = torch.randn(N, K, generator=g) * 2
    dense = torch.zeros(N, ROWS, K)
    dense[torch.arange(N), rows] = vals
    sparse = torch.sparse_coo_tensor(torch.stack([torch.arange(N), rows]), vals, (N, ROWS, K))
    bias = torch.randn(N, K, generator=g)
    return dense, sparse, bias


def _steps(cls, grad_samples, steps: int = 4, **kw):
    table, bias = torch.nn.Parameter(torch.zeros(ROWS, K)), torch.nn.Parameter(torch.zeros(K))
    opt = cls(torch.optim.SGD([table, bias], lr=0.5), noise_multiplier=0.7, max_grad_norm=1.0,
              expected_batch_size=N, generator=torch.Generator().manual_seed(1), **kw)
    for t in range(steps):
        table.grad_sample, bias.grad_sample = grad_samples(t)
        opt.step()
        opt.zero_grad()
    return table.detach(), bias.detach()


def test_dense_path_equals_opacus_dp_optimizer_bit_for_bit():
    fn = lambda t: (_per_sample(t)[0], _per_sample(t)[2])  # noqa: E731
    for a, b in zip(_steps(DPOptimizer, fn), _steps(SparseAwareDPOptimizer, fn)):
        assert torch.equal(a, b)


def test_sparse_per_sample_gradients_give_the_dense_result():
    dense = lambda t: (_per_sample(t)[0], _per_sample(t)[2])  # noqa: E731
    sparse = lambda t: (_per_sample(t)[1], _per_sample(t)[2])  # noqa: E731
    for a, b in zip(_steps(DPOptimizer, dense), _steps(SparseAwareDPOptimizer, sparse)):
        assert torch.allclose(a, b, atol=1e-6)


def test_dp2_takes_sparse_per_sample_gradients_in_both_phases():
    cfg = DP2Config(delay=2, clip2=3.0, lr2=0.2, eps=1e-2)  # steps 0-1 phase A, 2-3 phase B
    dense = lambda t: (_per_sample(t)[0], _per_sample(t)[2])  # noqa: E731
    sparse = lambda t: (_per_sample(t)[1], _per_sample(t)[2])  # noqa: E731
    for a, b in zip(_steps(DP2RMSprop, dense, config=cfg), _steps(DP2RMSprop, sparse, config=cfg)):
        assert torch.allclose(a, b, atol=1e-5)


def test_accumulated_sparse_batches_are_concatenated_like_dense_ones():
    outs = []
    for kind in (0, 1):  # dense, then sparse (fresh tensors: Opacus marks processed ones)
        (d1, s1, b1), (d2, s2, b2) = _per_sample(0), _per_sample(1)
        t1, t2 = (d1, d2) if kind == 0 else (s1, s2)
        table, bias = torch.nn.Parameter(torch.zeros(ROWS, K)), torch.nn.Parameter(torch.zeros(K))
        opt = SparseAwareDPOptimizer(torch.optim.SGD([table, bias], lr=0.5), noise_multiplier=0.0,
                                     max_grad_norm=1.0, expected_batch_size=2 * N)
        table.grad_sample, bias.grad_sample = [t1, t2], [b1, b2]
        opt.step()
        outs.append(table.detach().clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_engine_no_op_mode_returns_the_sparse_aware_optimizer():
    from torch.utils.data import DataLoader, TensorDataset

    from dpopt import PrivacyEngine

    model = torch.nn.Linear(3, 1)
    _, opt, _ = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(TensorDataset(torch.zeros(8, 3)), batch_size=2), noise_multiplier=1.0,
        max_grad_norm=1.0, grad_sample_mode="no_op")
    assert type(opt) is SparseAwareDPOptimizer


@pytest.mark.parametrize("n", [0])
def test_empty_sparse_batch_adds_noise_only(n):
    table = torch.nn.Parameter(torch.zeros(ROWS, K))
    opt = SparseAwareDPOptimizer(torch.optim.SGD([table], lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0,
                                 expected_batch_size=N, generator=torch.Generator().manual_seed(0))
    table.grad_sample = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, K),
                                                (n, ROWS, K))
    opt.step()
    assert bool(torch.isfinite(table.detach()).all()) and float(table.detach().abs().sum()) > 0
