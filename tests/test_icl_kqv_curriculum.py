"""The KQV-free block's query-only path, the raw kernel smoother, and the ICL training helper's curriculum."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models.icl import GPT2ICL, KernelSmoother, KQVFreeTransformer, TaskConfig  # noqa: E402
from models.icl import baselines as bl  # noqa: E402
from simulations.icl._common import Curriculum, Staged, curriculum_loss, train  # noqa: E402


@pytest.mark.parametrize("kernel", ["linear", "softmax", "hilbert"])
@pytest.mark.parametrize("n_blocks", [1, 2])
def test_query_only_compute_gives_the_same_outputs_and_gradients(kernel, n_blocks):
    torch.manual_seed(0)
    model = KQVFreeTransformer(4, 9, kernel=kernel, n_blocks=n_blocks, hidden=16)
    x, y = torch.randn(6, 9, 4), torch.randn(6, 9)
    fast = model(x, y)
    g_fast = torch.autograd.grad(fast.sum(), list(model.parameters()), allow_unused=True)
    model.query_only = False
    full = model(x, y)
    g_full = torch.autograd.grad(full.sum(), list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(fast, full)
    for a, b in zip(g_fast, g_full):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b)


def test_the_linear_kernel_smoother_is_one_gd_step_of_size_one_and_has_no_weights():
    torch.manual_seed(1)
    x, y = torch.randn(32, 17, 5), torch.randn(32, 17)
    smoother = KernelSmoother(5)
    torch.testing.assert_close(smoother(x, y), bl.gd(x[:, :-1], y[:, :-1], x[:, -1], steps=1, lr=1.0))
    assert not list(smoother.parameters())
    y2 = y.clone()
    y2[:, -1] += 100.0  # the query's label is never read
    assert torch.equal(smoother(x, y), smoother(x, y2))
    with pytest.raises(ValueError, match="kernel"):
        KernelSmoother(5, kernel="cosine")


def test_curriculum_steps_dims_and_points_like_garg_then_holds():
    c = Curriculum.garg(20, 41)
    assert c.at(0) == (5, 11) and c.at(1999) == (5, 11) and c.at(2000) == (6, 13)
    assert c.at(30_000) == c.at(10**6) == (20, 41)
    short = Curriculum.within(100, 5, 20, 11, 41)
    assert short.every == 6 and short.at(99) == (20, 41) and short.at(5) == (5, 11)
    with pytest.raises(ValueError, match="d_start"):
        Curriculum(0, 5, 3, 5)
    with pytest.raises(ValueError, match="every"):
        Curriculum(1, 5, 3, 5, every=0)


def test_curriculum_loss_is_normalized_by_active_dims_and_masks_extra_points():
    torch.manual_seed(2)
    model = GPT2ICL(6, 9, n_layer=1, n_embd=16, n_head=2)
    x, y = torch.randn(4, 9, 6), torch.randn(4, 9)
    from models.icl import Prompts

    batch = Staged(Prompts(x, y, None, None), dims=3, points=5)
    with torch.no_grad():
        pred = model(x, y)
    want = (pred[:, :5] - y[:, :5]).pow(2).mean() / 3
    torch.testing.assert_close(curriculum_loss(model, batch), want)


def test_train_runs_the_curriculum_through_the_trainer_and_checks_its_end():
    torch.manual_seed(3)
    task = TaskConfig(d=4, n=8)
    model = GPT2ICL(4, 9, n_layer=1, n_embd=16, n_head=2)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(int((args[0].abs().sum((0, 1)) > 0).sum())))
    curve = train(model, task, steps=6, batch_size=8, lr=1e-3, device="cpu", seed=0, points=6,
                  curriculum=Curriculum(2, 4, 5, 9, every=2))
    assert len(curve) == 6 and seen[0] == 2 and seen[-1] == 4  # active dims ramp 2 -> 4
    with pytest.raises(ValueError, match="curriculum must end"):
        train(model, task, steps=2, batch_size=8, lr=1e-3, device="cpu", seed=0,
              curriculum=Curriculum(2, 3, 5, 9))
