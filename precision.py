"""Where a run computes and in what precision: the device, and the one precision path.

Training under autocast keeps the trainable master weights in fp32 and runs the matrix multiplies
in bf16 or fp16; without autocast everything is fp32. fp16's narrow exponent range needs a
GradScaler (loss scaling); bf16 and fp32 do not, and there the scaler is built disabled, so that
`scaler.scale(loss).backward(); scaler.step(opt); scaler.update()` is one code path for all three
(a disabled scaler returns the loss unchanged and steps the optimizer directly).
"""
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

import distributed as dist

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def pick_device(name: str) -> torch.device:
    """"auto" -> this rank's GPU where CUDA is available, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here (use --device cpu)")
    return torch.device(name)


BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86's AVX512-BF16 and AMX; Arm's FEAT_BF16 ("bf16")


def cpu_has_bf16(cpuinfo=Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU advertises bf16 instructions. Linux lists them in /proc/cpuinfo, on the
    "flags" lines on x86 and the "Features" lines on Arm; where that file does not exist or cannot
    be read (macOS, Windows) there is no detection: False, and --amp auto runs fp32."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return False
    fields = (line.partition(":") for line in lines)
    listed = {flag for key, _, value in fields if key.strip() in ("flags", "Features") for flag in value.split()}
    return bool(listed & BF16_FLAGS)


def pick_amp(amp: str, device: torch.device):
    """--amp -> the autocast dtype, or None for fp32. auto: bf16 where the hardware has it (CUDA: else
    fp16; CPU: else off)."""
    if amp not in AMP_CHOICES:
        raise SystemExit(f"--amp {amp!r}: allowed {list(AMP_CHOICES)}")
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "bf16" if cpu_has_bf16() else "off"
    if amp == "fp16" and device.type != "cuda":
        raise SystemExit("--amp fp16 needs CUDA (a GradScaler on CPU is not supported); use bf16 or off")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def grad_scaler(device: torch.device, dtype) -> torch.amp.GradScaler:
    """Loss scaling, enabled for fp16 only; disabled, it is a pass-through (see the module docstring)."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def autocast(device: torch.device, dtype):
    """The forward's precision context: autocast to `dtype`, or nullcontext when dtype is None (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def keep_frozen_in_compute_dtype(model: nn.Module, dtype) -> list:
    """Under bf16 autocast, store the frozen weight and bias of every nn.Linear (LoRA's and (IA)^3's
    base layers included) in bf16, once; returns their names. Only for dtype bf16: fp32 has nothing to
    cast, and fp16-with-a-scaler runs keep the path they were measured on (issue 31 scopes it so).

    Why: autocast runs F.linear in bf16 and casts its fp32 arguments on every call, caching only
    tensors that require grad, so every frozen weight was copied to bf16 on every step (20-27 ms of a
    MiniLM step on a CPU). Cast once, autocast finds them in bf16 and passes them through: the same
    round-to-nearest-even `.to(bfloat16)` gives the same tensor, so outputs and gradients are bit
    for bit those of the per-step cast (tests/test_precision.py). Trainable tensors stay fp32 masters
    (a BitFit layer: bf16 weight, fp32 bias, which autocast casts as before); embeddings and LayerNorm,
    which autocast runs in fp32, are not touched. Call after apply_method and before audit.fingerprint,
    so the frozen-weights proof covers the stored dtype (a digest names it). After this, merge() adds
    the update into the bf16 weight: merge or export from a model that was not cast.
    """
    if dtype is not torch.bfloat16:
        return []
    cast = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        for key in ("weight", "bias"):
            p = getattr(module, key)
            if p is not None and not p.requires_grad and p.dtype is torch.float32:
                p.data = p.data.to(dtype)  # as module.to(dtype) converts: the Parameter object stays
                cast.append(f"{name}.{key}")
    return cast
