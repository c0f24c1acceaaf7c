"""The LM experiments' smoke presets: each trains on the CPU, writes its record and plot, and its strict claims
hold; the full-size records committed under docs/results/ hold their anchors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


pytestmark = pytest.mark.usefixtures("one_torch_thread", "token_cache")


def test_shakespeare_char_smoke_beats_the_character_unigram_model(smoke):
    m = smoke("lm-shakespeare-char")["metrics"]
    assert m["val_loss"] < m["unigram_val_loss"] and m["corpus"]["vocab_size"] == 65
    assert m["val_bits_per_char"] == pytest.approx(m["val_loss"] / 0.6931471805599453)
    assert not m["anchor_config"]  # the smoke preset is not nanoGPT's configuration


def test_wikitext2_smoke_learns_far_beyond_the_uniform_model(smoke):
    m = smoke("lm-wikitext2")["metrics"]
    assert m["val_perplexity"] < 33_278 / 10 and m["test_perplexity"] is None


def test_the_gpu_presets_are_nanogpts_gpu_configuration(monkeypatch):
    from simulations.lm.shakespeare_char import Config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the preset names device="cuda"
    gpu = Config.gpu()
    assert gpu.device == "cuda" and gpu.compile
    assert (gpu.n_layer, gpu.n_head, gpu.n_embd, gpu.block_size, gpu.batch_size, gpu.dropout, gpu.steps) == \
        (6, 6, 384, 256, 64, 0.2, 5000)
    assert gpu.anchor() == pytest.approx(1.4697) and Config().anchor() == 1.88


@pytest.mark.parametrize("name", ["lm-shakespeare-char", "lm-wikitext2"])
def test_committed_full_size_record_holds_its_claims(name):
    path = RESULTS / name / "result.json"
    if not path.exists():
        pytest.skip(f"no committed record at {path}")
    rec = json.loads(path.read_text())
    assert rec["provenance"]["preset"] == "full"
    assert all(c["holds"] for c in rec["claims"] if c["strict"])
