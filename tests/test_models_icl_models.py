"""ICL models: shapes, the query label never leaks, linear attention = preconditioned GD, a tiny fit, bad input."""

from __future__ import annotations

import pytest
import torch

from models.icl import (
    GPT2ICL,
    LTB,
    MLPICL,
    KQVFreeTransformer,
    LinearAttention,
    LoopedTransformer,
    TaskConfig,
    TaskSampler,
)
from models.icl import baselines as bl
from models.nn import Block, CausalSelfAttention, RMSNorm, count_params
from models.train import TrainConfig, Trainer

D, N = 4, 9  # N rows per prompt: 8 context pairs + the query


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "gpt2": GPT2ICL(D, N, n_layer=2, n_embd=32, n_head=4),
        "gpt2_no_mlp": GPT2ICL(D, N, n_layer=2, n_embd=32, n_head=4, mlp=False),
        "lsa_restricted": LinearAttention(D, n_layers=2, param="restricted", init_std=0.3),
        "lsa_sparse": LinearAttention(D, n_layers=2, n_heads=2, param="sparse", init_std=0.3),
        "lsa_full": LinearAttention(D, n_layers=2, param="full", init_std=0.3),
        "ltb": LTB(D, init_std=0.3),
        "looped_linear": LoopedTransformer(D, 3, param="full", init_std=0.3),
        "looped_gpt2": LoopedTransformer(D, 3, "gpt2", window=2, n_points=N, n_embd=32, n_heads=4),
        "kqv_free_both": KQVFreeTransformer(D, N, kernel="softmax", n_blocks=2, hidden=32),
        "kqv_free_linear": KQVFreeTransformer(D, None, kernel="linear", normalize=False, hidden=32, inputs="features"),
        "kqv_free_hilbert": KQVFreeTransformer(D, N, kernel="hilbert", hidden=32, inputs="both"),
        "mlp": MLPICL(D, N, hidden=32),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_shapes_and_the_query_label_never_leaks(name):
    model = _models()[name].eval()
    x, y = torch.randn(5, N, D), torch.randn(5, N)
    y2 = y.clone()
    y2[:, -1] += 100.0  # perturb only the query's label y_q
    with torch.no_grad():
        out, out2 = model(x, y), model(x, y2)
    assert out.shape == ((5, N) if model.predicts_all_positions else (5,))
    assert torch.equal(out, out2)
    if model.predicts_all_positions:  # causality: prediction k reads only pairs before row k
        y3 = y.clone()
        y3[:, 4] += 100.0
        with torch.no_grad():
            out3 = model(x, y3)
        assert torch.equal(out3[:, :5], out[:, :5]) and not torch.equal(out3[:, 5:], out[:, 5:])


def test_a_linear_attention_layer_with_hand_set_pq_is_one_preconditioned_gd_step():
    torch.manual_seed(1)
    gamma = torch.randn(D, D) * 0.2 + 0.7 * torch.eye(D)
    x, y = torch.randn(16, N, D), torch.randn(16, N)
    for param in ("restricted", "full"):
        m = LinearAttention(D, param=param, init_std=0.0)
        with torch.no_grad():
            if param == "restricted":
                m.A[0, 0] = -gamma  # Q = [[−Γ, 0], [0, 0]], P = [[0, 0], [0, 1]]
            else:
                m.Q[0, 0].zero_()
                m.Q[0, 0, :D, :D] = -gamma
                m.P[0, 0].zero_()
                m.P[0, 0, D, D] = 1.0
            pred = m(x, y)
        gd = bl.gd(x[:, :-1], y[:, :-1], x[:, -1], steps=1, lr=1.0, precond=gamma)
        torch.testing.assert_close(pred, gd, rtol=1e-5, atol=1e-5)


def test_l_layers_and_l_loops_are_l_steps_of_preconditioned_gd():
    torch.manual_seed(2)
    gammas = [torch.eye(D) * s + 0.05 * torch.randn(D, D) for s in (0.6, 0.4, 0.3)]
    x, y = torch.randn(16, N, D), torch.randn(16, N)
    xc, yc, xq = x[:, :-1], y[:, :-1], x[:, -1]
    deep = LinearAttention(D, n_layers=3, init_std=0.0)
    looped = LoopedTransformer(D, 3, init_std=0.0)
    with torch.no_grad():
        for i, g in enumerate(gammas):
            deep.A[i, 0] = -g
        looped.block.A[0, 0] = -gammas[0]
        w = torch.zeros(16, D)
        w_shared = torch.zeros(16, D)
        per_loop = []
        for g in gammas:
            w = bl.gd_w(xc, yc, 1, 1.0, g, w0=w)
            w_shared = bl.gd_w(xc, yc, 1, 1.0, gammas[0], w0=w_shared)
            per_loop.append(bl.predict(w_shared, xq))
        torch.testing.assert_close(deep(x, y), bl.predict(w, xq), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(looped(x, y, return_all=True), torch.stack(per_loop), rtol=1e-5, atol=1e-5)
        assert deep(x, y, depth=5).shape == (16,)  # past its depth: the last layer is repeated


def test_one_layer_lsa_trained_with_the_trainer_reaches_the_closed_form_optimum():
    d, n = 5, 20
    sampler = TaskSampler(TaskConfig(d=d, n=n))

    def batch(step: int):
        p = sampler.sample(512, generator=torch.Generator().manual_seed(step))
        return p.x, p.y

    def loss(model, b):
        x, y = b
        return (model(x, y) - y[:, -1]).pow(2).mean()

    model = LinearAttention(d, param="restricted", seed=0)
    cfg = TrainConfig(steps=300, lr=0.05, warmup_steps=10, log_every=0, progress=False, grad_clip=0)
    Trainer(model, batch, loss, cfg).fit()
    p = sampler.sample(8000, generator=torch.Generator().manual_seed(10**6))
    with torch.no_grad():
        err = (model(p.x, p.y) - p.y[:, -1]).pow(2).mean().item() / d
    assert err == pytest.approx(bl.lsa_optimal_risk(d, n) / d, rel=0.05)  # 0.231
    torch.testing.assert_close(-model.A[0, 0], bl.lsa_optimal_gamma(torch.eye(d), n), atol=0.08, rtol=0)


def test_gpt2icl_matches_nanogpt_scale_and_flops():
    m = GPT2ICL(20, 41)
    assert 9.0e6 < count_params(m) < 9.8e6  # the "standard" 12×256 model, ~9.5M as in Garg et al.
    assert m.flops_per_token() > 6 * count_params(m)


def test_building_blocks():
    x = torch.randn(2, 7, 16)
    att = CausalSelfAttention(16, 4)
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(att(x)[:, :-1], att(x2)[:, :-1])  # causal
    assert Block(16, 4, norm="rmsnorm")(x).shape == x.shape
    r = RMSNorm(16)(x)
    torch.testing.assert_close(r.pow(2).mean(-1), torch.ones(2, 7), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="n_head"):
        CausalSelfAttention(16, 5)
    with pytest.raises(ValueError, match="norm"):
        Block(16, 4, norm="batchnorm")


@pytest.mark.parametrize(
    "make, match",
    [(lambda: LinearAttention(3, param="diag"), "param"), (lambda: LinearAttention(0), "d"),
     (lambda: LinearAttention(3, n_layers=0), "n_layers"), (lambda: LTB(3, mlp_width=0), "mlp_width"),
     (lambda: LoopedTransformer(3, 0), "n_loops"), (lambda: LoopedTransformer(3, 4, window=5), "window"),
     (lambda: LoopedTransformer(3, 4, kind="rnn"), "kind"), (lambda: GPT2ICL(3, 0), "n_points"),
     (lambda: KQVFreeTransformer(3, 5, kernel="cosine"), "kernel"),
     (lambda: KQVFreeTransformer(3, None, inputs="both"), "n_points"), (lambda: MLPICL(3, 0), "n_points")],
)
def test_bad_model_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_prompt_shapes_raise_value_error():
    with pytest.raises(ValueError, match="d=4"):
        LinearAttention(4)(torch.randn(2, 5, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="n_points"):
        GPT2ICL(4, 5, n_layer=1, n_embd=8, n_head=2)(torch.randn(2, 6, 4), torch.randn(2, 6))
    with pytest.raises(ValueError, match="n_points"):
        MLPICL(4, 5)(torch.randn(2, 6, 4), torch.randn(2, 6))
    with pytest.raises(ValueError, match="depth"):
        LinearAttention(4)(torch.randn(2, 5, 4), torch.randn(2, 5), depth=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_models_run_on_cuda_under_bf16_autocast():
    x, y = torch.randn(4, N, D, device="cuda"), torch.randn(4, N, device="cuda")
    for name, model in _models().items():
        model = model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x, y)
        out.float().sum().backward()
        assert torch.isfinite(out.float()).all(), name
