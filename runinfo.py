"""What a run measures about itself: a device-synchronized timer, peak memory, the environment, and
strict JSON written atomically (record.py holds results.json's layout)."""
import json
import math
import os
import platform
import resource
import time
from pathlib import Path

import torch

from precision import cpu_has_bf16


ROOT = Path(__file__).resolve().parent  # the repository: recorded paths are relative to it


def portable(path) -> str:
    """A path as a results file records it: relative to the repository when it is a path of this
    machine ("results/cpu/mrpc-full-f1-s0", "../shared/glue_data"), a name as given ("minilm", a hub
    id, "") left as it is. The machine's absolute paths mean nothing on a reader's machine."""
    text = str(path)
    if not text or not os.path.isabs(text):
        return text
    return os.path.relpath(text, ROOT)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyncTimer:
    """Wall-clock time of device work: synchronizes before reading the clock at start and end,
    so queued CUDA kernels are counted where they ran, not where they were launched."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.start


def reset_peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max allocated by tensors. CPU: the process's peak resident set size (Linux: KiB)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def environment(device: torch.device, amp_dtype, world_size: int = 1) -> dict:
    """What a run's numbers came from. On a CPU, cpu_bf16 says whether it advertises the bf16
    instructions that --amp auto looks for (precision.cpu_has_bf16): two machines with the same model
    name can differ in them, and in speed."""
    return {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "device_name": device_name(device), "dtype": str(amp_dtype or torch.float32).removeprefix("torch."),
            "threads": torch.get_num_threads(), "world_size": world_size,
            **({"cpu_bf16": cpu_has_bf16()} if device.type == "cpu" else {})}


def finite_or_null(obj, where="") -> tuple:
    """(a copy of obj with every NaN or infinity replaced by None, the paths where that happened):
    strict JSON has no NaN or Infinity, and Python's json writes them by default."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where or "."]
    if isinstance(obj, dict):
        pairs = [(k, finite_or_null(v, f"{where}.{k}" if where else str(k))) for k, v in obj.items()]
        return {k: v for k, (v, _) in pairs}, [p for _, (_, ps) in pairs for p in ps]
    if isinstance(obj, (list, tuple)):
        items = [finite_or_null(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in items], [p for _, ps in items for p in ps]
    return obj, []


def strict_json(obj, **kwargs) -> str:
    """json.dumps that never writes NaN or Infinity: they become null, and a dict gets a
    "nonfinite_values" entry listing where (a flag a reader cannot miss)."""
    clean, where = finite_or_null(obj)
    if where and isinstance(clean, dict):
        clean["nonfinite_values"] = where
    return json.dumps(clean, allow_nan=False, **kwargs)


def write_json(path, obj):
    """Write strict JSON (strict_json) atomically: a reader (or a crash) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(strict_json(obj, indent=2) + "\n")
    except OSError:  # a full disk: leave no half-written temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
