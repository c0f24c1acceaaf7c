"""icl-looped-gpt2: the loop curriculum (schedule, window loss, training calls) and the experiment's smoke run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loop_schedule_grows_from_t_by_two_every_stage_then_holds_at_b():
    from simulations.icl._loops import LoopCurriculum

    c = LoopCurriculum.yang(b=20, window=15)  # Yang et al.'s linear regression: 15, 17, 19, 20
    assert [c.at(s) for s in (0, 499, 500, 1000, 1499, 1500, 10**6)] == [15, 15, 17, 19, 19, 20, 20]
    assert c.at(-5) == 15
    w = LoopCurriculum.within(300, 3, 8, 3)  # 3 stages (3 -> 5 -> 7 -> 8) spread over 300 steps
    assert w.every == 100 and w.at(299) == 7 and w.at(300) == 8


@pytest.mark.parametrize("kwargs, field", [
    ({"start": 0, "end": 4, "window": 2}, "start"),
    ({"start": 5, "end": 4, "window": 2}, "start"),
    ({"start": 2, "end": 4, "window": 5}, "window"),
    ({"start": 2, "end": 4, "window": 0}, "window"),
    ({"start": 2, "end": 4, "window": 2, "inc": 0}, "inc"),
    ({"start": 2, "end": 4, "window": 2, "every": 0}, "every"),
])
def test_loop_schedule_rejects_bad_fields(kwargs, field):
    from simulations.icl._loops import LoopCurriculum

    with pytest.raises(ValueError, match=field):
        LoopCurriculum(**kwargs)


class _Recorder(torch.nn.Module):
    """A stand-in looped model: returns fixed per-loop predictions and records the loop counts it was run for."""

    predicts_all_positions = True

    def __init__(self, window: int, preds: torch.Tensor | None = None) -> None:
        super().__init__()
        self.window, self.preds, self.calls = window, preds, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, y, n_loops=None, return_all=False):
        self.calls.append(n_loops)
        if self.preds is not None:
            return self.preds
        return torch.zeros(min(self.window, n_loops), *y.shape) + self.w


def test_window_loss_equals_the_hand_computed_mean_over_loops_rows_and_active_dims():
    from models.icl.tasks import Prompts
    from simulations.icl._common import Staged
    from simulations.icl._loops import LoopCurriculum

    y = torch.tensor([[1.0, 2.0, 3.0]])  # one prompt, 3 rows
    preds = torch.tensor([[[0.0, 0.0, 9.0]], [[1.0, 4.0, 9.0]]])  # 2 loops; row 3 is outside the points curriculum
    model = _Recorder(2, preds)
    batch = Staged(Prompts(torch.zeros(1, 3, 4), y, None, None), dims=2, points=2)
    loss = LoopCurriculum(2, 6, 2).loss(model, batch, step=0)
    # loop 1: (1 + 4) / 2 rows; loop 2: (0 + 4) / 2 rows; mean over loops 2.25; / 2 active dims
    assert loss.item() == pytest.approx(((1 + 4) / 2 + (0 + 4) / 2) / 2 / 2)
    assert model.calls == [2]


def test_training_with_the_loop_curriculum_runs_the_model_for_growing_loops():
    from models.icl import TaskConfig
    from simulations.icl._common import Curriculum, train
    from simulations.icl._loops import LoopCurriculum

    model = _Recorder(2)
    loops = LoopCurriculum(2, 6, 2, inc=2, every=4)
    train(model, TaskConfig(d=3, n=6), steps=12, batch_size=4, lr=1e-3, device="cpu", seed=0,
          curriculum=Curriculum(2, 3, 4, 7, every=4), loops=loops)
    assert model.calls == [2] * 4 + [4] * 4 + [6] * 4
    with pytest.raises(ValueError, match="window"):
        train(_Recorder(3), TaskConfig(d=3, n=6), steps=1, batch_size=4, lr=1e-3, device="cpu", seed=0, loops=loops)


def test_looped_gpt2_smoke_runs_and_the_parameter_fraction_is_about_one_over_l(smoke, tmp_path):
    result = smoke("icl-looped-gpt2")
    cfg, m = result["config"], result["metrics"]
    assert len(m["loops_error"]) == cfg["test_loops_factor"] * cfg["b"]
    for k in ("multilayer", "looped", "least squares"):
        assert len(m["error"][k]) == cfg["n_points"]
        assert all(lo <= e <= hi for e, (lo, hi) in zip(m["error"][k], m["error_ci"][k]))
    assert all(lo <= e <= hi for e, (lo, hi) in zip(m["loops_error"], m["loops_error_ci"]))
    assert m["params"]["looped"] < m["params"]["multilayer"]
    kinds = {c["name"]: c["kind"] for c in result["claims"]}
    assert sorted(kinds.values()) == ["observation"] * 3 + ["sanity"]  # smoke is below _MIN_STEPS
    # the looped model reloads from weights.pt and runs for more loops than trained
    from simulations.icl.weights import load_models

    models = load_models(tmp_path / "icl-looped-gpt2")
    assert set(models) == {"multilayer", "looped"}
    x, y = torch.randn(2, cfg["n_points"], cfg["d"]), torch.randn(2, cfg["n_points"])
    assert models["looped"](x, y, n_loops=3 * cfg["b"]).shape == (2, cfg["n_points"])
