"""Training tokens/s of models.lm.GPT against transformers' GPT2LMHeadModel, and against the matmul floor.

Both models have the same GPT-2 architecture (biases, tied head, tanh-GELU, no dropout) and shape, train with
AdamW on the same fixed batch, and are timed alternately window by window (so drifting machine load hits both
alike); we report the median tokens/s over >= 5 windows and the median ratio ours/HF (goal >= 1.3 on CPU).

The floor: a bare `torch.matmul` over every matmul of one training step at the same shapes (each linear layer's
forward, input-gradient and weight-gradient products at M = batch·context rows, the attention score and value
products per head, and the head), timed in the same process. Model FLOP/s = tokens/s × (6N + 12·L·C·T) (the
PaLM/nanoGPT count); the ratio model FLOP/s ÷ floor FLOP/s says how much of the achievable matmul rate a step
keeps (goal >= 0.6). `transformers` is optional (the `bench` extra): without it the HF comparison is skipped.

    python benchmarks/bench_lm.py                                   # CPU, fp32, eager: 6×384×6 heads, T=256
    python benchmarks/bench_lm.py --device cuda --compile --preset gpt2 --batch 16   # GPU: bf16, MFU, memory

The GPU path (GPT-2 small, bf16 autocast, torch.compile, MFU against `models.perf.peak_flops` of the device
for bf16; goal >= 40%) is skipped with a message when CUDA is absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.lm import GPT, GPTConfig  # noqa: E402
from models.perf import peak_flops  # noqa: E402


def _hf_model(c: GPTConfig, attn: str | None) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                     n_head=c.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                     activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(cfg) if attn is None else GPT2LMHeadModel._from_config(cfg, attn_implementation=attn)


def _stepper(model: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             amp: bool, compile_: bool) -> Callable[[], None]:
    """One AdamW step of next-token cross-entropy on a fixed batch, as a closure."""
    fwd = torch.compile(logits) if compile_ else logits
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=x.is_cuda)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = fwd(x)
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))
        loss.backward()
        opt.step()

    return step


def _matmul_floor(c: GPTConfig, batch: int, device: torch.device, dtype: torch.dtype) -> Callable[[], float]:
    """A closure running every matmul of one training step at the model's shapes; returns their FLOPs."""
    m, t, hd = batch * c.block_size, c.block_size, c.n_embd // c.n_head
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    hidden = int(c.mlp_ratio * c.n_embd)
    linears = [(c.n_embd, 3 * c.n_embd), (c.n_embd, c.n_embd), (c.n_embd, hidden), (hidden, c.n_embd)]
    pairs = []
    for k, n in linears:  # forward X·W, input gradient dY·Wᵀ, weight gradient Xᵀ·dY
        pairs += [(r(m, k), r(k, n)), (r(m, n), r(n, k)), (r(k, m), r(m, n))]
    bh = batch * c.n_head
    attn = [(r(bh, t, hd), r(bh, hd, t)), (r(bh, t, t), r(bh, t, hd))]  # scores q·kᵀ, output att·v
    attn += [(r(bh, t, t), r(bh, t, hd)), (r(bh, t, hd), r(bh, hd, t)), (r(bh, hd, t), r(bh, t, hd)),
             (r(bh, t, t), r(bh, t, hd))]  # their backward products, same sizes
    head = [(r(m, c.n_embd), r(c.n_embd, c.vocab_size)), (r(m, c.vocab_size), r(c.vocab_size, c.n_embd)),
            (r(c.n_embd, m), r(m, c.vocab_size))]

    def flops(a: torch.Tensor, b: torch.Tensor) -> float:
        lead = a.shape[0] if a.ndim == 3 else 1
        return 2.0 * lead * a.shape[-2] * a.shape[-1] * b.shape[-1]

    per_layer = sum(flops(a, b) for a, b in pairs + attn)
    total = c.n_layer * per_layer + sum(flops(a, b) for a, b in head)

    def run() -> float:
        for _ in range(c.n_layer):
            for a, b in pairs + attn:
                torch.matmul(a, b)
        for a, b in head:
            torch.matmul(a, b)
        return total

    return run


def _window(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Seconds per call over one timing window (synchronized on CUDA at both ends only)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models (and the floor stays eager)")
    ap.add_argument("--preset", default=None, help="a GPTConfig preset (default: 6 layers × 384, 6 heads, T=256)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the preset's, else 50257)")
    ap.add_argument("--block", type=int, default=None, help="context length (default: the preset's, else 256)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0, help="steps per window (default 2 on CPU, 20 on CUDA)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--only-ours", action="store_true", help="skip the HF comparison")
    ap.add_argument("--hf-attn", default=None, help="HF attn_implementation (default: HF's own default)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    if args.windows < 5:
        raise ValueError(f"--windows must be >= 5 (median of >= 5 windows), got {args.windows}")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available: skipping the GPU benchmark (run it on a machine with a GPU)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    base = GPTConfig.preset(args.preset) if args.preset else GPTConfig(n_layer=6, n_head=6, n_embd=384,
                                                                        block_size=256)
    c = GPTConfig.preset("gpt2", **{**base.__dict__, "activation": "gelu_tanh", "bias": True, "dropout": 0.0,
                                    "tie_weights": True, **({"vocab_size": args.vocab} if args.vocab else {}),
                                    **({"block_size": args.block} if args.block else {})})
    steps = args.steps or (20 if cuda else 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, c.vocab_size, (args.batch, c.block_size), generator=g).to(device)
    y = torch.randint(0, c.vocab_size, (args.batch, c.block_size), generator=g).to(device)
    tokens = args.batch * c.block_size
    ours = GPT(c, seed=0).to(device)
    fpt = ours.flops_per_token()
    report: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "threads": torch.get_num_threads(),
                    "shape": {k: getattr(c, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")},
                    "batch": args.batch, "compile": args.compile, "amp_bf16": cuda, "steps_per_window": steps,
                    "windows": args.windows, "torch": torch.__version__, "params": ours.num_params(),
                    "flops_per_token": fpt}
    steppers = {"ours": _stepper(ours, ours, x, y, cuda, args.compile)}
    try:
        if args.only_ours:
            raise ImportError
        import transformers
    except ImportError:
        if not args.only_ours:
            print("transformers is not installed (pip install '.[bench]'): skipping the GPT2LMHeadModel comparison")
        transformers = None
    if transformers is not None:
        torch.manual_seed(0)
        hf = _hf_model(c, args.hf_attn).to(device)
        steppers["hf"] = _stepper(hf, lambda ids: hf(input_ids=ids).logits, x, y, cuda, args.compile)
        report.update(hf_attn=hf.config._attn_implementation, transformers=transformers.__version__,
                      hf_params=sum(p.numel() for p in hf.parameters()))
    floor = _matmul_floor(c, args.batch, device, torch.bfloat16 if cuda else torch.float32)
    for k, step in steppers.items():
        t0 = time.perf_counter()
        for _ in range(3 if args.compile else 1):
            step()
        report[f"{k}_warmup_s"] = time.perf_counter() - t0
    floor()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    secs: dict[str, list[float]] = {k: [] for k in [*steppers, "floor"]}
    for _ in range(args.windows):  # alternate, so drifting load hits every contender alike
        for k, step in steppers.items():
            secs[k].append(_window(step, steps, device))
        secs["floor"].append(_window(floor, max(steps, 2), device))
    floor_flops = floor()
    report["floor_matmul_flops_per_s"] = statistics.median(floor_flops / s for s in secs["floor"])
    for k in steppers:
        report[f"{k}_tokens_per_s"] = statistics.median(tokens / s for s in secs[k])
        report[f"{k}_model_flops_per_s"] = report[f"{k}_tokens_per_s"] * fpt
    report["ours_over_floor"] = statistics.median(tokens * fpt / s / (floor_flops / f)
                                                  for s, f in zip(secs["ours"], secs["floor"]))
    if "hf" in steppers:
        report["ours_over_hf"] = statistics.median(b / a for a, b in zip(secs["ours"], secs["hf"]))
        report["hf_over_floor"] = statistics.median(tokens * fpt / s / (floor_flops / f)
                                                    for s, f in zip(secs["hf"], secs["floor"]))
    pf = peak_flops(device, torch.bfloat16)
    if pf:
        report["peak_flops"] = pf
        report["ours_mfu"] = report["ours_model_flops_per_s"] / pf
        if "hf" in steppers:
            report["hf_mfu"] = report["hf_model_flops_per_s"] / pf
    if cuda:
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
