"""DistributedDataParallel under torchrun, and no-ops in a plain single process.

`torchrun --nproc_per_node N train.py ...` sets RANK, WORLD_SIZE and LOCAL_RANK; init() then
joins the process group (nccl on CUDA, gloo on CPU). Each rank trains on its own shard of the
batches (data.batches(rank=, world_size=)); evaluation is sharded too and the predictions are
gathered, so every rank computes the same metrics; only rank 0 writes files.
"""
import os

import torch
import torch.distributed as td


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init():
    if world_size() > 1 and not td.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        td.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def cleanup():
    if td.is_initialized():
        td.destroy_process_group()


def wrap(model, device):
    """DDP over the trainable parameters (frozen ones have requires_grad False and are skipped)."""
    if world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return t
    t = t.detach().to("cuda" if td.get_backend() == "nccl" else "cpu").clone()
    td.all_reduce(t)
    return t.cpu()


def gather_cat(tensors):
    """Concatenate CPU tensors from every rank (shards may differ in length)."""
    if world_size() == 1:
        return tensors
    gathered = [None] * world_size()
    td.all_gather_object(gathered, tensors)
    return [torch.cat([g[i] for g in gathered]) for i in range(len(tensors))]
