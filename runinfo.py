"""What a run measures about itself: a device-synchronized timer, peak memory, the environment."""
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch


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
    return {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "device_name": device_name(device), "dtype": str(amp_dtype or torch.float32).removeprefix("torch."),
            "threads": torch.get_num_threads(), "world_size": world_size}


def write_json(path, obj):
    """Write atomically: a reader (or a crash) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
