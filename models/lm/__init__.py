"""Language-model pretraining on the shared core: a GPT built from `models.nn` blocks, and token streams.

    from models.lm import GPT, GPTConfig, lm_loss, RandomWindows
    model = GPT(GPTConfig.preset("shakespeare-char-cpu"))
    Trainer(model, RandomWindows(train_ids, 64, 12), lm_loss, TrainConfig(...)).fit()

Corpora on disk (Tiny Shakespeare, WikiText-2, a folder of .txt files) are loaded by `simulations.datasets`.
"""

from models.lm.data import (
    ByteTokenizer,
    CharTokenizer,
    RandomWindows,
    TokenSplits,
    WordTokenizer,
    bits_per_char,
    evaluate_loss,
    load_tokens,
    save_tokens,
    sequential_windows,
    token_dtype,
    word_perplexity,
)
from models.lm.model import GPT, PRESETS, GPTConfig, lm_loss

__all__ = [
    "GPT", "GPTConfig", "PRESETS", "lm_loss", "ByteTokenizer", "CharTokenizer", "WordTokenizer", "RandomWindows",
    "TokenSplits", "bits_per_char", "evaluate_loss", "load_tokens", "save_tokens", "sequential_windows",
    "token_dtype", "word_perplexity",
]
