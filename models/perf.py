"""Peak FLOP/s of an accelerator for a compute dtype, and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s ÷ the device's dense peak *for the dtype the matmuls run in*: a bf16 run is measured
against the bf16 tensor-core peak, an fp32 run against the TF32 peak when TF32 matmuls are allowed (else plain
fp32). Device names are matched by model *and* variant (an H100 PCIe is not an H100 SXM); a name the table does
not know returns None, so MFU is left out rather than guessed. Figures are NVIDIA's data-sheet dense
(no-sparsity) peaks per GPU.
"""

from __future__ import annotations

import re

import torch

_TFLOPS = 1e12
# (model regex, variant regex or None, {dtype: dense peak TFLOP/s}); the first matching row wins, so specific
# variants come before the generic row of the same model.
_TABLE: tuple[tuple[str, str | None, dict[str, float]], ...] = (
    (r"H100", r"NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100", r"PCIE", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"H100", r"SXM|HBM3", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    (r"H200", r"NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", None, {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    (r"A100", None, {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", None, {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (r"L4", None, {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"A10", None, {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"V100", None, {"fp16": 125.0, "fp32": 15.7}),
    (r"T4", None, {"fp16": 65.0, "fp32": 8.1}),
)


def dtype_key(dtype: torch.dtype) -> str:
    """'bf16', 'fp16', 'tf32' (fp32 with TF32 matmuls allowed) or 'fp32': the precision the matmuls run in."""
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype}")


def peak_flops_for(name: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of the GPU called `name` (as `torch.cuda.get_device_name` says it) at `dtype`
    ('bf16', 'fp16', 'tf32', 'fp32'); None when the device or its variant is unknown, or it lacks the dtype."""
    upper = name.upper()
    for model, variant, peaks in _TABLE:
        if not re.search(rf"(?<![A-Z0-9]){model}(?![A-Z0-9])", upper):
            continue
        if variant is not None and not re.search(variant, upper):
            continue
        peak = peaks.get(dtype)
        return None if peak is None else peak * _TFLOPS
    return None


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of a CUDA `device` for matmuls in `dtype`, else None (no MFU on CPU or unknown GPUs)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device), dtype_key(dtype))
