"""The two federated workloads: the shared core's models (`models.lm.GPT`, `models.icl.LinearAttention`) on
natural or synthetic non-IID clients, each with its loss, its per-client batches and its evaluation.

- ``lm-shakespeare``: next-token prediction at character level on Tiny Shakespeare, one client per speaking role
  (LEAF's natural partition; roles speaking at least ``min_chars`` characters). Each role's text is split 90/10;
  the validation set is every role's last 10 %. The unigram (character-frequency) model is the floor to beat.
- ``icl``: in-context linear regression where client c draws prompts whose inputs have its own covariance
  Sigma_c (a fixed rotation, eigenvalues in [1/kappa_c, 1], condition numbers kappa_c spread log-uniformly over
  [1, icl_kappa] across clients: the task-diversity setting). Evaluated on prompts from every client's Sigma.

Batches are pure functions of (seed, round, client, step), so a run (and a resumed run) repeats exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from simulations.flower.training.settings import FLSettings

__all__ = ["Workload", "make_workload", "flat_params", "set_flat_params"]


def flat_params(model: nn.Module) -> np.ndarray:
    """The model's parameters as one float64 vector (tied weights once)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu().double().numpy()


def set_flat_params(model: nn.Module, x: np.ndarray) -> None:
    p = next(model.parameters())
    torch.nn.utils.vector_to_parameters(torch.as_tensor(x, dtype=p.dtype, device=p.device), model.parameters())


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1)[0])


class Workload:
    """A federated task: `population` clients; `make_model()`, `batches(cid, round)`, `loss`, `evaluate`."""

    name = "base"
    population: int
    examples_per_client: np.ndarray

    def __init__(self, settings: FLSettings) -> None:
        self.settings = settings

    def make_model(self) -> nn.Module:
        raise NotImplementedError

    def batches(self, cid: int, server_round: int) -> Callable[[int], Any]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def baselines(self) -> dict[str, float]:
        return {}

    def check_client(self, cid: int) -> None:
        if not 0 <= cid < self.population:
            raise ValueError(f"client id must be in [0, {self.population}), got {cid}")


@lru_cache(maxsize=4)
def _shakespeare_roles(min_chars: int):
    from models.lm.data import CharTokenizer
    from simulations.datasets import load_shakespeare
    from simulations.datasets.lm_corpora import SHAKESPEARE

    corpus = load_shakespeare()
    tok = CharTokenizer.from_text(SHAKESPEARE.read_text(encoding="utf-8"))
    texts: dict[int, list[str]] = {}
    for role, speech in corpus.speeches:
        texts.setdefault(role, []).append(speech)
    train, val, names = [], [], []
    for role in sorted(texts):
        ids = tok.encode("\n\n".join(texts[role]) + "\n\n")
        if len(ids) < min_chars:
            continue
        cut = int(0.9 * len(ids))
        train.append(ids[:cut])
        val.append(ids[cut:])
        names.append(corpus.roles[role])
    return tok, tuple(train), np.concatenate(val), tuple(names)


class LMShakespeare(Workload):
    name = "lm-shakespeare"

    def __init__(self, settings: FLSettings) -> None:
        super().__init__(settings)
        self.tokenizer, train, self.val, self.roles = _shakespeare_roles(settings.min_chars)
        n = settings.population or len(train)
        if n > len(train):
            raise ValueError(f"population must be <= {len(train)} (roles with >= {settings.min_chars} characters), "
                             f"got {n}")
        order = np.argsort([-len(t) for t in train], kind="stable")[:n]  # the n most talkative roles
        self.train = [train[i] for i in order]
        self.population = n
        self.examples_per_client = np.array([len(t) for t in self.train])
        if min(self.examples_per_client) <= settings.block_size + 1:
            raise ValueError(f"block_size={settings.block_size} is longer than a client's text")

    def make_model(self) -> nn.Module:
        from models.lm import GPT, GPTConfig

        s = self.settings
        cfg = GPTConfig(vocab_size=self.tokenizer.vocab_size, block_size=s.block_size, n_layer=s.n_layer,
                        n_head=s.n_head, n_embd=s.n_embd, bias=s.bias)
        model = GPT(cfg, seed=s.seed)
        model.per_sample_positions = s.example_dp  # the same function; Opacus needs batched position lookups
        return model

    def windows(self, cid: int) -> torch.Tensor:
        """Client `cid`'s training examples for example-level DP: its text cut into consecutive windows of
        block_size + 1 tokens (input and shifted target), [n_windows, block_size + 1]. Windows j and j + 1 share
        one boundary token, so "one example" is one window, not one character."""
        self.check_client(cid)
        tokens, b = self.train[cid], self.settings.block_size
        n = (len(tokens) - 1) // b
        idx = np.arange(n)[:, None] * b + np.arange(b + 1)
        return torch.from_numpy(tokens[idx].astype(np.int64))

    def batches(self, cid: int, server_round: int):
        self.check_client(cid)
        tokens, s = self.train[cid], self.settings
        offsets = np.arange(s.block_size + 1)

        def batch(index: int):
            rng = np.random.default_rng(_seed(s.seed, server_round, cid, index))
            starts = rng.integers(0, len(tokens) - s.block_size, size=s.batch_size)
            rows = torch.from_numpy(tokens[starts[:, None] + offsets].astype(np.int64))
            return rows[:, :-1], rows[:, 1:]

        return batch

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def evaluate(self, model):
        from models.lm.data import evaluate_loss

        dev = next(model.parameters()).device
        return {"val_loss": evaluate_loss(model, self.val, self.settings.block_size, 256, device=dev)}

    def baselines(self):
        counts = np.bincount(np.concatenate(self.train), minlength=self.tokenizer.vocab_size) + 1.0
        logp = np.log(counts / counts.sum())
        return {"unigram_val_loss": float(-logp[self.val[1:]].mean()), "init_loss": math.log(self.tokenizer.vocab_size)}


class ICLRegression(Workload):
    name = "icl"

    def __init__(self, settings: FLSettings) -> None:
        super().__init__(settings)
        from models.icl import TaskConfig, TaskSampler

        s = settings
        self.population = s.population or 20
        kappas = np.exp(np.linspace(0.0, math.log(s.icl_kappa), self.population))
        rng = np.random.default_rng(_seed(s.seed, 0xC0))
        self.samplers = []
        for c, kappa in enumerate(kappas):
            ev = np.exp(-rng.random(s.icl_d) * math.log(kappa))
            ev[0] = 1.0
            ev[-1] = 1.0 / kappa
            self.samplers.append(TaskSampler(TaskConfig(d=s.icl_d, n=s.icl_n, cov="fixed",
                                                        eigvals=tuple(float(e) for e in ev), rotate=True,
                                                        pool_seed=_seed(s.seed, c))))
        self.kappas = kappas
        self.examples_per_client = np.full(self.population, 10**9)

    def make_model(self):
        from models.icl import LinearAttention

        s = self.settings
        return LinearAttention(s.icl_d, n_layers=s.icl_layers, param="restricted", seed=s.seed)

    def _draw(self, cid: int, b: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        p = self.samplers[cid].sample(b, generator=g)
        return p.x, p.y

    def batches(self, cid: int, server_round: int):
        self.check_client(cid)
        s = self.settings
        return lambda index: self._draw(cid, s.batch_size, _seed(s.seed, server_round, cid, index))

    def central_batches(self):
        """Batches for central training on the pooled data: each step's prompts from one uniformly drawn client
        (the population's mixture), the same number of prompts per step as one client's local step."""
        s = self.settings

        def batch(index: int):
            cid = int(np.random.default_rng(_seed(s.seed, 0xCE, index)).integers(self.population))
            return self._draw(cid, s.batch_size, _seed(s.seed, 0xCF, index))

        return batch

    def loss(self, model, batch):
        x, y = batch
        return ((model(x, y) - y[:, -1]) ** 2).mean()

    @torch.no_grad()
    def evaluate(self, model):
        """Normalized ICL error: mean squared query error / mean squared label, over 256 prompts per client."""
        errs, norms = [], []
        for c in range(self.population):
            x, y = self._draw(c, 256, _seed(self.settings.seed, 0xE7, c))
            errs.append(float(((model(x, y) - y[:, -1]) ** 2).mean()))
            norms.append(float((y[:, -1] ** 2).mean()))
        return {"val_loss": float(np.mean(errs) / np.mean(norms))}

    def baselines(self):
        return {"zero_predictor": 1.0}


def make_workload(settings: FLSettings) -> Workload:
    """The workload `settings.workload` names."""
    if settings.workload == "lm-shakespeare":
        return LMShakespeare(settings)
    return ICLRegression(settings)
