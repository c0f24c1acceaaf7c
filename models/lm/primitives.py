"""Synthetic reasoning primitives (after Saunshi et al. NeurIPS 2024, §5): small tasks generated on the fly and
written in plain text, so the language model's own tokenizer reads them; scored by exact match of the answer.

    induction   a random string of distinct letters, a space, a prefix of it: continue the copy (3 letters)
                    "qzkwmbfaxj qzkw" -> "mbf"
    assign0     look a variable up:                       "d:K, a:P, c:R; a?" -> "P"
    assign1     one hop of indirection:                   "b:T, e:b, a:Q, c:a; e?" -> "T"
    assign2     two hops:                                 "f:Y, b:f, d:O, e:d, a:b; a?" -> "Y"
    arithmetic  the sum of two numbers under ten, in words: "three plus five is " -> "eight"

The paper's exact templates were not recovered (the notes mark them recalled); these are ours, built from
lowercase and uppercase letters, space, ",", ":", ";", "?" and "." — characters every corpus we train on has
(Tiny Shakespeare has no digits or "=", hence words and colons). Variables are lowercase, values uppercase;
assignments come in definition order with distractors interleaved (two plain values, and at depth ≥ 1 one
distractor reference). Arithmetic holds out a fixed fifth of the 100 (a, b) pairs for evaluation, so a
fine-tune cannot pass by memorising them.

k-shot: k solved examples of the same task, one a line, before the query. An answer is right when every one of
its tokens is the model's argmax given the correct prefix, which is exactly when greedy decoding would write it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.data import index_seed
from models.lm.model import lm_loss
from models.train import TrainConfig, Trainer

__all__ = ["TASKS", "Example", "sample", "encode", "exact_match", "finetune"]

TASKS = ("induction", "assign0", "assign1", "assign2", "arithmetic")
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")
_SPLITS = ("train", "eval", "all")


@dataclass(frozen=True)
class Example:
    """One problem: the model reads `prompt` and should write `answer`."""

    task: str
    prompt: str
    answer: str


def _held_out(a: int, b: int) -> bool:
    return (3 * a + 7 * b) % 5 == 0  # a fixed fifth of the (a, b) pairs, spread over both operands


def _induction(rng: np.random.Generator) -> tuple[str, str]:
    s = "".join(rng.choice(list(_LOWER), size=10, replace=False))
    p = int(rng.integers(2, 7))
    return f"{s} {s[:p]}", s[p:p + 3]


def _assign(rng: np.random.Generator, depth: int) -> tuple[str, str]:
    names = [str(c) for c in rng.choice(list(_LOWER), size=depth + 3 + min(depth, 1), replace=False)]
    values = [str(c) for c in rng.choice(list(_UPPER), size=3, replace=False)]
    chain = names[:depth + 1]  # chain[0] holds the answer, chain[i] refers to chain[i-1]
    plain = names[depth + 1:depth + 3]
    refs = names[depth + 3:]
    chain_st = [f"{chain[0]}:{values[0]}"] + [f"{chain[i]}:{chain[i - 1]}" for i in range(1, depth + 1)]
    other_st = [f"{plain[0]}:{values[1]}", f"{plain[1]}:{values[2]}"]
    other_st += [f"{r}:{plain[int(rng.integers(0, 2))]}" for r in refs]  # after the plains they point to
    # interleave the two sequences at random, each keeping its own order (definitions before uses)
    order = rng.permutation([0] * len(chain_st) + [1] * len(other_st))
    seqs, out = [list(chain_st), list(other_st)], []
    for k in order:
        out.append(seqs[k].pop(0))
    return ", ".join(out) + f"; {chain[-1]}?", values[0]


def _arithmetic(rng: np.random.Generator, split: str) -> tuple[str, str]:
    while True:
        a, b = (int(v) for v in rng.integers(0, 10, size=2))
        if split == "all" or _held_out(a, b) == (split == "eval"):
            return f"{_WORDS[a]} plus {_WORDS[b]} is ", _WORDS[a + b]


def sample(task: str, n: int, seed: int, split: str = "all") -> list[Example]:
    """n examples of `task`, a pure function of (task, n, seed). split ('train' | 'eval' | 'all') keeps
    arithmetic's held-out pairs apart (other tasks are random strings: a train/eval overlap is negligible)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(index_seed(seed, TASKS.index(task)))
    out = []
    for _ in range(n):
        if task == "induction":
            prompt, answer = _induction(rng)
        elif task == "arithmetic":
            prompt, answer = _arithmetic(rng, split)
        else:
            prompt, answer = _assign(rng, int(task[-1]))
        out.append(Example(task, prompt, answer))
    return out


def _with_shots(query: Example, shots: Sequence[Example]) -> tuple[str, str]:
    context = "".join(f"{s.prompt}{s.answer}\n" for s in shots)
    return context + query.prompt, query.answer


def encode(problems: Sequence[tuple[str, str]], tokenizer: Any, block_size: int,
           pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) [n, T] for (context, answer) pairs: x the text up to the answer's last token but one, y the next
    tokens with -1 (ignored by `lm_loss`) everywhere but at the answer. Right-padded (causal attention: padding
    after a row cannot change it). ValueError if a problem is longer than the model's context."""
    rows = []
    for context, answer in problems:
        c, a = tokenizer.encode(context), tokenizer.encode(answer)
        if len(a) < 1:
            raise ValueError(f"empty answer for {context!r}")
        rows.append((np.concatenate([c, a]), len(c)))
    longest = max(len(r) for r, _ in rows) - 1
    if longest > block_size:
        raise ValueError(f"a problem needs {longest} tokens of context, longer than block_size={block_size}; "
                         f"use fewer shots or a longer context")
    x = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    y = torch.full((len(rows), longest), -1, dtype=torch.long)
    for i, (ids, n_ctx) in enumerate(rows):
        t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        x[i, :len(t) - 1] = t[:-1]
        y[i, n_ctx - 1:len(t) - 1] = t[n_ctx:]
    return x, y


def _problems(task: str, n: int, shots: int, seed: int, split: str) -> list[tuple[str, str]]:
    ex = sample(task, n * (shots + 1), seed, split)
    return [_with_shots(ex[i * (shots + 1) + shots], ex[i * (shots + 1):i * (shots + 1) + shots]) for i in range(n)]


@torch.no_grad()
def exact_match(model: nn.Module, tokenizer: Any, task: str, n: int = 200, shots: int = 3, seed: int = 1,
                batch_size: int = 100) -> float:
    """Fraction of n k-shot problems of `task` (held-out split) whose whole answer is the model's greedy output."""
    if not isinstance(shots, int) or shots < 0:
        raise ValueError(f"shots must be an integer >= 0, got {shots!r}")
    block = model.config.block_size
    device = next(model.parameters()).device
    problems = _problems(task, n, shots, seed, "eval")
    was = model.training
    model.eval()
    right = 0
    for lo in range(0, n, batch_size):
        x, y = encode(problems[lo:lo + batch_size], tokenizer, block)
        x, y = x.to(device), y.to(device)
        pred = model(x).argmax(-1)
        right += int(((pred == y) | (y < 0)).all(dim=1).sum())
    model.train(was)
    return right / n


def finetune(model: nn.Module, tokenizer: Any, tasks: Sequence[str] = TASKS, steps: int = 200,
             batch_size: int = 32, lr: float = 1e-3, shots: int = 3, seed: int = 0,
             device: str = "cpu") -> nn.Module:
    """A fine-tuned copy of `model` (the original is untouched): `steps` AdamW steps on fresh k-shot problems of
    `tasks` (training split; each row a random task), the loss on answer tokens only, constant lr after a 10%
    warmup."""
    tasks = tuple(tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"tasks must be drawn from {TASKS}, got {t!r}")
    block = model.config.block_size
    tuned = copy.deepcopy(model)

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(index_seed(seed, i))
        picks = rng.integers(0, len(tasks), size=batch_size)
        probs = [_problems(tasks[k], 1, shots, int(rng.integers(0, 2**31)), "train")[0] for k in picks]
        return encode(probs, tokenizer, block)

    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=max(steps // 10, 1), schedule="constant", grad_clip=1.0,
                      device=device, log_every=0, progress=False)
    Trainer(tuned, batch, lm_loss, cfg).fit()
    return tuned.eval()
