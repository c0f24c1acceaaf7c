"""DP² experiments: the training core (exact per-sample gradients of the linear/bilinear models, the Poisson
batch source, DP training through dpopt + models.train.Trainer), the tuning protocol, and each smoke preset."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from simulations.dp import _train as dt
from simulations.dp._tuning import tune_and_evaluate

warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook", "ignore:Ignoring drop_last")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sparse_data(n=30, d=12, seed=0):
    g = np.random.default_rng(seed)
    x = sp.random(n, d, density=0.3, random_state=g, dtype=np.float32).tocsr()
    y = (g.random(n) < 0.5).astype(np.float32)
    return x, y


def test_logistic_per_sample_gradients_equal_opacus_hooks():
    x, y = _sparse_data()
    rows = dt.SparseRows(x)
    model = dt.SparseLogistic(12)
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1, 1, 12))
        model.bias.fill_(0.2)
    idx = np.arange(0, 30, 2)
    dt.logistic_loss(model, (rows.rows(idx), torch.as_tensor(y[idx]))).backward()
    ref = GradSampleModule(nn.Linear(12, 1))
    with torch.no_grad():
        ref._module.weight.copy_(model.weight.detach()[None])
        ref._module.bias.copy_(model.bias.detach())
    xb = torch.as_tensor(x[idx].toarray())
    nn.functional.binary_cross_entropy_with_logits(ref(xb).squeeze(1), torch.as_tensor(y[idx])).backward()
    assert torch.allclose(model.weight.grad_sample.to_dense(), ref._module.weight.grad_sample[:, 0], atol=1e-6)
    assert torch.allclose(model.bias.grad_sample, ref._module.bias.grad_sample, atol=1e-6)


def test_matrix_factorization_per_sample_gradients_match_autograd():
    model = dt.MatrixFactorization(3, 4, dim=5, init_scale=0.5, seed=0)
    u, i, r = torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 3, 2]), torch.tensor([4.0, 3.5, 1.0, 5.0])
    dt.squared_loss(model, (u, i, r)).backward()
    gu, gv = model.U.grad_sample.to_dense(), model.V.grad_sample.to_dense()
    for k in range(4):
        loss = ((model.U[u[k]] * model.V[i[k]]).sum() - r[k]) ** 2
        au, av = torch.autograd.grad(loss, [model.U, model.V])
        assert torch.allclose(gu[k], au, atol=1e-5) and torch.allclose(gv[k], av, atol=1e-5)


@pytest.mark.parametrize("method,hp", [
    ("dp-sgd", {"lr": 2.0, "clip": 0.3}),
    ("dp2-rmsprop", {"lr": 0.5, "clip": 0.3, "lr2": 0.1, "clip2": 1.0, "eps": 1e-3, "delay": 2}),
])
def test_a_run_through_engine_and_trainer_equals_dense_opacus_steps(method, hp):
    """σ = 0, the same Poisson batches: our sparse no_op path and a dense Opacus hooks model take the same steps."""
    from dpopt import DP2Config
    from dpopt.dp2 import DP2RMSprop
    from models.train import TrainConfig, Trainer

    x, y = _sparse_data(n=40)
    rows, yt = dt.SparseRows(x), torch.as_tensor(y)
    model = dt.SparseLogistic(12)
    module, opt, engine = dt.build(method, model, hp, sigma=0.0, n=40, batch_size=8, seed=3)
    batches = dt.poisson_batches(40, engine.sample_rate, 5, lambda idx: (rows.rows(idx), yt[idx]))
    Trainer(module, batches, dt.logistic_loss, TrainConfig(steps=6, grad_clip=0, schedule="constant", log_every=0,
                                                           progress=False), optimizer=opt).fit()
    ref = GradSampleModule(nn.Linear(12, 1))
    with torch.no_grad():
        ref._module.weight.zero_()
        ref._module.bias.zero_()
    sgd = torch.optim.SGD(ref.parameters(), lr=hp["lr"])
    kw = dict(noise_multiplier=0.0, max_grad_norm=hp["clip"], expected_batch_size=8)
    ropt = DPOptimizer(sgd, **kw) if method == "dp-sgd" else DP2RMSprop(
        sgd, config=DP2Config(delay=2, clip2=1.0, lr2=0.1, eps=1e-3), **kw)
    for t in range(6):
        idx = dt.poisson_indices(40, engine.sample_rate, 5, t)
        ropt.zero_grad()
        xb = torch.as_tensor(x[idx].toarray())
        nn.functional.binary_cross_entropy_with_logits(ref(xb).squeeze(1), yt[idx]).backward()
        ropt.step()
    assert engine.accountant.history[0][2] == 6 and engine.sample_rate == 1 / 5
    assert torch.allclose(model.weight.detach(), ref._module.weight.detach()[0], atol=1e-5)
    assert torch.allclose(model.bias.detach(), ref._module.bias.detach(), atol=1e-5)


def test_poisson_indices_are_a_pure_function_of_the_step_with_the_right_rate():
    a = dt.poisson_indices(10_000, 0.01, 1, 7)
    assert np.array_equal(a, dt.poisson_indices(10_000, 0.01, 1, 7))
    assert not np.array_equal(a, dt.poisson_indices(10_000, 0.01, 1, 8))
    sizes = [len(dt.poisson_indices(10_000, 0.01, 1, t)) for t in range(400)]
    assert abs(np.mean(sizes) - 100) < 2 and abs(np.var(sizes) - 99) < 25  # Binomial(10⁴, 0.01)
    counts = np.bincount(np.concatenate([dt.poisson_indices(50, 0.2, 2, t) for t in range(4000)]), minlength=50)
    assert counts.min() > 700 and counts.max() < 900  # each example in ≈ 20% of batches (800 ± 3σ)


def test_build_rejects_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        dt.build("dp-lion", dt.SparseLogistic(3), {"lr": 1.0, "clip": 1.0}, sigma=1.0, n=8, batch_size=2, seed=0)


def test_diverging_run_stops_and_is_padded_with_worst_scores():
    x, y = _sparse_data(n=40)
    rows, yt = dt.SparseRows(x * 1e3), torch.as_tensor(y)
    model = dt.SparseLogistic(12)

    def ev():
        return {"train_loss": float(model.weight.detach().abs().sum()), "train_acc": 0.5}

    res = dt.train("dp-sgd", model, {"lr": 1e30, "clip": 1e30}, loss_fn=dt.logistic_loss,
                   make_batch=lambda idx: (rows.rows(idx), yt[idx]), evaluate=ev, n=40, batch_size=8, steps=40,
                   evals=4, sigma=1e3, seed=0)
    assert res.diverged and res.steps[-1] == 40 and res.final() == {"train_loss": float("inf"), "train_acc": 0.0}


def test_tuning_gives_every_method_the_same_budget():
    seen = []

    def fn(job):
        m, hp, seed = job
        seen.append((m, seed))
        return {"final": {"acc": -abs(hp["lr"] - 2.0)}}

    res = tune_and_evaluate(fn, {"dp-sgd": [{"lr": a} for a in (1.0, 2.0, 4.0)],
                                 "dp2-rmsprop": [{"lr": a} for a in (0.5, 2.0, 3.0)]},
                            tune_seed=0, seeds=(5, 6), select="acc", mode="max", workers=1)
    assert res["best"] == {"dp-sgd": {"lr": 2.0}, "dp2-rmsprop": {"lr": 2.0}}
    assert sum(1 for m, s in seen if s == 0 and m == "dp-sgd") == sum(1 for m, s in seen if s == 0 and m != "dp-sgd")
    assert sorted(s for m, s in seen if m == "dp2-rmsprop" and s) == [5, 6]


def test_configs_reject_unequal_budgets_and_bad_sizes():
    import dataclasses

    from simulations.dp import delay, imdb, movielens, sparse

    with pytest.raises(ValueError, match="equal tuning budget"):
        dataclasses.replace(imdb.Config.smoke(), dp2_lr2s=(0.1, 0.3, 1.0))
    with pytest.raises(ValueError, match="tune_at"):
        dataclasses.replace(imdb.Config.smoke(), tune_at=(7.0,))
    with pytest.raises(ValueError, match="n must be"):
        dataclasses.replace(sparse.Config.smoke(), n=10)
    with pytest.raises(ValueError, match="methods must include 'dp-sgd'"):
        dataclasses.replace(movielens.Config.smoke(), methods=("dp2-rmsprop",))
    with pytest.raises(ValueError, match="imdb_delays"):
        dataclasses.replace(delay.Config.smoke(), imdb_delays=(5, 1, 20))
    with pytest.raises(ValueError, match="sparse_lr2s"):
        dataclasses.replace(delay.Config.smoke(), sparse_lr2s=(0.1,))


def test_steps_to_reach_reads_the_first_evaluation_at_or_below_target():
    from simulations.dp.sparse import steps_to_reach

    curve = {"steps": [0, 10, 20, 30], "train_loss": [0.7, 0.6, 0.5, 0.55]}
    assert steps_to_reach(curve, 0.52) == 20.0 and steps_to_reach(curve, 0.4) is None


def test_dp2_imdb_smoke(smoke):
    r = smoke("dp2-imdb")
    m = r["metrics"]
    assert m["dim"] == 2000 and m["n_train"] == 5000 and 0.8 < m["nonprivate"]["test_acc"] < 0.9
    rep, tuned = m["per_sigma"]["1.0"]["replication"], m["per_sigma"]["1.0"]["tuned"]
    assert set(rep["mean_test_acc"]) == set(tuned["mean_test_acc"]) == {"dp-sgd", "dp-rmsprop", "dp2-rmsprop"}
    assert rep["mean_test_acc"]["dp2-rmsprop"] > 0.7


def test_dp2_sparse_smoke(smoke):
    r = smoke("dp2-sparse")
    assert r["metrics"]["optimum_loss"] < r["metrics"]["dp_sgd_best_final_loss"] < 0.69


def test_dp2_movielens_smoke(smoke):
    r = smoke("dp2-movielens")
    # DP training learns the rating scale: every method ends far below the all-zero prediction's MSE (~13)
    assert max(r["metrics"]["mean_test_mse"].values()) < 8.0


def test_dp2_delay_smoke(smoke):
    r = smoke("dp2-delay")
    assert set(r["metrics"]["tasks"]) == {"imdb", "sparse"}
    assert set(r["metrics"]["tasks"]["sparse"]["per_variant"]) == {"dp2-rmsprop", "dp2-delayed"}


def test_transformer_per_sample_gradients_from_opacus_hooks_are_exact():
    """hooks mode on the models.nn transformer (Linear/LayerNorm/Embedding around SDPA): each example's grad
    sample equals its own gradient, computed one example at a time."""
    from simulations.dp.transformer import TextClassifier

    torch.manual_seed(0)
    model = TextClassifier(vocab=20, max_len=6, n_embd=8, n_head=2, n_layer=1, mlp_ratio=2.0)
    ids = torch.randint(1, 20, (4, 6))
    ids[1, 4:] = 0  # padding is masked out of the pooled representation
    y = torch.tensor([0, 1, 1, 0])
    import copy

    plain = copy.deepcopy(model)  # a hook-free copy for the reference gradients
    gsm = GradSampleModule(model)
    nn.functional.cross_entropy(gsm(ids), y).backward()
    samples = [p.grad_sample.detach().clone() for p in model.parameters()]
    assert len(samples) == 18  # every parameter got per-sample gradients (no unsupported layer)
    for i in range(4):
        loss = nn.functional.cross_entropy(plain(ids[i:i + 1]), y[i:i + 1])
        for g, r in zip(samples, torch.autograd.grad(loss, list(plain.parameters()))):
            assert torch.allclose(g[i], r, atol=1e-5)


_RAW = pytest.mark.skipif(
    not __import__("simulations.datasets.imdb", fromlist=["RAW_DIR"]).RAW_DIR.joinpath("imdb_train.jsonl.gz").is_file(),
    reason="raw IMDB reviews (../shared/data/imdb-full) absent")


@_RAW
def test_dp2_imdb_transformer_smoke(smoke):
    r = smoke("dp2-imdb-transformer")
    m = r["metrics"]
    assert set(m["test_acc"]) == {"dp-sgd", "dp-adam", "dp2-rmsprop"} and m["grad_sample_mode"] == "hooks"
    assert m["epsilon"]["rdp"] <= 3.0 + 1e-3


def test_transformer_experiment_without_raw_data_is_a_clear_error(tmp_path):
    from simulations import registry

    with pytest.raises(FileNotFoundError, match="raw IMDB file not found"):
        registry.run("dp2-imdb-transformer", smoke=True, overrides={"data_dir": str(tmp_path)}, out_dir=tmp_path)
