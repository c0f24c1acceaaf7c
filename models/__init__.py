"""The shared model/training core: building blocks, the Trainer, ICL transformers.

`from models.train import Trainer, TrainConfig` (the one training loop), `models.nn` (attention, MLP, norms, block),
`from models.icl import GPT2ICL, LinearAttention, LoopedTransformer, LTB, KQVFreeTransformer, MLPICL` (plus the
prompt sampler `TaskConfig`/`TaskSampler` and `models.icl.baselines`). Depends on torch only.
"""
