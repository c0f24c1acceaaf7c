"""models.lm.primitives: the reasoning-primitive generators give the right answers and shapes, exact match scores
a perfect copier 1 and a constant model 0, the fine-tune leaves the original alone, bad input is refused."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from models.lm import GPT, CharTokenizer, GPTConfig
from models.lm import primitives as P

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,:;?.\n"
TOK = CharTokenizer(ALPHABET)
WORDS = P._WORDS


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _resolve(prompt: str) -> str:
    """Evaluate an assignment prompt the slow way: read the statements, follow references to a value."""
    body, query = prompt.split("; ")
    env = dict(s.split(":") for s in body.split(", "))
    v = env[query.rstrip("?")]
    hops = 0
    while v.islower():
        v, hops = env[v], hops + 1
    return v, hops


@pytest.mark.parametrize("depth", (0, 1, 2))
def test_assignment_answers_follow_exactly_depth_hops(depth):
    for ex in P.sample(f"assign{depth}", 300, seed=4):
        value, hops = _resolve(ex.prompt)
        assert ex.answer == value and hops == depth
        names = [s.split(":")[0] for s in ex.prompt.split("; ")[0].split(", ")]
        assert len(names) == len(set(names)) == depth + 3 + min(depth, 1)  # each variable assigned once


def test_induction_and_arithmetic_answers():
    for ex in P.sample("induction", 200, seed=0):
        s, prefix = ex.prompt.split(" ")
        assert len(set(s)) == 10 and s.startswith(prefix) and ex.answer == s[len(prefix):len(prefix) + 3]
    seen = {"train": set(), "eval": set()}
    for split in seen:
        for ex in P.sample("arithmetic", 400, seed=0, split=split):
            a, b = re.match(r"(\w+) plus (\w+) is $", ex.prompt).groups()
            assert ex.answer == WORDS[WORDS.index(a) + WORDS.index(b)]
            seen[split].add((a, b))
    assert not seen["train"] & seen["eval"]  # the held-out pairs are never trained on
    assert len(seen["eval"]) == 20 and len(seen["train"]) == 80


def test_samples_are_a_pure_function_of_the_seed():
    assert P.sample("assign2", 5, seed=7) == P.sample("assign2", 5, seed=7)
    assert P.sample("assign2", 5, seed=7) != P.sample("assign2", 5, seed=8)


def test_encode_marks_only_the_answer_tokens_as_targets():
    probs = [("ab; c?", "XYZ"), ("a longer context; d?", "Q")]
    x, y = P.encode(probs, TOK, block_size=64)
    assert x.shape == y.shape == (2, len("a longer context; d?Q") - 1)
    assert (y[0] >= 0).sum() == 3 and (y[1] >= 0).sum() == 1
    assert TOK.decode(y[0][y[0] >= 0].tolist()) == "XYZ"
    assert TOK.decode(x[0, :len("ab; c?XY")].tolist()) == "ab; c?XY"
    with pytest.raises(ValueError, match="longer than block_size=8"):
        P.encode(probs, TOK, block_size=8)


class _Copier(nn.Module):
    """A perfect induction head: at each position predict the token that followed the previous occurrence of the
    current token (causal: it reads only the past)."""

    config = SimpleNamespace(block_size=256)

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape
        out = torch.zeros(b, t, TOK.vocab_size)
        for i in range(b):
            for j in range(t):
                prev = [k for k in range(j) if x[i, k] == x[i, j]]
                out[i, j, x[i, prev[-1] + 1] if prev else 0] = 1.0
        return out


def test_exact_match_scores_a_perfect_copier_one_and_a_constant_model_zero():
    assert P.exact_match(_Copier(), TOK, "induction", n=30, shots=2) == 1.0
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=128, n_layer=1, n_head=1, n_embd=8), seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # constant logits: argmax is token 0 ("\n"), never an answer
    assert P.exact_match(model, TOK, "assign1", n=30, shots=1) == 0.0


def test_finetune_returns_a_trained_copy_and_leaves_the_model_alone():
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = P.finetune(model, TOK, tasks=("assign0",), steps=3, batch_size=4, shots=1)
    assert tuned is not model
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())


def test_bad_primitive_input_names_the_parameter():
    with pytest.raises(ValueError, match="task must be one of"):
        P.sample("sorting", 3, 0)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        P.sample("induction", 0, 0)
    with pytest.raises(ValueError, match="split must be one of"):
        P.sample("arithmetic", 3, 0, split="test")
    with pytest.raises(ValueError, match="tasks must be drawn from"):
        P.finetune(_Copier(), TOK, tasks=("sorting",))
    with pytest.raises(ValueError, match="not in the vocabulary"):  # a tokenizer without the templates' characters
        P.exact_match(_Copier(), CharTokenizer("abc"), "assign0", n=2, shots=0)
