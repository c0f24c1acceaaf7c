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


def test_ltb_matches_gd_beta_while_linear_attention_keeps_a_gap_at_nonzero_task_mean(smoke):
    rows = {r["beta_star"]: r for r in smoke("icl-ltb")["metrics"]["rows"]}
    assert rows[0.0]["LTB"] <= 1.05 * rows[0.0]["GD-beta"] and rows[0.0]["LSA"] <= 1.05 * rows[0.0]["GD-beta"]
    assert rows[3.0]["LTB"] <= 1.05 * rows[3.0]["GD-beta"] < rows[3.0]["LSA"] / 1.2


def test_task_count_plateaus_near_the_infinite_task_optimum_by_1000_tasks(smoke):
    m = smoke("icl-task-count")["metrics"]["mse"]
    assert m["K=1000"] <= 1.10 * m["Gamma*"]
    assert m["K=10"] > m["K=1000"]  # a pool of 10 tasks is measurably worse
    assert m["ridge"] < m["Gamma*"] <= 2.0 * m["ridge"]


def test_kernel_feature_map_scales_with_context_and_the_prompt_mlp_does_not(smoke):
    e = smoke("icl-context-vs-task")["metrics"]["error"]
    assert e["feature map"]["0"]["32"] < 0.7 * e["feature map"]["0"]["8"]
    assert e["MLP"]["0"]["32"] >= 0.9 * e["MLP"]["0"]["8"]


def test_gpt2_smoke_runs_the_curriculum_and_least_squares_spikes_at_n_equal_d(smoke):
    result = smoke("icl-gpt2")
    noisy = result["metrics"]["noisy"]
    assert len(noisy["model"]) == result["config"]["n_points"]
    assert noisy["least squares"][10] > 5 * noisy["ridge"][10]


def test_gpt2_curriculum_ramps_dims_and_points_then_holds():
    from simulations.icl.gpt2 import Config, curriculum

    c = Config(steps=100, curriculum_frac=0.5)
    assert curriculum(0, c) == (5, 11)
    assert curriculum(50, c) == curriculum(99, c) == (20, 41)
    with pytest.raises(ValueError, match="curriculum_frac"):
        Config(curriculum_frac=1.5)


def test_pgd_beats_gd_and_both_models_are_probed_at_every_depth(smoke):
    result = smoke("icl-pgd")
    m = result["metrics"]["mse"]
    for t in (1, 2, 4):
        assert m[f"PGD L={t}"] < m[f"GD L={t}"]
    probe = result["metrics"]["probe"]
    assert len(probe["looped"]) == len(probe["multilayer"]) == result["config"]["probe_max"]


def test_task_diversity_error_rises_with_condition_number(smoke):
    rel = smoke("icl-task-diversity")["metrics"]["relative_error"]
    for cls in ("restricted", "unrestricted"):
        assert all(hi > lo for lo, hi in zip(rel[cls]["1.0"], rel[cls]["100.0"]))


def test_layers_to_eps_interpolates_in_log_log_and_extrapolates():
    from simulations.icl.task_diversity import layers_to

    assert layers_to([0.04, 0.01], [1, 2], 0.05) == 1.0
    assert abs(layers_to([0.2, 0.05, 0.0125], [1, 2, 4], 0.05) - 2.0) < 1e-9
    assert abs(layers_to([0.4, 0.2], [1, 2], 0.05) - 8.0) < 1e-9  # error halves per doubling
    assert layers_to([0.4, 0.5], [1, 2], 0.05) == 1e4  # no progress: capped
