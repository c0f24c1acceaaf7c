"""Training steps/s of GPT2ICL against Hugging Face's GPT2Model with dtsip/in-context-learning's read-in/read-out.

Both models: 12 layers × 256 width × 8 heads, d = 20, 41 points (82 interleaved tokens), batch 64, Adam, the
same fresh batch every step, dropout 0. The floor is the HF model measured in the same process; we report the
median steps/s over >= 5 timing windows and the ratio ours/HF. `transformers` is optional (the `bench` extra):
without it the comparison is skipped with a message and only our figure is printed.

    python benchmarks/bench_icl.py                      # CPU, fp32, eager (the issue's target: ratio >= 1.5)
    python benchmarks/bench_icl.py --device cuda --compile   # bf16 autocast + torch.compile, with MFU
    python benchmarks/bench_icl.py --kqv-free            # KQV-free block: query-only vs every-row compute

`--kqv-free` times icl-context-vs-task's "both" model at its longest context (d=8, n=64: 65 rows, hidden 256,
batch 512, Adam) with the last block computed for the query only (`query_only=True`, what the experiment runs)
against every row (`query_only=False`, the code before), alternating windows in one process; it reports both
medians and the median per-window ratio. Measured (`taskset -c 1 ... --kqv-free --threads 1`, torch 2.13 CPU,
5 windows × 20 steps): 46.9 steps/s query-only vs 3.93 every row, ratio 11.6.

`--looped` times icl-looped-gpt2's looped model (one GPT-2 block, 256 width, 8 heads, d = 20, 41 points, batch
64, Adam) trained for b = 1, 2, 4, 8 loops (`--loops`) at a fixed window of `--window` loops with gradient (the
earlier loops run without it, as in training), alternating windows in one process; it reports steps/s and
seconds per loop for each b and the median per-window ratio of each b's steps/s to b = 1's.

Measured (`heavy.sh .venv/bin/python benchmarks/bench_icl.py --looped --threads 1`: one pinned core, torch 2.13
CPU, window 1, 5 windows × 5 steps): b = 1, 2, 4, 8 run 2.56, 1.96, 1.33, 0.80 steps/s (0.39, 0.26, 0.19,
0.16 s per loop; ratio to b = 1: 1, 0.76, 0.52, 0.32), i.e. ~0.12 s per extra no-gradient loop on top of a
0.39 s step (one loop with gradient, its backward and Adam).
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.icl import GPT2ICL, KQVFreeTransformer  # noqa: E402
from models.nn import count_params, transformer_flops_per_token  # noqa: E402
from models.train import peak_flops  # noqa: E402


class HFGPT2ICL(nn.Module):
    """dtsip/in-context-learning's TransformerModel: interleave → read_in → GPT2Model → read_out[:, ::2]."""

    def __init__(
        self, d: int, n_points: int, n_layer: int, n_embd: int, n_head: int, attn: str | None
    ) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        cfg = GPT2Config(
            n_positions=2 * n_points,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,
        )
        self.read_in = nn.Linear(d, n_embd)
        self.backbone = (
            GPT2Model(cfg) if attn is None else GPT2Model._from_config(cfg, attn_implementation=attn)
        )
        self.read_out = nn.Linear(n_embd, 1)
        self.attn = self.backbone.config._attn_implementation

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ypad = torch.cat((y.unsqueeze(-1), torch.zeros_like(x[..., 1:])), dim=-1)
        zs = torch.stack((x, ypad), dim=2).flatten(1, 2)
        h = self.backbone(inputs_embeds=self.read_in(zs)).last_hidden_state
        return self.read_out(h)[:, ::2, 0]


def _stepper(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    amp: bool,
    compile_: bool,
    mode: str | None = None,
) -> Callable[[], None]:
    """One Adam training step on a fixed batch, as a closure."""
    fwd = torch.compile(model, mode=mode) if compile_ else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = (fwd(x, y) - y).pow(2).mean()
        loss.backward()
        opt.step()

    return step


def _window(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """steps/s over one timing window (synchronized on CUDA at both ends only)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def _alternate(steppers: dict[str, Callable[[], None]], windows: int, steps: int,
               device: torch.device) -> dict[str, list[float]]:
    """steps/s of each stepper over `windows` windows, alternating window by window (drifting load hits all)."""
    rates: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(windows):
        for k, step in steppers.items():
            rates[k].append(_window(step, steps, device))
    return rates


def _bench_kqv_free(args: argparse.Namespace, device: torch.device) -> dict:
    """KQV-free block steps/s, last block for the query only vs for every row (same init, same batch)."""
    d, n_points, hidden, batch = 8, 65, 256, args.batch or 512
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n_points, d, generator=g).to(device)
    y = torch.randn(batch, n_points, generator=g).to(device)
    steppers = {}
    for name, query_only in (("query_only", True), ("all_rows", False)):
        torch.manual_seed(0)
        model = KQVFreeTransformer(d, n_points, kernel="linear", normalize=False, n_blocks=1, hidden=hidden,
                                   inputs="both", query_only=query_only).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            (model(x, y) - y[:, -1]).pow(2).mean().backward()
            opt.step()

        step()  # warmup
        steppers[name] = step
    steps = args.steps or (20 if device.type == "cpu" else 200)
    rates = _alternate(steppers, args.windows, steps, device)
    report = {"bench": "kqv-free", "device": str(device), "threads": torch.get_num_threads(), "batch": batch,
              "d": d, "n_points": n_points, "hidden": hidden, "steps_per_window": steps, "windows": args.windows,
              "torch": torch.__version__}
    for k, r in rates.items():
        report[f"{k}_steps_per_s"] = statistics.median(r)
    report["ratio"] = statistics.median(a / b for a, b in zip(rates["query_only"], rates["all_rows"]))
    return report


def _bench_looped(args: argparse.Namespace, device: torch.device) -> dict:
    """Looped GPT-2 block steps/s for each loop count at one fixed gradient window (same init, same batch)."""
    from models.icl import LoopedTransformer

    d, n_points, n_embd, n_head, batch = 20, 41, 256, 8, args.batch or 64
    counts = [int(b) for b in args.loops.split(",")]
    if not counts or min(counts) < args.window:
        raise ValueError(f"--loops must be loop counts >= --window={args.window}, got {args.loops!r}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n_points, d, generator=g).to(device)
    y = torch.randn(batch, n_points, generator=g).to(device)
    torch.manual_seed(0)
    model = LoopedTransformer(d, max(counts), "gpt2", args.window, n_heads=n_head, n_points=n_points,
                              n_layer=1, n_embd=n_embd).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    steppers = {}
    for b in counts:
        def step(b: int = b) -> None:
            opt.zero_grad(set_to_none=True)
            (model(x, y, n_loops=b, return_all=True) - y).pow(2).mean().backward()
            opt.step()

        step()  # warmup
        steppers[b] = step
    steps = args.steps or (5 if device.type == "cpu" else 50)
    rates = _alternate(steppers, args.windows, steps, device)
    report = {"bench": "looped", "device": str(device), "threads": torch.get_num_threads(), "batch": batch,
              "d": d, "n_points": n_points, "n_embd": n_embd, "n_head": n_head, "window": args.window,
              "base_loops": counts[0], "steps_per_window": steps, "windows": args.windows,
              "torch": torch.__version__, "loops": {}}
    for b, r in rates.items():
        sps = statistics.median(r)
        report["loops"][b] = {"steps_per_s": sps, "s_per_loop": 1 / (sps * b),
                              "ratio_to_base": statistics.median(u / v for u, v in zip(r, rates[counts[0]]))}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)"
    )
    ap.add_argument("--full-last-layer", action="store_true", help="GPT2ICL(x_only=False) (default: x_only on CPU only)")
    ap.add_argument("--only-ours", action="store_true", help="skip the HF comparison")
    ap.add_argument("--batch", type=int, default=0, help="batch (default 64; 512 with --kqv-free)")
    ap.add_argument("--steps", type=int, default=0, help="steps per window (default 2 on CPU, 50 on CUDA)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--hf-attn", default=None, help="HF attn_implementation (default: HF's own default)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--kqv-free", action="store_true", help="time the KQV-free block, query-only vs every row")
    ap.add_argument("--looped", action="store_true", help="time the looped GPT-2 block per loop count")
    ap.add_argument("--loops", default="1,2,4,8", help="loop counts for --looped (the first is the ratio's base)")
    ap.add_argument("--window", type=int, default=1, help="loops with gradient for --looped")
    args = ap.parse_args()
    if args.windows < 5:
        raise ValueError(f"--windows must be >= 5 (median of >= 5 windows), got {args.windows}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.kqv_free or args.looped:
        report = _bench_kqv_free(args, device) if args.kqv_free else _bench_looped(args, device)
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return
    args.batch = args.batch or 64
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    steps = args.steps or (50 if cuda else 2)
    d, n_points, n_layer, n_embd, n_head = 20, 41, 12, 256, 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, n_points, d, generator=g).to(device)
    y = torch.randn(args.batch, n_points, generator=g).to(device)
    warmup = 3 if args.compile else 1
    report: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        "x_only": not args.full_last_layer and not cuda,
        "amp_bf16": cuda,
        "steps_per_window": steps,
        "windows": args.windows,
        "torch": torch.__version__,
    }
    torch.manual_seed(0)
    ours = GPT2ICL(d, n_points, n_layer, n_embd, n_head, x_only=False if args.full_last_layer else None).to(device)
    models = {"ours": ours}
    try:
        if args.only_ours:
            raise ImportError
        import transformers
    except ImportError:
        if not args.only_ours:
            print(
                "transformers is not installed (pip install '.[bench]'): skipping the HF GPT2Model comparison"
            )
        transformers = None
    if transformers is not None:
        torch.manual_seed(0)
        models["hf"] = HFGPT2ICL(d, n_points, n_layer, n_embd, n_head, args.hf_attn).to(device)
        report.update(hf_attn=models["hf"].attn, transformers=transformers.__version__)
    steppers = {
        k: _stepper(m, x, y, device, cuda, args.compile, args.compile_mode) for k, m in models.items()
    }
    for k, step in steppers.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        report[f"{k}_warmup_s"] = time.perf_counter() - t0
    # alternate the two models window by window, so drifting machine load hits both alike
    rates = _alternate(steppers, args.windows, steps, device)
    pf = peak_flops(device)
    for k, m in models.items():
        report[f"{k}_steps_per_s"] = statistics.median(rates[k])
        report[f"{k}_params"] = count_params(m)
        if pf:
            t = 2 * n_points - 1 if k == "ours" else 2 * n_points
            fpt = transformer_flops_per_token(
                count_params(m) - (0 if k == "ours" else m.backbone.wte.weight.numel()), n_layer, n_embd, t
            )
            report[f"{k}_mfu"] = report[f"{k}_steps_per_s"] * args.batch * t * fpt / pf
    if "hf" in rates:
        report["ratio"] = statistics.median(a / b for a, b in zip(rates["ours"], rates["hf"]))
        report["ratio_of_medians"] = report["ours_steps_per_s"] / report["hf_steps_per_s"]
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
