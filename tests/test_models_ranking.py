"""LITE and MaxSim: shapes, permutation behaviour, MaxSim as a function LITE's scorer can learn, MRR, storage."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models.ranking import (  # noqa: E402
    LateInteractionRanker,
    LiteScorer,
    TokenEncoder,
    maxsim,
    mrr_at_k,
    storage_per_document,
)
from simulations.lm._spans import SpanTask  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_shapes_of_encoder_scorers_and_ranker():
    enc = TokenEncoder(50, 12, dim=8, n_embd=16, n_layer=1, seed=0)
    e = enc(torch.randint(0, 50, (3, 5, 12)))
    assert e.shape == (3, 5, 12, 8) and torch.allclose(e.norm(dim=-1), torch.ones(3, 5, 12), atol=1e-5)
    for kind in ("maxsim", "lite"):
        r = LateInteractionRanker(enc, kind, q_len=3, d_len=12)
        assert r(torch.randint(0, 50, (4, 3)), torch.randint(0, 50, (4, 16, 12))).shape == (4, 16)
    lite = LiteScorer(3, 12, row_hidden=7, row_out=5, col_hidden=4, col_out=2)
    s = _rand(4, 16, 3, 12)
    assert lite.rows(s).shape == (4, 16, 3, 5) and lite(s).shape == (4, 16)
    assert maxsim(_rand(4, 3, 8), _rand(4, 12, 8)).shape == (4,)


def test_maxsim_ignores_the_order_of_query_and_document_tokens():
    q, d = _rand(2, 4, 8, seed=1), _rand(2, 7, 8, seed=2)
    base = maxsim(q, d)
    assert torch.allclose(maxsim(q[:, torch.randperm(4)], d), base)
    assert torch.allclose(maxsim(q, d[:, torch.randperm(7)]), base)


def test_lite_rows_are_permutation_equivariant_but_its_score_sees_order():
    torch.manual_seed(0)
    lite = LiteScorer(4, 7, row_hidden=16, row_out=6, col_hidden=8, col_out=3)
    s = _rand(5, 4, 7, seed=3)
    rows = torch.randperm(4)
    # the row MLP is shared: permuting query tokens (rows of S) permutes its outputs the same way
    assert torch.allclose(lite.rows(s[:, rows]), lite.rows(s)[:, rows], atol=1e-6)
    # but the column MLP reads the query axis in order, and the row MLP the document axis: both orders matter
    assert not torch.allclose(lite(s[:, rows]), lite(s), atol=1e-4)
    assert not torch.allclose(lite(s[:, :, torch.randperm(7)]), lite(s), atol=1e-4)


def test_lite_scorer_learns_maxsim_on_random_similarity_matrices():
    """Sanity: MaxSim is (approximately) reachable by LITE's scorer: regress it on random S."""
    torch.manual_seed(0)
    lite = LiteScorer(2, 4, row_hidden=32, row_out=8, col_hidden=8, col_out=4)
    opt = torch.optim.Adam(lite.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        s = torch.rand(128, 2, 4, generator=gen) * 2 - 1
        loss = (lite(s) - s.amax(-1).sum(-1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = torch.rand(2000, 2, 4, generator=gen) * 2 - 1
    target = s.amax(-1).sum(-1)
    with torch.no_grad():
        err = float((lite(s) - target).pow(2).mean() / target.var())
    # the best linear function of S (what a scorer without the MLPs' non-linearity could do)
    X = torch.cat([s.flatten(1), torch.ones(2000, 1)], 1)
    coef = torch.linalg.lstsq(X, target[:, None]).solution
    linear = float((X @ coef - target[:, None]).pow(2).mean() / target.var())
    assert err < 0.1 and err < 0.3 * linear, (err, linear)


def test_mrr_breaks_ties_at_random_in_expectation():
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    assert mrr_at_k(scores[:1], 0, 10) == 1.0
    assert mrr_at_k(scores[1:2], 0, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(scores[2:], 0, 10) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert mrr_at_k(scores[1:2], 0, 2) == 0.0
    assert mrr_at_k(scores, 0, 10) == pytest.approx((1 + 1 / 3 + 11 / 18) / 3)


def test_storage_per_document():
    enc = TokenEncoder(10, 16, dim=8, n_layer=0)
    assert LateInteractionRanker(enc, "maxsim", 2, 16).storage_per_document() == 16 * 8 * 4
    pooled = LateInteractionRanker(enc, "lite", 2, 16, doc_vectors=4)
    assert pooled.storage_per_document(2) == 4 * 8 * 2
    assert pooled.doc_embeddings(torch.randint(0, 10, (3, 16))).shape == (3, 4, 8)
    assert storage_per_document(16, 8) == 512


def test_bad_shapes_and_settings_are_refused():
    enc = TokenEncoder(10, 8, dim=4, n_layer=0)
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="scorer"):
        LateInteractionRanker(enc, "bm25", 2, 8)
    with pytest.raises(ValueError, match="doc_vectors"):
        LateInteractionRanker(enc, "maxsim", 2, 8, doc_vectors=4)
    r = LateInteractionRanker(enc, "lite", 2, 8)
    with pytest.raises(ValueError, match="q_len"):
        r(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="d_len"):
        r(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 4, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="L_q"):
        LiteScorer(2, 8)(torch.zeros(1, 3, 8))


def test_span_task_labels_are_exact_and_heldout_queries_are_new():
    task = SpanTask(vocab_size=20, q_len=2, d_len=10)
    q, docs = task.batch(0, 0, 64, 15)
    assert q.shape == (64, 2) and docs.shape == (64, 16, 10)
    has = task.contains_span(docs.numpy(), q.numpy())
    assert has[:, 0].all() and not has[:, 1:].any()
    # hard negatives hold every query token, but never as the span
    hard = docs[:, 1:9].numpy()
    for i in range(64):
        assert all((hard[i] == t).any(-1).all() for t in q[i].tolist())
    qh, _ = task.batch(0, 1, 64, 3, heldout=True)
    train_spans = {tuple(r) for i in range(20) for r in task.batch(0, i, 64, 1)[0].tolist()}
    assert not train_spans & {tuple(r) for r in qh.tolist()}
    assert torch.equal(task.batch(5, 3, 8, 4)[1], task.batch(5, 3, 8, 4)[1])
    with pytest.raises(ValueError, match="d_len"):
        SpanTask(vocab_size=20, q_len=3, d_len=6)
