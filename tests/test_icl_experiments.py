"""The ICL experiments' smoke presets: each runs on the CPU, writes its record and plot, and its strict claims hold."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    """The smoke runs are tiny; one thread avoids oversubscribing the shared CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_one_layer_linear_attention_reaches_the_optimal_one_step_gd_error(smoke):
    result = smoke("icl-linear-attention")
    rows = {(r["d"], r["n"]): r for r in result["metrics"]["settings"]}
    assert abs(rows[(5, 20)]["optimum"] - 0.231) < 1e-3 and abs(rows[(20, 40)]["optimum"] - 0.344) < 1e-3
    assert abs(rows[(5, 20)]["trained"] - 0.231) <= 0.01
    assert all(r[f"{k}_ci"][0] < r[k] < r[f"{k}_ci"][1] for r in rows.values() for k in ("trained", "zero"))


def test_ltb_matches_gd_beta_while_linear_attention_keeps_a_gap_at_nonzero_task_mean(smoke):
    rows = {r["beta_star"]: r for r in smoke("icl-ltb")["metrics"]["rows"]}
    assert rows[0.0]["LTB"] <= 1.05 * rows[0.0]["GD-beta"] and rows[0.0]["LSA"] <= 1.05 * rows[0.0]["GD-beta"]
    assert rows[3.0]["LTB"] <= 1.05 * rows[3.0]["GD-beta"] < rows[3.0]["LSA"] / 1.2
    for r in rows.values():  # every error carries its bootstrap interval
        assert all(r[f"{k}_ci"][0] < r[k] < r[f"{k}_ci"][1] for k in ("LSA", "LTB", "GD-beta", "posterior mean"))


def test_task_count_plateaus_near_the_infinite_task_optimum_by_1000_tasks(smoke, tmp_path):
    result = smoke("icl-task-count")
    m = result["metrics"]["mse"]
    assert m["K=1000"] <= 1.10 * m["Gamma*"]
    assert m["K=10"] > m["K=1000"]  # a pool of 10 tasks is measurably worse
    assert m["ridge"] < m["Gamma*"] <= 2.0 * m["ridge"]
    # every error has a bootstrap interval that brackets it and is a few percent of it wide (20k prompts)
    ci = result["metrics"]["mse_ci"]
    assert set(ci) == set(m)
    for name, (lo, hi) in ci.items():
        assert lo < m[name] < hi and hi - lo < 0.2 * m[name], (name, lo, m[name], hi)
    assert result["metrics"]["by_K_ci"]["1000"] == ci["K=1000"]
    # every trained model reloads from weights.pt and reproduces its recorded error on the same held-out prompts
    from simulations.icl import task_count as exp
    from simulations.icl._bootstrap import per_prompt_errors
    from simulations.icl._common import model_predictor
    from simulations.icl.weights import load_models

    models = load_models(tmp_path / "icl-task-count")
    assert sorted(models) == sorted(f"K={k or 'inf'}" for k in result["config"]["task_counts"])
    cfg = exp.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["config"].items()})
    again = per_prompt_errors({k: model_predictor(v) for k, v in models.items()}, exp.task_config(cfg, 0),
                              prompts=cfg.eval_prompts, device="cpu", seed=cfg.seed + 1000)
    for name in models:
        assert float(again[name].mean()) == pytest.approx(m[name], rel=1e-6), name


def test_kernel_feature_map_scales_with_context_and_the_prompt_mlp_does_not(smoke):
    result = smoke("icl-context-vs-task")
    m, (n0, n1) = result["metrics"], [str(n) for n in result["config"]["contexts"]]
    e = m["error"]
    assert e["feature map"][n1] < 0.7 * e["feature map"][n0]  # the raw smoother, no training
    assert m["feature_map_params"] == 0
    assert e["MLP"]["0"][n0] <= 0.9 * m["zero"][n0]  # the MLP learned something at the short context ...
    assert e["MLP"]["0"][n1] >= 0.9 * e["MLP"]["0"][n0]  # ... and a longer context does not help it
    assert e["both"]["0"][n1] < 0.7 * e["both"]["0"][n0]
    ci = m["error_ci"]
    assert all(ci[name][k][n][0] < e[name][k][n] < ci[name][k][n][1] for name in ("MLP", "both")
               for k in e[name] for n in (n0, n1))
    assert all(ci["feature map"][n][0] < e["feature map"][n] < ci["feature map"][n][1] for n in (n0, n1))


def test_gpt2_smoke_runs_the_curriculum_and_least_squares_spikes_at_n_equal_d(smoke, tmp_path):
    result = smoke("icl-gpt2")
    d = result["config"]["d"]
    noisy = result["metrics"]["noisy"]
    assert len(noisy["model"]) == result["config"]["n_points"]
    assert noisy["least squares"][d] > 5 * noisy["ridge"][d]
    # the training loss is error / active dims, ~1 for the zero predictor at every curriculum stage; unnormalized
    # it followed the curriculum's own E y² = active dims (2 -> 3 here; 5 -> 10 in the old smoke)
    curve = [p["loss"] for p in result["metrics"]["curve"]]
    assert 0.5 < curve[0] < 2.0 and max(curve) < 2.0
    # every per-position error has a bootstrap interval around it, and every test-time shift was evaluated
    m = result["metrics"]
    for key in ("noiseless", "noisy"):
        assert all(lo <= e <= hi and hi > lo for e, (lo, hi) in zip(m[key]["model"], m[f"{key}_ci"]["model"]))
    assert len(m["ood"]) == len(result["config"]["ood_scales"]) + 2
    scaled = [v["model"] for k, v in m["ood"].items() if "scaled" in k]
    assert all(len(c) == len(noisy["model"]) for c in scaled) and scaled[0] != scaled[1]
    # the saved model reloads and reproduces the recorded noiseless error on the same prompts
    from simulations.icl import gpt2 as exp
    from simulations.icl.weights import load_models

    model = load_models(tmp_path / "icl-gpt2")["model"]
    cfg = exp.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["config"].items()})
    again = exp._errors(model, cfg, 0.0, cfg.noise_var)["model"].mean(-1) / cfg.d
    assert again.tolist() == pytest.approx(m["noiseless"]["model"], rel=1e-6)


def test_gpt2_curriculum_follows_garg_stages_then_holds():
    from simulations.icl._common import Curriculum
    from simulations.icl.gpt2 import Config

    c = Config(d=20, n_points=41, d_start=5, points_start=11, steps=300, curriculum_frac=0.5).curriculum()
    # 15 stages (+1 dim, +2 points) by step 150
    assert c.at(0) == (5, 11) and c.at(10) == (6, 13)
    assert c.at(150) == c.at(299) == (20, 41)
    paper = Curriculum.within(int(0.06 * 500_000), 5, 20, 11, 41)  # what Config.paper() builds (it needs CUDA)
    assert paper == Curriculum.garg(20, 41, every=2000)  # Garg et al.'s schedule
    with pytest.raises(ValueError, match="curriculum_frac"):
        Config(curriculum_frac=1.5)
    with pytest.raises(ValueError, match="compile_mode"):
        Config(compile_mode="fast")


def test_pgd_beats_gd_and_both_models_are_probed_at_every_depth(smoke):
    result = smoke("icl-pgd")
    m = result["metrics"]["mse"]
    for t in (1, 2, 4):
        assert m[f"PGD L={t}"] < m[f"GD L={t}"]
    probe = result["metrics"]["probe"]
    assert len(probe["looped"]) == len(probe["multilayer"]) == result["config"]["probe_max"]
    for name, ci in result["metrics"]["mse_ci"].items():  # every reported error carries its bootstrap interval
        assert ci[0] <= m[name] <= ci[1], name
    kinds = {c["name"]: c["kind"] for c in result["claims"]}
    assert all(kind == "sanity" for name, kind in kinds.items() if "tuned PGD / tuned GD" in name)


def test_task_diversity_error_rises_with_condition_number(smoke):
    result = smoke("icl-task-diversity")
    rel, ci = result["metrics"]["relative_error"], result["metrics"]["relative_error_ci"]
    for cls in ("restricted", "unrestricted"):
        assert all(hi > lo for lo, hi in zip(rel[cls]["1.0"], rel[cls]["100.0"]))
        assert all(a <= e <= b for e, (a, b) in zip(rel[cls]["100.0"], ci[cls]["100.0"]))
    # moving the top eigenvalue outside the training range hurts the (unrestricted) multilayer model more than
    # the looped one; the shift is outside the training range and its distance is reported
    s = result["metrics"]["shift"]
    grow = {k: s["shifted"][k] / s["train"][k] for k in s["train"]}
    assert grow["multilayer, unrestricted"] > max(grow["looped"], grow["looped, unrestricted"])
    assert grow["looped"] > 1.0
    assert result["metrics"]["shift_distance"]["frobenius_W2_upper"] == result["config"]["shift_scale"] - 1


def test_shift_top_eigenvalue_moves_only_the_top_eigenvalue_and_keeps_labels_consistent():
    from models.icl import TaskConfig, TaskSampler
    from simulations.icl.task_diversity import shift_distances, shift_top_eigenvalue

    task = TaskConfig(d=4, n=4000, cov="random", kappa=10.0)
    batch = TaskSampler(task).sample(3, generator=torch.Generator().manual_seed(0))
    out = shift_top_eigenvalue(batch, 3.0)
    before, after = torch.linalg.eigvalsh(batch.cov.double()), torch.linalg.eigvalsh(out.cov.double())
    assert torch.allclose(after[:, :-1], before[:, :-1], atol=1e-5)
    assert torch.allclose(after[:, -1], 3.0 * before[:, -1], atol=1e-5)
    assert torch.allclose(out.y, (out.x @ batch.w.unsqueeze(-1)).squeeze(-1), atol=1e-4)
    emp = out.x.transpose(1, 2) @ out.x / out.x.shape[1]  # the shifted x really have covariance Σ'
    assert torch.linalg.eigvalsh(emp.double())[:, -1].sub(3.0).abs().max() < 0.4
    assert shift_distances(4, 3.0) == {"spectral_W1": 0.5, "frobenius_W2_upper": 2.0}
    with pytest.raises(ValueError, match="shift_scale"):
        from simulations.icl.task_diversity import Config

        Config(shift_scale=0.5)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_prompts():
    from simulations.icl._bootstrap import bootstrap_ci, ratio_ci

    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(400, generator=g).pow(2), torch.randn(40_000, generator=g).pow(2)
    lo, hi = bootstrap_ci(small, resamples=500)
    assert lo < float(small.mean()) < hi and lo < 1.0 < hi  # E χ²₁ = 1
    lo2, hi2 = bootstrap_ci(large, resamples=500)
    assert hi2 - lo2 < 0.3 * (hi - lo)  # width ∝ 1/√N: 10× narrower for 100× the prompts
    rows = bootstrap_ci(torch.stack([small, 2 * small]), resamples=500)
    assert abs(rows[1][0] - 2 * rows[0][0]) < 1e-9  # paired resamples: the same draws for every row
    r_lo, r_hi = ratio_ci(2 * small, small, resamples=200)
    assert abs(r_lo - 2.0) < 1e-9 and abs(r_hi - 2.0) < 1e-9
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci(small, resamples=1)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(small, level=1.5)


def test_layers_to_eps_interpolates_in_log_log_and_extrapolates():
    from simulations.icl.task_diversity import layers_to

    assert layers_to([0.04, 0.01], [1, 2], 0.05) == 1.0
    assert abs(layers_to([0.2, 0.05, 0.0125], [1, 2, 4], 0.05) - 2.0) < 1e-9
    assert abs(layers_to([0.4, 0.2], [1, 2], 0.05) - 8.0) < 1e-9  # error halves per doubling
    assert layers_to([0.4, 0.5], [1, 2], 0.05) == 1e4  # no progress: capped


def test_every_icl_experiment_has_a_valid_paper_preset_for_a_gpu(monkeypatch):
    """`--set scale=paper` builds each experiment's GPU config; CUDA is faked, so only the fields are checked."""
    from simulations import registry
    from simulations.icl import EXPERIMENTS
    from simulations.registry import _preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in EXPERIMENTS:
        exp = registry.get(name)
        paper, full = _preset(exp, "paper"), exp.config()
        assert paper.device == "cuda", name
        assert paper != full, name
