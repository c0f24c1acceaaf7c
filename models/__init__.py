"""The shared model/training core: building blocks, the Trainer, ICL transformers, the GPT language model.

`from models.train import Trainer, TrainConfig` (the one training loop: resume-exact batch sources from
`models.data`, step hooks that may replace the model, a teacher slot, DDP under torchrun via
`models.distributed`, MFU against `models.perf`'s peak table), `models.nn` (attention, MLP, norms, block),
`from models.icl import GPT2ICL, LinearAttention, LoopedTransformer, LTB, KQVFreeTransformer, MLPICL` (plus the
prompt sampler `TaskConfig`/`TaskSampler` and `models.icl.baselines`), `from models.lm import GPT, GPTConfig`.
Depends on torch (and numpy) only.
"""
