"""Federated-training building blocks (issue 11): rotation, distributed DP, accounting, sampling, server optimizers,
settings. No Flower or Ray: these are the pure pieces the apps are built from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulations.flower.training.ddp import (
    DDPParams,
    calibrate_ddp,
    clip_update,
    conditional_round,
    decode_sum,
    encode,
    rounded_l2_bound,
    subsampled_rdp,
)
from simulations.flower.training.rotation import fwht, padded_dim, rotate, unrotate
from simulations.flower.training.sampling import ClientSampler
from simulations.flower.training.server_opt import (
    DP2Server,
    FedAdamServer,
    FedAvgServer,
    make_server_optimizer,
)
from simulations.flower.training.settings import FLSettings


def test_rotation_round_trip_and_norm():
    x = np.random.default_rng(0).normal(size=1000)
    y = rotate(x, seed=7)
    assert y.size == padded_dim(1000) == 1024
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    assert np.abs(unrotate(y, 7, 1000) - x).max() < 1e-12
    assert np.abs(unrotate(y, 8, 1000) - x).max() > 0.1  # a different seed is a different rotation
    e = np.zeros(8)
    e[0] = 1.0
    assert np.allclose(fwht(e), np.full(8, 1 / math.sqrt(8)))  # spreads a spike evenly


def test_rotation_flattens_a_spike():
    x = np.zeros(4096)
    x[3] = 10.0
    assert np.abs(rotate(x, 1)).max() == pytest.approx(10.0 / 64)


def test_clip_bound_holds():
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.normal(size=50) * rng.uniform(0.01, 10)
        c, norm = clip_update(x, 1.5)
        assert np.linalg.norm(c) <= 1.5 * (1 + 1e-12)
        assert norm == pytest.approx(np.linalg.norm(x))
        if norm <= 1.5:
            assert np.array_equal(c, x)
    with pytest.raises(ValueError, match="clip"):
        clip_update(np.ones(3), 0.0)


def _params(dim=300, clients=6):
    return DDPParams(dim=dim, clip=1.0, scale=256.0, variance=400.0, min_survivors=3, max_clients=clients)


def test_distributed_sum_equals_sum_of_rounded_integer_updates():
    """The server's integer sum is exactly the clients' uploads (rounded update + share), and decoding recovers
    the clipped mean up to the noise and rounding."""
    p = _params()
    rng = np.random.default_rng(2)
    updates = [rng.normal(size=p.dim) * 0.05 for _ in range(6)]
    uploads = [encode(u, p, rotation_seed=11, noise_rng=100 + i) for i, u in enumerate(updates)]
    assert all(u.dtype == np.int64 and np.abs(u).max() <= p.entry_bound for u in uploads)
    total = np.sum(uploads, axis=0)
    # rebuilt step by step: the rounded integer update and the share, from the same (simulation) generator
    rounded, shares = [], []
    for i, u in enumerate(updates):
        g = np.random.default_rng(100 + i)
        z = conditional_round(rotate(clip_update(u, p.clip)[0], 11) * p.scale, p.l2_bound, g)
        assert np.linalg.norm(z) <= p.l2_bound
        rounded.append(z)
        shares.append(p.noise(secure=False).client_noise(z.size, rng=g))
    assert np.array_equal(np.sum(rounded, axis=0) + np.sum(shares, axis=0), total)
    # the exact SecAgg+ settings hold this sum
    ex = p.exact()
    assert ex.max_clients >= 6 and ex.clipping_range >= p.entry_bound
    decoded = decode_sum(total, p, 11)
    clipped = np.sum([clip_update(u, 1.0)[0] for u in updates], axis=0)
    err = decoded - clipped
    # noise std per coordinate sqrt(6/3 * 400)/256 plus rounding: the error is at that scale, not larger
    assert np.std(err) < 2 * math.sqrt(2 * 400) / 256 + 0.01


def test_rounded_norm_bound_holds_and_secure_noise_differs():
    p = _params()
    x = np.random.default_rng(3).normal(size=p.dim)
    a, b = encode(x, p, 5), encode(x, p, 5)  # the private default: OS-CSPRNG noise, never the same twice
    assert not np.array_equal(a, b)
    assert rounded_l2_bound(256.0, 512, math.exp(-0.5)) < 256.0 + math.sqrt(512)
    with pytest.raises(ValueError, match="length dim"):
        encode(np.ones(3), p, 5)
    with pytest.raises(ValueError, match="non-finite"):
        encode(np.full(p.dim, np.nan), p, 5)


def test_modulus_check_before_any_client_runs():
    with pytest.raises(ValueError, match="wrap the modulus"):
        DDPParams(dim=100, clip=1.0, scale=2.0**20, variance=1e12, min_survivors=2, max_clients=5000)


def test_subsampled_rdp_against_dp_accounting():
    """Zhu & Wang's general bound applied to the Gaussian's RDP is an upper bound on dp-accounting's tight
    subsampled-Gaussian epsilon (an independent computation), and not far above it."""
    from dpopt.accounting import epsilon
    from fedsketch.privacy import rdp_to_epsilon

    grid = tuple(range(2, 257))
    for sigma, q, steps in ((1.0, 0.1, 50), (2.0, 0.05, 200), (0.8, 0.2, 20)):
        rdp = np.array([a / (2 * sigma**2) for a in grid])
        ours = rdp_to_epsilon(grid, steps * subsampled_rdp(grid, rdp, q), 1e-5)
        ref = epsilon(sigma, q, steps, 1e-5)
        assert ref <= ours <= 1.5 * ref
    assert np.array_equal(subsampled_rdp(grid, np.ones(len(grid)), 1.0), np.ones(len(grid)))
    with pytest.raises(ValueError, match="consecutive"):
        subsampled_rdp((2, 4), np.ones(2), 0.5)


def test_calibrated_ddp_meets_its_target_and_costs_little_over_central():
    from dpopt.accounting import calibrate_noise

    p = calibrate_ddp(8.0, 1e-5, 50, 0.1, dim=7000, clip=1.0, scale=1024.0, min_survivors=10, max_clients=60)
    assert p.epsilon(50, 1e-5, 0.1) <= 8.0 + 1e-9
    assert p.epsilon(50, 1e-5) > 8.0  # against the server (no amplification) it is weaker, and says so
    sigma = calibrate_noise(8.0, 1e-5, 0.1, 50)
    assert sigma < p.noise_std < 1.25 * sigma  # the price of not trusting the server, in noise


def test_poisson_sampler_rate():
    s = ClientSampler(200, 0.1, seed=3)
    sizes = [len(s.cohort(t)) for t in range(1, 401)]
    assert np.mean(sizes) == pytest.approx(20, rel=0.05)
    assert np.var(sizes) == pytest.approx(200 * 0.1 * 0.9, rel=0.25)  # Binomial, not a fixed size
    hits = np.zeros(200)
    for t in range(1, 401):
        hits[s.cohort(t)] += 1
    assert hits.min() > 15 and hits.max() < 70  # every client near rate q (40 expected)
    assert np.array_equal(s.cohort(5), ClientSampler(200, 0.1, seed=3).cohort(5))  # resumable
    assert len(ClientSampler(50, 0.2, 0, kind="fixed").cohort(1)) == 10
    with pytest.raises(ValueError, match=r"q \(the sampling rate\)"):
        ClientSampler(10, 1.5, 0)
    with pytest.raises(ValueError, match="q"):
        ClientSampler(10, 0.0, 0)


def test_server_optimizers():
    x, d = np.zeros(4), np.array([1.0, -2.0, 0.5, 0.0])
    assert np.allclose(FedAvgServer(0.5).step(x, d, 1), 0.5 * d)
    adam = FedAdamServer(eta=0.1)
    y = adam.step(x, d, 1)
    m, v = 0.1 * d, 0.01 * d**2
    eta = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)  # Flower's FedAdam's bias-corrected step at round 1
    assert np.allclose(y, eta * m / (np.sqrt(v) + 1e-3))
    dp2 = DP2Server(4, lr=1.0, delay=2, beta=0.0, eps=1e-8)
    x1 = dp2.step(x, d, 1)
    x2 = dp2.step(x1, d, 2)  # end of phase A: v = (mean of the window)^2 = d^2
    assert np.allclose(x2, 2 * d)
    assert np.allclose(dp2.preconditioner, d**2)
    x3 = dp2.step(x2, d, 3)  # phase B: delta / (sqrt(v) + eps) = sign(d)
    assert np.allclose(x3 - x2, np.sign(d) * (np.abs(d) > 0), atol=1e-6)
    # state round trip: a restored optimizer continues identically
    fresh = DP2Server(4, lr=1.0, delay=2, beta=0.0, eps=1e-8)
    fresh.load_state_dict(dp2.state_dict())
    assert np.allclose(fresh.step(x3, d, 4), dp2.step(x3, d, 4))
    with pytest.raises(ValueError, match="server optimizer"):
        make_server_optimizer("sgd", 4, lr=1.0)


def test_settings_bad_input_is_clear():
    s = FLSettings.from_run_config({"rounds": "3", "cohort": 5, "dp": "central", "example-dp": "true", "bias": "true"})
    assert s.rounds == 3 and s.example_dp and s.dp == "central"
    with pytest.raises(ValueError, match="unknown run-config keys"):
        FLSettings.from_run_config({"roundz": 3})
    with pytest.raises(ValueError, match="cohort must be <= population"):
        FLSettings(population=10, cohort=11)
    with pytest.raises(ValueError, match="clip must be"):
        FLSettings(clip=0.0)
    with pytest.raises(ValueError, match=r"not in \(0, 1\]"):
        FLSettings(cohort=30).q(20)
    with pytest.raises(ValueError, match="fail_clients"):
        FLSettings(fail_clients="3-2")
    assert FLSettings(fail_clients="3:2, 4:1").failures() == {(3, 2), (4, 1)}
    assert FLSettings.from_run_config(FLSettings(rounds=4).to_run_config()) == FLSettings(rounds=4)


@pytest.mark.parametrize("workload", ["icl", "lm-shakespeare"])
def test_local_update_through_the_trainer_lowers_the_client_loss(workload):
    import torch

    from simulations.flower.training.local import local_update
    from simulations.flower.training.workloads import flat_params, make_workload, set_flat_params

    s = FLSettings(workload=workload, population=8, cohort=4, local_steps=30, local_lr=1e-2)
    w = make_workload(s)
    model = w.make_model()
    x0 = flat_params(model)
    batch = w.batches(3, 1)(0)
    with torch.no_grad():
        before = float(w.loss(model, batch))
    delta, metrics = local_update(w, s, x0, cid=3, server_round=1)
    assert delta.shape == x0.shape and np.linalg.norm(delta) > 0
    set_flat_params(model, x0 + delta)
    with torch.no_grad():
        after = float(w.loss(model, batch))
    assert after < before
    again, _ = local_update(w, s, x0, cid=3, server_round=1)
    assert np.allclose(again, delta, atol=1e-6)  # a pure function of (seed, round, client): resumable
    assert "val_loss" in w.evaluate(model)
    with pytest.raises(ValueError, match="client id"):
        w.batches(8, 1)


def _icl(**kw):
    base = dict(workload="icl", population=10, cohort=4, rounds=6, local_steps=5, local_lr=1e-2, batch_size=8,
                eval_every=3, seed=1)
    return FLSettings(**{**base, **kw})


def test_resume_equals_uninterrupted_with_dp2_server_and_central_dp(tmp_path):
    from simulations.flower.training.engine import FederatedRun

    s = _icl(dp="central", server_opt="dp2", dp2_delay=2, clip=0.5, ckpt_every=3, ckpt_dir=str(tmp_path))
    full = FederatedRun(s.replace(ckpt_every=0, ckpt_dir=""))
    full.run_inprocess()
    part = FederatedRun(s)
    part.run_inprocess(until=3)
    resumed = FederatedRun(s)
    assert resumed.resume(tmp_path / "server.ckpt") and resumed.round == 3
    resumed.run_inprocess()
    assert np.abs(resumed.x - full.x).max() < 1e-6
    assert resumed.privacy()["epsilon"] == pytest.approx(full.privacy()["epsilon"], rel=1e-12)
    assert 0 < full.privacy()["epsilon"] <= 8.0 + 1e-6 < full.privacy()["epsilon_no_amplification"]
    other = FederatedRun(_icl(icl_d=4, dp="central", server_opt="dp2", dp2_delay=2))
    with pytest.raises(ValueError, match="does not match"):
        other.resume(tmp_path / "server.ckpt")


def test_failing_client_is_counted_not_fatal():
    from simulations.flower.training.engine import FederatedRun

    probe = FederatedRun(_icl(rounds=2))
    victim = int(probe.sampler.cohort(1)[0])
    run = FederatedRun(_icl(rounds=2, fail_clients=f"{victim}:1"))
    hist = run.run_inprocess()
    assert len(hist[0]["failures"]) == 1 and "injected" in hist[0]["failures"][0]
    assert hist[0]["survived"] == hist[0]["sampled"] - 1 and "skipped" not in hist[0]


def test_distributed_round_runs_and_federated_icl_learns():
    from simulations.flower.training.engine import FederatedRun

    base = FederatedRun(_icl(rounds=1, eval_every=1))
    start = base.evaluate()["val_loss"]
    plain = FederatedRun(_icl(rounds=8, eval_every=8))
    assert plain.run_inprocess()[-1]["val_loss"] < 0.9 * start
    ddp = FederatedRun(_icl(rounds=2, cohort=6, dp="distributed", target_epsilon=50.0, min_survivors=0.3,
                            simulate_noise_seed=3, eval_every=1))
    hist = ddp.run_inprocess()
    assert all("skipped" not in h for h in hist if h["survived"] >= ddp.ddp.min_survivors)
    p = ddp.privacy()
    assert p["epsilon"] <= 50.0 + 1e-6 and p["epsilon_vs_server"] > p["epsilon"]


def test_fedadam_server_equals_flowers_fedadam_round_by_round():
    pytest.importorskip("flwr")
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdam

    from simulations.flower.training.server_opt import FedAdamServer

    rng = np.random.default_rng(0)
    x = rng.normal(size=7)
    flower = FedAdam(initial_parameters=ndarrays_to_parameters([x.copy()]), eta=0.1, eta_l=0.1, beta_1=0.9,
                     beta_2=0.99, tau=1e-3)
    ours, x_ours, x_flower = FedAdamServer(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3), x.copy(), x.copy()
    for t in range(1, 6):
        deltas = rng.normal(size=(3, 7))
        res = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([x_flower + d]), 5, {})) for d in deltas]
        x_flower = parameters_to_ndarrays(flower.aggregate_fit(t, res, [])[0])[0]
        x_ours = ours.step(x_ours, deltas.mean(axis=0), t)
        np.testing.assert_allclose(x_ours, x_flower, rtol=0, atol=1e-12)


@pytest.mark.gpu
def test_a_client_round_on_cuda_equals_the_cpu_round():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from simulations.flower.training.local import local_update
    from simulations.flower.training.workloads import flat_params, make_workload

    s = FLSettings(workload="lm-shakespeare", population=4, cohort=2.0, local_steps=5)
    w = make_workload(s)
    x = flat_params(w.make_model())
    cpu, _ = local_update(w, s, x, 1, 1)
    gpu, _ = local_update(w, s.replace(device="cuda"), x, 1, 1)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-5)
