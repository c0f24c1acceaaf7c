"""Out-of-distribution prompts keep each prompt a consistent regression problem and move what they say they move."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models.icl import TaskConfig, TaskSampler  # noqa: E402
from simulations.icl import ood  # noqa: E402


def _batch(noise_var: float = 0.0, b: int = 64, n: int = 40):
    task = TaskConfig(d=4, n=n, noise_var=noise_var)
    return TaskSampler(task).sample(b, generator=torch.Generator().manual_seed(0))


def _label_noise(p):
    return p.y - (p.x @ p.w.unsqueeze(-1)).squeeze(-1)


def test_scale_x_scales_inputs_and_clean_labels_and_keeps_the_drawn_noise():
    p = _batch(noise_var=0.3)
    q = ood.scale_x(3.0)(p)
    torch.testing.assert_close(q.x, 3.0 * p.x)
    torch.testing.assert_close(_label_noise(q), _label_noise(p), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.w, p.w)


def test_skew_cov_draws_inputs_with_the_skewed_spectrum_and_relabels_them():
    p = _batch(b=8, n=20000)
    q = ood.skew_cov(2.0, seed=3)(p)
    want = ood.skewed_spectrum(4, 2.0)
    assert want.sum().item() == pytest.approx(4.0) and want[0] / want[-1] == pytest.approx(16.0)
    emp = torch.linalg.eigvalsh((q.x.transpose(1, 2) @ q.x / q.x.shape[1]).double())  # ascending
    assert torch.allclose(emp.mean(0), want.flip(0).double(), rtol=0.05)
    assert torch.allclose(torch.linalg.eigvalsh(q.cov[0].double()), want.flip(0).double(), atol=1e-5)
    torch.testing.assert_close(q.y, (q.x @ p.w.unsqueeze(-1)).squeeze(-1))
    with pytest.raises(ValueError, match="identity-covariance"):
        ood.skew_cov(1.0)(q)


def test_label_noise_adds_noise_of_the_given_variance_reproducibly():
    p = _batch(b=256)
    q1, q2 = ood.label_noise(0.5, seed=1)(p), ood.label_noise(0.5, seed=1)(p)
    torch.testing.assert_close(q1.y, q2.y)
    assert (q1.y - p.y).var().item() == pytest.approx(0.5, rel=0.05)
    torch.testing.assert_close(q1.x, p.x)


def test_bad_shift_parameters_name_themselves():
    with pytest.raises(ValueError, match="c must be > 0"):
        ood.scale_x(0.0)
    with pytest.raises(ValueError, match="power"):
        ood.skew_cov(-1.0)
    with pytest.raises(ValueError, match="var"):
        ood.label_noise(-0.1)
    relu = TaskSampler(TaskConfig(d=3, n=5, kind="relu2nn")).sample(2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="task vectors"):
        ood.scale_x(2.0)(relu)
