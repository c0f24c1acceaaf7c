"""Example-level DP on federated clients: Opacus through dpopt inside the Trainer, each client's epsilon in the
run's privacy report, secure noise, and the settings it needs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from simulations.flower.training.settings import FLSettings

pytest.importorskip("opacus")


def test_batched_positions_give_the_same_function_and_exact_opacus_per_sample_gradients():
    from opacus import GradSampleModule

    from models.lm import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=30, block_size=12, n_layer=2, n_head=2, n_embd=16, bias=True)
    idx, y = torch.randint(0, 30, (4, 12), generator=torch.Generator().manual_seed(0)), torch.randint(0, 30, (4, 12))
    plain, batched = GPT(cfg, seed=0), GPT(cfg, seed=0)
    batched.per_sample_positions = True
    torch.testing.assert_close(batched(idx), plain(idx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(batched, batch_first=True, loss_reduction="mean")
        nn_loss = torch.nn.functional.cross_entropy
        nn_loss(gsm(idx).reshape(-1, 30), y.reshape(-1)).backward()
    for i in range(4):  # Opacus' "mean": grad_sample[i] is the gradient of example i's own (token-mean) loss
        ref = GPT(cfg, seed=0)
        nn_loss(ref(idx[i:i + 1]).reshape(-1, 30), y[i:i + 1].reshape(-1)).backward()
        for (name, p), q in zip(batched.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad_sample[i], q.grad, rtol=1e-4, atol=1e-6, msg=name)


def _settings(**kw) -> FLSettings:
    base = dict(example_dp=True, bias=True, population=6, cohort=3.0, rounds=2, local_steps=3, batch_size=8,
                example_noise=1.2, example_clip=0.5, eval_every=0, min_train_nodes=1, simulate_noise_seed=5)
    return FLSettings(**{**base, **kw})


@pytest.mark.parametrize("optimizer", ["dpsgd", "dp2"])
def test_each_clients_epsilon_is_composed_over_the_rounds_it_trained(optimizer):
    from dpopt.accounting import epsilon
    from simulations.flower.training.engine import FederatedRun

    run = FederatedRun(_settings(example_optimizer=optimizer, example_dp2_delay=2))
    run.run_inprocess()
    rep = run.privacy()["example_level"]
    trained: dict[int, int] = {}
    for t in (1, 2):
        for c in run.sampler.cohort(t):
            trained[int(c)] = trained.get(int(c), 0) + 1
    assert rep["clients"] == len(trained) > 0 and "server included" in rep["adversary"]
    for cid, rounds in trained.items():
        n = len(run.workload.windows(cid))
        q = 1.0 / -(-n // 8)  # Opacus' q for a loader of ceil(n / batch) batches
        assert rep["per_client_epsilon"][str(cid)] == pytest.approx(epsilon(1.2, q, 3 * rounds, 1e-5), rel=1e-9)
    assert rep["max_epsilon"] == max(rep["per_client_epsilon"].values())
    assert all(np.isfinite(r["train_loss"]) for r in run.history)
    again = FederatedRun(_settings(example_optimizer=optimizer, example_dp2_delay=2))
    again.load_state_dict(run.state_dict())  # the accounting survives a checkpoint
    assert again.privacy()["example_level"] == rep


def test_example_noise_is_secret_unless_simulated_and_clipping_bounds_the_step():
    from simulations.flower.training.local import local_update
    from simulations.flower.training.workloads import flat_params, make_workload

    s = _settings(local_steps=1, local_lr=0.1, example_noise=1e-6, example_clip=0.01)
    w = make_workload(s)
    x = flat_params(w.make_model())
    a, _ = local_update(w, s, x, 2, 1)
    b, _ = local_update(w, s, x, 2, 1)
    np.testing.assert_array_equal(a, b)  # simulate_noise_seed: repeatable (and not private)
    # one DP-SGD step at lr 0.1: every per-example gradient is clipped to 0.01 and the sum is divided by the
    # expected batch, so the step is at most lr * clip * (batch / expected batch) < 0.1 * 0.01 * 3 (the
    # unclipped gradient would move the weights ~100x further)
    assert 0 < np.linalg.norm(a) <= 0.1 * 0.01 * 3
    s2 = s.replace(simulate_noise_seed=-1, example_noise=1.0)
    c, _ = local_update(w, s2, x, 2, 1)
    d, _ = local_update(w, s2, x, 2, 1)
    assert np.abs(c - d).max() > 0  # keyed from the OS CSPRNG: a fresh draw every time


def test_example_dp_settings_are_checked():
    with pytest.raises(ValueError, match="bias=true"):
        FLSettings(example_dp=True)
    with pytest.raises(ValueError, match="lm-shakespeare"):
        FLSettings(example_dp=True, bias=True, workload="icl")
    with pytest.raises(ValueError, match="example_noise"):
        FLSettings(example_dp=True, bias=True, example_noise=0.0)
    with pytest.raises(ValueError, match="example_dp2_delay"):
        FLSettings(example_dp2_delay=0)
