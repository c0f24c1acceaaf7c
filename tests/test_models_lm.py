"""models.lm: the GPT, its presets and accounting, tokenizers, token arrays, random-window batches, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.lm import (
    GPT,
    ByteTokenizer,
    CharTokenizer,
    GPTConfig,
    RandomWindows,
    WordTokenizer,
    bits_per_char,
    evaluate_loss,
    lm_loss,
    load_tokens,
    save_tokens,
    sequential_windows,
    token_dtype,
    word_perplexity,
)
from models.train import TrainConfig, Trainer

TINY = GPTConfig.preset("tiny")


def test_gpt2_small_preset_has_the_published_124m_parameters():
    model = GPT(GPTConfig.preset("gpt2"))
    assert model.num_params() == 124_439_808  # OpenAI's GPT-2 small (tied head counted once)
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768
    assert model.lm_head.weight is model.wte.weight
    c = model.config
    assert model.flops_per_token() == 6 * model.num_params(non_embedding=True) + 12 * 12 * 768 * 1024
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (12, 12, 768, 1024, 50257)


def test_gpt2_small_matches_transformers_parameter_count_when_installed():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    assert sum(p.numel() for p in hf.parameters()) == GPT(GPTConfig.preset("gpt2", n_layer=1)).num_params() + \
        11 * sum(p.numel() for p in GPT(GPTConfig.preset("gpt2", n_layer=1)).blocks[0].parameters())


def test_forward_shapes_causality_and_untrained_loss_near_log_vocab():
    model = GPT(TINY, seed=0)
    x = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (3, 32, 256)
    x2 = x.clone()
    x2[:, 20:] = 0  # changing the future does not change the past
    torch.testing.assert_close(model(x2)[:, :20], logits[:, :20])
    tokens = np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint16)
    assert evaluate_loss(model, tokens, 32, 16) == pytest.approx(math.log(256), rel=0.05)


def test_seed_fixes_the_init_and_untied_heads_count_separately():
    a, b = GPT(TINY, seed=3), GPT(TINY, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    untied = GPT(GPTConfig.preset("tiny", tie_weights=False))
    assert untied.num_params() == a.num_params() + 256 * 32
    assert untied.lm_head.weight is not untied.wte.weight


def test_blocks_are_easy_to_rebuild_for_growth():
    model = GPT(TINY, seed=0)
    kept = list(model.blocks)
    extra = model.init_block(model.make_block(), seed=1)
    grown = model.with_blocks([*kept, extra])
    assert grown.config.n_layer == 3 and len(grown.blocks) == 3 and grown.blocks[0] is kept[0]
    assert grown(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 256)
    with pytest.raises(ValueError, match="at least one block"):
        grown.with_blocks([])


def test_a_context_longer_than_the_model_s_is_refused():
    with pytest.raises(ValueError, match="block_size=32"):
        GPT(TINY)(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("field, value", [("n_embd", 33), ("dropout", 1.0), ("vocab_size", 0), ("norm", "batch"),
                                          ("activation", "swish")])
def test_bad_gpt_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field if field != "n_embd" else "divisible"):
        GPTConfig.preset("tiny", **{field: value})
    with pytest.raises(ValueError, match="preset"):
        GPTConfig.preset("gpt5")


def test_generate_extends_the_prompt():
    out = GPT(TINY, seed=0).generate(torch.zeros(2, 3, dtype=torch.long), 40, top_k=5,
                                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 43) and int(out.max()) < 256


# ------------------------------------------------------------------------------------------- tokens


def test_tokenizers_round_trip():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    char = CharTokenizer.from_text(text)
    assert char.decode(char.encode(text)) == text and char.vocab_size == len(set(text))
    assert list(char.chars) == sorted(set(text))
    byte = ByteTokenizer()
    uni = "naïve café — ok\n"
    assert byte.decode(byte.encode(uni)) == uni
    words = " = Valkyria = \n the game , which \n"
    word = WordTokenizer.from_text(words)
    ids = word.encode(words)
    assert word.decode(ids) == "= Valkyria =\nthe game , which\n"
    assert word.encode(word.decode(ids)).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        char.encode("Z")


def test_empty_corpus_is_refused():
    for make in (CharTokenizer.from_text, WordTokenizer.from_text):
        with pytest.raises(ValueError, match="empty"):
            make("")


def test_token_arrays_are_memory_mapped_with_the_smallest_dtype(tmp_path):
    assert token_dtype(65) == np.uint16 and token_dtype(50257) == np.uint16 and token_dtype(70000) == np.int32
    ids = np.array([0, 5, 64, 3])
    arr = load_tokens(save_tokens(ids, tmp_path / "a.npy", 65))
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16 and arr.tolist() == ids.tolist()
    big = load_tokens(save_tokens(np.array([69999, 1]), tmp_path / "b.npy", 70000))
    assert big.dtype == np.int32 and big.tolist() == [69999, 1]
    with pytest.raises(ValueError, match="vocab_size"):
        save_tokens(np.array([65]), tmp_path / "c.npy", 65)


def test_random_windows_are_a_pure_function_of_the_index():
    tokens = np.arange(1000, dtype=np.uint16)
    src = RandomWindows(tokens, block_size=16, batch_size=4, seed=1)
    x, y = src(7)
    assert x.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # targets are the next tokens
    assert torch.equal(src(7)[0], x) and not torch.equal(src(8)[0], x)
    assert not torch.equal(RandomWindows(tokens, 16, 4, seed=2)(7)[0], x)


def test_too_short_corpus_and_unfillable_batch_are_refused():
    with pytest.raises(ValueError, match="too short"):
        RandomWindows(np.arange(10), block_size=10, batch_size=1)
    with pytest.raises(ValueError, match="cannot be filled"):
        RandomWindows(np.arange(20), block_size=10, batch_size=11)
    with pytest.raises(ValueError, match="too short"):
        list(sequential_windows(np.arange(5), 8, 2))


def test_sequential_windows_predict_every_token_once():
    tokens = np.arange(101)
    batches = list(sequential_windows(tokens, 10, 3))
    ys = torch.cat([y.reshape(-1) for _, y in batches])
    assert ys.tolist() == list(range(1, 101))


def test_metric_conversions():
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert word_perplexity(math.log(100.0)) == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------- training


def _trainer(tokens, ckpt, config=TINY, steps=12):
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=2, log_every=0, progress=False,
                      ckpt_path=str(ckpt) if ckpt else None, ckpt_every=4 if ckpt else 0, betas=(0.9, 0.99), weight_decay=0.1)
    src = RandomWindows(tokens, 16, 4, seed=0)
    model = GPT(config, seed=0)
    return Trainer(model, src, lm_loss, cfg, tokens_per_batch=src.tokens_per_batch,
                   flops_per_token=lambda m: m.flops_per_token(16))


def test_gpt_training_resumes_exactly_and_refuses_another_model_config(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint16)
    full = _trainer(tokens, tmp_path / "a.pt")
    full.fit()
    part = _trainer(tokens, tmp_path / "b.pt")
    part.fit(until=6)
    torch.manual_seed(9)
    again = _trainer(tokens, tmp_path / "b.pt")
    assert again.load_checkpoint(tmp_path / "b.pt") and again.step == 6
    again.fit()
    for p, q in zip(again.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    other = _trainer(tokens, tmp_path / "b.pt", config=GPTConfig.preset("tiny", n_layer=3))
    with pytest.raises(ValueError, match="model config differs.*n_layer: checkpoint 2, now 3"):
        other.load_checkpoint(tmp_path / "b.pt")
    assert full.flops_done == pytest.approx(12 * 64 * full.model.flops_per_token(16))


def test_gpt_learns_a_repeating_sequence():
    tokens = np.tile(np.arange(20, dtype=np.uint16), 300)
    tr = _trainer(tokens, None, steps=150)
    before = evaluate_loss(tr.model, tokens, 16, 32, max_windows=64)
    tr.fit()
    assert evaluate_loss(tr.model, tokens, 16, 32, max_windows=64) < 0.1 * before
