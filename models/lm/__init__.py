"""Language-model pretraining on the shared core: a GPT built from `models.nn` blocks, and token streams.

    from models.lm import GPT, GPTConfig, lm_loss, RandomWindows
    model = GPT(GPTConfig.preset("shakespeare-char-cpu"))
    Trainer(model, RandomWindows(train_ids, 64, 12), lm_loss, TrainConfig(...)).fit()

Growth in depth (gradual stacking, MIDAS, LAG): `grow(model, "middle", 2)`, `GrowthSchedule` + `GrowthHook` as a
Trainer hook, `lag_select`; synthetic reasoning primitives: `models.lm.primitives`.

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
from models.lm.growth import STRATEGIES, GrowthPlan, grow, plan_growth
from models.lm.lag import LagChoice, LagSelect, lag_select
from models.lm.model import GPT, PRESETS, GPTConfig, lm_loss
from models.lm.schedule import GrowthHook, GrowthSchedule, prop_steps

__all__ = [
    "GPT", "GPTConfig", "PRESETS", "lm_loss", "ByteTokenizer", "CharTokenizer", "WordTokenizer", "RandomWindows",
    "TokenSplits", "bits_per_char", "evaluate_loss", "load_tokens", "save_tokens", "sequential_windows",
    "token_dtype", "word_perplexity",
    # growth (MIDAS, gradual stacking, LAG); reasoning primitives are in models.lm.primitives
    "grow", "plan_growth", "GrowthPlan", "STRATEGIES", "GrowthSchedule", "GrowthHook", "prop_steps", "LagSelect",
    "LagChoice", "lag_select",
]
