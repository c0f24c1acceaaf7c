"""models.lm growth: grow (stacking, MIDAS, other candidates), the PROP-α GrowthSchedule through the Trainer's
hook, LAG selection, and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.lm import (
    GPT,
    GPTConfig,
    GrowthHook,
    GrowthSchedule,
    LagSelect,
    RandomWindows,
    evaluate_loss,
    grow,
    lag_select,
    lm_loss,
    plan_growth,
    prop_steps,
)
from models.lm.lag import branch
from models.train import TrainConfig, Trainer, lr_factor

CFG = GPTConfig(vocab_size=32, block_size=16, n_layer=4, n_head=2, n_embd=16, bias=False)
ALL = ("top", "middle", "bottom", "interleave", "random", "identity", "copy:1")
TOKENS = np.random.default_rng(0).integers(0, 32, 4000).astype(np.uint16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x() -> torch.Tensor:
    return torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(1))


def _through(model: GPT, blocks) -> torch.Tensor:
    """The model's logits with its embeddings and head but the given block list."""
    x = _x()
    h = model.wte(x) + model.wpe.weight[:x.shape[1]]
    for b in blocks:
        h = b(h)
    return model.lm_head(model.ln_f(h))


@pytest.mark.parametrize("n, strategy, b, sources", [
    (6, "top", 2, (0, 1, 2, 3, 4, 5, 4, 5)),
    (6, "middle", 2, (0, 1, 2, 3, 2, 3, 4, 5)),     # MIDAS: the block centred on the depth midpoint, copied after it
    (5, "middle", 2, (0, 1, 2, 1, 2, 3, 4)),        # odd n - b: floor((n - b) / 2)
    (6, "bottom", 3, (0, 1, 2, 0, 1, 2, 3, 4, 5)),
    (4, "interleave", 4, (0, 0, 1, 1, 2, 2, 3, 3)),
    (4, "copy:2", 1, (0, 1, 2, 2, 3)),
    (3, "random", 2, (0, 1, 2, None, None)),
])
def test_plans_put_each_copy_right_after_its_source(n, strategy, b, sources):
    plan = plan_growth(n, strategy, b)
    assert plan.sources == sources
    assert plan.new_layer == n + b
    assert sum(plan.copied) == b  # exactly b new layers, the n old ones kept


@pytest.mark.parametrize("strategy", ALL)
def test_grow_keeps_every_layer_s_function_depth_and_parameter_count(strategy):
    old = GPT(CFG, seed=0)
    before = copy.deepcopy(old.state_dict())
    new = grow(old, strategy, 2, seed=3)
    plan = plan_growth(4, strategy, 2)
    per_block = sum(p.numel() for p in old.blocks[0].parameters())
    assert len(new.blocks) == new.config.n_layer == 6 and len(old.blocks) == old.config.n_layer == 4
    assert new.num_params() == old.num_params() + 2 * per_block
    assert new.wte is old.wte and new.wpe is old.wpe and new.ln_f is old.ln_f
    assert new.lm_head.weight is new.wte.weight  # the tie survives
    for i, (src, fresh) in enumerate(zip(plan.sources, plan.copied)):
        if not fresh:
            assert new.blocks[i] is old.blocks[src]  # kept: the same module
    with torch.no_grad():
        if strategy == "identity":  # function-preserving: same logits as the old model
            torch.testing.assert_close(new(_x()), old(_x()), rtol=0, atol=0)
        elif strategy != "random":  # every new layer computes its source layer's function
            torch.testing.assert_close(new(_x()), _through(old, [old.blocks[s] for s in plan.sources]))
    for k, v in old.state_dict().items():  # growing left the old model as it was
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ("top", "middle", "bottom", "interleave"))
def test_copies_are_new_tensors_equal_to_their_source(strategy):
    old = GPT(CFG, seed=0)
    new = grow(old, strategy, 2)
    plan = plan_growth(4, strategy, 2)
    for i, (src, fresh) in enumerate(zip(plan.sources, plan.copied)):
        if fresh:
            for (name, p), q in zip(new.blocks[i].named_parameters(), old.blocks[src].parameters()):
                assert p.data_ptr() != q.data_ptr(), name
                torch.testing.assert_close(p, q, rtol=0, atol=0)
            with torch.no_grad():
                new.blocks[i].attn.qkv.weight.add_(1.0)
            assert not torch.equal(new.blocks[i].attn.qkv.weight, old.blocks[src].attn.qkv.weight)


def test_fresh_blocks_are_seeded_and_moments_map_names_copied_parameters_only():
    old = GPT(CFG, seed=0)
    a, b = grow(old, "random", 2, seed=5), grow(old, "random", 2, seed=5)
    torch.testing.assert_close(a.blocks[4].mlp.fc.weight, b.blocks[4].mlp.fc.weight, rtol=0, atol=0)
    assert not torch.equal(a.blocks[4].mlp.fc.weight, a.blocks[5].mlp.fc.weight)
    plan = plan_growth(4, "middle", 2)
    m = plan.moments_from(plan.apply(old))
    assert m["blocks.3.attn.qkv.weight"] == "blocks.1.attn.qkv.weight"
    assert m["blocks.4.mlp.proj.weight"] == "blocks.2.mlp.proj.weight"
    assert {k.split(".")[1] for k in m} == {"3", "4"}
    assert plan_growth(4, "random", 2).moments_from(old) == {}


@pytest.mark.parametrize("n, strategy, b, match", [
    (4, "sideways", 1, "strategy must be one of"),
    (4, "copy:x", 1, "copy:S"),
    (4, "top", 5, "block_size=5 does not fit a 4-layer model"),
    (4, "middle", 5, "block_size=5 does not fit"),
    (4, "interleave", 6, "block_size=6 does not fit"),
    (4, "copy:3", 2, r"block start must be in \[0, 2\]"),
    (4, "top", 0, "block_size must be an integer >= 1"),
])
def test_a_strategy_or_block_size_that_does_not_fit_is_refused(n, strategy, b, match):
    with pytest.raises(ValueError, match=match):
        grow(GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=n, n_head=2, n_embd=16)), strategy, b)


def test_grow_refuses_what_is_not_a_gpt_and_a_plan_for_another_depth():
    with pytest.raises(ValueError, match="models.lm.GPT"):
        grow(torch.nn.Linear(2, 2), "top", 1)
    with pytest.raises(ValueError, match="grows a 2-layer model"):
        plan_growth(2, "top", 1).apply(GPT(CFG))


def test_prop_alpha_stage_steps_sum_to_the_total_and_scale_as_i_to_the_alpha():
    assert prop_steps(100, 4, 1.0) == (10, 20, 30, 40)
    assert prop_steps(100, 4, 0.0) == (25, 25, 25, 25)
    t = prop_steps(1000, 3, 2.0)  # 1 : 4 : 9
    assert sum(t) == 1000 and t == (71, 286, 643)
    for steps, k, a in [(7, 7, 3.0), (101, 6, 1.0), (5000, 8, 0.5), (10, 4, 4.0)]:
        t = prop_steps(steps, k, a)
        assert sum(t) == steps and min(t) >= 1 and list(t) == sorted(t)
    s = GrowthSchedule(steps=100, stages=4, block_size=3)
    assert s.boundaries() == (10, 30, 60) and s.final_depth == 12
    assert [s.depth_at(i) for i in (0, 9, 10, 29, 30, 59, 60, 99)] == [3, 3, 6, 6, 9, 9, 12, 12]


def test_flops_fraction_of_prop1_is_2k_plus_1_over_3k_when_layers_dominate():
    for k in (3, 4, 6):
        s = GrowthSchedule(steps=2100, stages=k, block_size=2)  # 2100: every T_i whole
        assert s.flops_fraction(lambda n: float(n)) == pytest.approx((2 * k + 1) / (3 * k))
    s2 = GrowthSchedule(steps=600, stages=6, block_size=2, alpha=2.0)
    assert s2.flops_fraction(lambda n: float(n)) == pytest.approx(3 * 7 / (2 * 13), rel=1e-3)


@pytest.mark.parametrize("kw, match", [
    ({"steps": 3, "stages": 4}, "steps must be an integer >= stages=4"),
    ({"stages": 0}, "stages must be an integer >= 1"),
    ({"block_size": 0}, "block_size must be an integer >= 1"),
    ({"alpha": -1.0}, "alpha must be a finite number >= 0"),
    ({"strategy": "diagonal"}, "strategy must be one of"),
])
def test_bad_schedule_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        GrowthSchedule(**{"steps": 100, "stages": 4, "block_size": 2, **kw})


def _trainer(steps: int, hooks=(), state=None, lr: float = 1e-2) -> Trainer:
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=4, log_every=0, progress=False)
    src = RandomWindows(TOKENS, 16, 4, seed=0)
    return Trainer(GPT(GPTConfig(**{**CFG.__dict__, "n_layer": 2}), seed=0), src, lm_loss, cfg, hooks=hooks,
                   state=state, tokens_per_batch=64, flops_per_token=lambda m: m.flops_per_token(16))


def test_schedule_grows_at_its_boundaries_with_one_unbroken_lr_schedule():
    sched = GrowthSchedule(steps=30, stages=3, block_size=2, strategy="middle")  # (5, 10, 15): grow at 5, 15
    seen: list[tuple[int, int, float]] = []
    hook = GrowthHook(sched)
    tr = _trainer(30, hooks=[hook, lambda t: seen.append((t.step, len(t.model.blocks),
                                                          t.optimizer.param_groups[0]["lr"]))])
    tr.fit()
    assert [e["step"] for e in hook.events] == [5, 15] and len(tr.model.blocks) == 6
    assert [d for _, d, _ in seen] == [2] * 5 + [4] * 10 + [6] * 15
    for step, _, lr in seen:  # the one warmup + cosine over 30 steps, never restarted at a growth
        assert lr == pytest.approx(1e-2 * lr_factor(step, tr.config), rel=1e-12)
    assert hook.events[0]["moments"] == {"kept": 15, "copied": 12, "fresh": 0}  # 2 copied blocks x 6 tensors


@pytest.mark.parametrize("carry", (True, False))
def test_copied_layers_carry_or_reset_their_source_s_adam_moments(carry):
    sched = GrowthSchedule(steps=20, stages=2, block_size=2, strategy="top", carry_moments=carry)
    tr = _trainer(20)
    tr.fit(until=sched.boundaries()[0])
    src_m = tr.optimizer.state[tr.model.blocks[1].mlp.fc.weight]["exp_avg"].clone()
    GrowthHook(sched)(tr)
    state = tr.optimizer.state
    new = tr.model.blocks[3].mlp.fc.weight  # the copy of layer 1
    if carry:
        torch.testing.assert_close(state[new]["exp_avg"], src_m, rtol=0, atol=0)
    else:
        assert new not in state or not state[new]
    torch.testing.assert_close(state[tr.model.blocks[1].mlp.fc.weight]["exp_avg"], src_m, rtol=0, atol=0)


def test_growth_hook_refuses_a_model_of_the_wrong_depth_and_a_lag_longer_than_a_stage():
    sched = GrowthSchedule(steps=30, stages=3, block_size=2)
    tr = _trainer(30)
    tr.step = 20  # the schedule expects 6 layers here; the model has 2
    with pytest.raises(ValueError, match="expects 6 layers"):
        GrowthHook(sched)(tr)
    with pytest.raises(ValueError, match="lag=10 must be shorter than the shortest grown stage"):
        GrowthHook(sched, lag=LagSelect(("top",), 10, lambda m: 0.0))


def test_resumed_growing_run_matches_the_uninterrupted_one(tmp_path):
    sched = GrowthSchedule(steps=24, stages=3, block_size=2, strategy="middle")
    a_hook = GrowthHook(sched)
    a = _trainer(24, hooks=[a_hook], state={"growth": a_hook})
    a.fit()
    h1 = GrowthHook(sched)
    b = _trainer(24, hooks=[h1], state={"growth": h1})
    b.config = TrainConfig(**{**b.config.__dict__, "ckpt_path": str(tmp_path / "c.pt")})
    b.fit(until=10)  # stages (4, 8, 12): stage 2, 4 layers, at step 10
    depth = len(b.model.blocks)
    h2 = GrowthHook(sched)
    c = _trainer(24, hooks=[h2], state={"growth": h2})
    assert depth == 4
    c.replace_model(grow(c.model, "random", depth - 2))  # rebuilt at the checkpoint's depth (weights: loaded)
    assert c.load_checkpoint(tmp_path / "c.pt")
    c.fit()
    assert h2.events == a_hook.events
    for (k, v), w in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)


def _val(model) -> float:
    return evaluate_loss(model, TOKENS[:800], 16, 16)


def test_lag_keeps_the_candidate_with_the_lowest_loss_after_the_lag():
    tr = _trainer(40)
    tr.fit(until=10)
    start, base = copy.deepcopy(tr.state_dict()), copy.deepcopy(tr.model)
    cands = ("top", "bottom", "random", "identity")
    choice = lag_select(tr, LagSelect(cands, 4, _val), block_size=2)
    assert set(choice.scores) == set(cands)
    assert choice.chosen == min(choice.scores, key=choice.scores.get)
    assert tr.step == 14 and len(tr.model.blocks) == 4
    # the trainer now holds exactly that candidate after its lag
    ref = _trainer(40)
    branch(ref, start, base, choice.chosen, 2)
    for _ in range(4):
        ref.train_step()
    for v, w in zip(ref.model.state_dict().values(), tr.model.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=0, atol=0)
    assert _val(tr.model) == pytest.approx(choice.scores[choice.chosen], rel=1e-6)
    assert choice.overhead_flops == pytest.approx(3 * 4 * 64 * tr.model.flops_per_token(16))


def test_lag_with_a_score_that_prefers_one_candidate_picks_it():
    tr = _trainer(40)
    tr.fit(until=10)
    fav = lambda m: 0.0 if torch.count_nonzero(m.blocks[3].attn.proj.weight) == 0 else 1.0  # identity at lag 0
    assert lag_select(tr, LagSelect(("top", "identity", "random"), 0, fav), block_size=2).chosen == "identity"
    with pytest.raises(ValueError, match="runs past the end of training"):
        lag_select(tr, LagSelect(("top",), 40, fav), block_size=2)


def test_lag_select_config_is_checked():
    with pytest.raises(ValueError, match="distinct"):
        LagSelect(("top", "top"), 1, _val)
    with pytest.raises(ValueError, match="lag must be an integer >= 0"):
        LagSelect(("top",), -1, _val)
    with pytest.raises(ValueError, match="strategy must be one of"):
        LagSelect(("up",), 1, _val)
