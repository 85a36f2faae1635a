"""The memory bill of one training step, line by line, for a model, its trainable list and AdamW, at a
stated batch B and length T: on a laptop as on a GPU (Xu et al., 2023, arXiv 2312.12148, judge PEFT
methods on performance, parameter efficiency and memory; this is the third axis, itemised).

  frozen weights     parameters that do not train (QLoRA's 4-bit codes and scales among them)
  trainable weights  parameters that train (the fp32 master weights)
  gradients          one .grad per trainable parameter, its shape and dtype
  optimizer state    AdamW: exp_avg and exp_avg_sq shaped like each trainable parameter, plus the
                     4-byte `step` tensor torch keeps per parameter (fused or not, the same)
  activations        the tensors autograd saves for the backward pass, counted by storage: each
                     storage once however often (or through however many views) it is saved, and
                     never a parameter's or buffer's own storage (a frozen Linear saves its weight,
                     which is already counted above, and a transposed weight is a view of it)
  weight casts       saved storages that hold a parameter's values in another dtype: autocast's bf16 /
                     fp16 copy of a weight, which is extra memory (none in fp32)
  buffers            the model's buffers

The weight, gradient and optimizer lines are arithmetic on the parameters. Activations and weight casts
are measured: `saved_bytes` runs the forward pass and the loss, in training mode (dropout on), under
torch.autograd.graph.saved_tensors_hooks, and records every saved tensor's storage (address, bytes).
That is exact for the kernels of the device it runs on, and they differ: on CPU, dropout saves an fp32
noise tensor (4 bytes an element) and attention with a mask and dropout takes the math path, saving the
(B, N, T, T) probabilities; on CUDA, PyTorch's fused dropout saves a bool mask (1 byte) and its fused
attention kernels keep O(B N T) (not yet measured here: no GPU was lent when this was written). So the
account is device-independent in that any device can produce it (a CPU in seconds to a minute for
BERT-base); its activation line is the one of the device it ran on (MemoryAccount.device).

Left out: allocator slack (block rounding, fragmentation, cached free blocks), temporaries freed within
the step (a forward's intermediates that autograd does not save, the gradients of activations during
backward, the optimizer's scratch), the CUDA context and library workspaces (cuBLAS), and the batch's
tensors unless autograd saves them (the input ids are counted when the word embeddings train). The total
is the sum of the lines, as if everything were live at once; in a real step the gradients are made while
the activations are freed, so the peak lies below the total by up to the gradients, and above it by the
temporaries alive at that moment. `account` draws its dropout masks from a forked RNG: measuring a run
does not change its random stream.

Checked: tests/test_memory.py counts a tiny model's saved bytes by hand and requires equality, and checks
the gradient and optimizer lines against a real AdamW step; on CUDA, `cuda_check` compares the lines
with torch.cuda.memory_allocated before one real step and max_memory_allocated during it (a test runs
it where CUDA is available).
"""
import argparse
import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import adapters
import qlora
from precision import autocast

MEASURED = ("full", "bitfit", "adapter", "lora", "head", "prompt", "prefix", "ia3", "bitfit+lora", "qlora")
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}  # state tensors shaped like each trainable parameter
STEP_BYTES = 4  # AdamW's per-parameter `step`, a float32 scalar tensor
MIB = 2 ** 20


@dataclass
class MemoryAccount:
    method: str  # "" when not given
    batch: int  # B
    length: int  # T, the tokens of every example (no padding)
    dtype: str  # the forward's compute dtype: "float32", or autocast's "bfloat16" / "float16"
    device: str  # where the activations were measured (their line depends on its kernels)
    frozen_weights: int  # bytes, as every line below
    trainable_weights: int
    gradients: int
    optimizer_state: int
    activations: int
    weight_casts: int
    buffers: int

    LINES = ("frozen_weights", "trainable_weights", "gradients", "optimizer_state", "activations",
             "weight_casts", "buffers")

    @property
    def total(self) -> int:
        return sum(getattr(self, line) for line in self.LINES)

    def largest(self) -> str:
        return max(self.LINES, key=lambda line: getattr(self, line))

    def record(self) -> dict:
        """For results.json: every field, the total, all bytes."""
        return {**asdict(self), "total": self.total}

    def line(self) -> str:
        """One fixed-format line, MiB."""
        parts = " | ".join(f"{name.replace('_', ' ')} {getattr(self, name) / MIB:.1f}" for name in self.LINES)
        return (f"memory {self.method or '?'} (B {self.batch}, T {self.length}, {self.dtype}, {self.device}): "
                f"{parts} | total {self.total / MIB:.1f} MiB")


def table(accounts: list) -> str:
    """One row per account, the lines in MiB, and which line is largest."""
    heads = ("frozen", "trainable", "grads", "optimizer", "activations", "casts", "buffers")
    first = accounts[0]
    out = [f"memory per training step, MiB (B {first.batch}, T {first.length}, {first.dtype}, "
           f"activations as saved on {first.device})",
           f"{'method':<12}" + "".join(f"{h:>12}" for h in heads) + f"{'total':>10}  largest"]
    for a in accounts:
        out.append(f"{a.method:<12}" + "".join(f"{getattr(a, n) / MIB:>12.1f}" for n in a.LINES)
                   + f"{a.total / MIB:>10.1f}  {a.largest().replace('_', ' ')}")
    return "\n".join(out)


# ------------------------------------------------------------------------ the measured lines
def _storage_key(t: torch.Tensor) -> tuple:
    return t.device, t.untyped_storage().data_ptr()


def _is_cast(t: torch.Tensor, params) -> bool:
    """Whether t holds one of `params`' values in another dtype (or transposed): autocast's copy."""
    for p in params:
        if p.dtype == t.dtype or not t.is_floating_point():
            continue
        for view in (p, p.T) if p.ndim == 2 else (p,):
            if view.shape == t.shape and torch.equal(t, view.detach().to(t.dtype)):
                return True
    return False


def saved_bytes(fn, model: nn.Module) -> tuple:
    """(activation bytes, weight-cast bytes) that autograd saves for backward while fn() runs: each
    storage once, the model's parameters' and buffers' own storages left out (see the module docstring).
    Counting only: the graph fn() builds cannot be backpropagated. The pack hook keeps each saved tensor
    in its own list (alive until the count is done, so no other storage can reuse its address) and gives
    autograd a placeholder; the list is emptied before returning. Both matter: every graph node holds the
    hooks, so a saved tensor reachable from them (the hook's return value, or this list) holds its own
    grad_fn's node: a cycle through C++ that Python's collector cannot see, which leaked the whole graph."""
    own = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    by_numel = {}  # numel -> floating parameters of that size: the candidates a cast could copy
    for p in model.parameters():
        if p.is_floating_point():
            by_numel.setdefault(p.numel(), []).append(p)
    seen, kept = {}, []  # storage key -> (bytes, a cast?); every saved tensor, held until we return

    def pack(t):
        key = _storage_key(t)
        if key not in own and key not in seen:
            seen[key] = (t.untyped_storage().nbytes(), _is_cast(t, by_numel.get(t.numel(), ())))
        kept.append(t)
        return None

    def unpack(_):
        raise RuntimeError("memory.saved_bytes built this graph for counting; it cannot run backward")

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            fn()
    finally:
        kept.clear()  # the graph's nodes still reference `pack`, so also what it closes over
        by_numel.clear()
    activations = sum(n for n, cast in seen.values() if not cast)
    return activations, sum(n for n, cast in seen.values() if cast)


def synthetic_batch(model: nn.Module, batch: int, length: int, device, seed: int = 0) -> tuple:
    """(ids, mask, token types, labels) of B examples of T real tokens: the bill does not depend on
    which tokens, only on how many."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, c.vocab_size, (batch, length), generator=g)  # (B, T)
    labels = torch.rand(batch, generator=g) if c.num_labels == 1 else torch.randint(0, c.num_labels, (batch,), generator=g)
    out = (ids, torch.ones_like(ids), torch.zeros_like(ids), labels)
    return tuple(t.to(device) for t in out)


def step_loss(model: nn.Module, b: tuple, amp_dtype=None) -> torch.Tensor:
    """The training forward and its loss, as train.train_step computes them (the loss in fp32)."""
    ids, mask, types, labels = b
    device = ids.device
    with autocast(device, amp_dtype):
        logits = model(ids, mask, types).float()  # (B, L)
    if model.config.num_labels == 1:
        return F.mse_loss(logits.squeeze(-1), labels)
    return F.cross_entropy(logits, labels)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def account(model: nn.Module, trainable: list, batch: int = 32, length: int = 128, method: str = "",
            optimizer: str = "adamw", amp_dtype=None) -> MemoryAccount:
    """The memory bill of one training step of `model` with `trainable` (the list apply_method returned)
    at B = batch, T = length, measured on the model's device. Raises if `trainable` is not exactly the
    parameters with requires_grad."""
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer {optimizer!r}: allowed {list(OPTIMIZER_STATES)}")
    ids = {id(p) for _, p in trainable}
    if ids != {id(p) for p in model.parameters() if p.requires_grad}:
        raise ValueError("the trainable list and requires_grad disagree: was a flag changed after apply_method?")
    device = next(model.parameters()).device
    b = synthetic_batch(model, batch, length, device)
    was_training = model.training
    model.train()  # dropout on, as in training: its masks are part of the bill
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG untouched
            activations, casts = saved_bytes(lambda: step_loss(model, b, amp_dtype), model)
    finally:
        model.train(was_training)
    params = list(model.parameters())
    train = [p for p in params if id(p) in ids]
    return MemoryAccount(
        method=method, batch=batch, length=length, device=device.type,
        dtype=str(amp_dtype or params[0].dtype).removeprefix("torch."),
        frozen_weights=_bytes(p for p in params if id(p) not in ids), trainable_weights=_bytes(train),
        gradients=_bytes(train),  # .grad is shaped and typed like its parameter
        optimizer_state=OPTIMIZER_STATES[optimizer] * _bytes(train) + (STEP_BYTES * len(train) if optimizer == "adamw" else 0),
        activations=activations, weight_casts=casts, buffers=_bytes(model.buffers()))


# --------------------------------------------------------------------------- per method
def apply(model: nn.Module, method: str) -> list:
    """The method's modules and trainable list, through adapters.apply_method with its defaults."""
    return adapters.apply_method(model, adapters.MethodConfig(method=method))


def method_accounts(base: nn.Module, methods=MEASURED, batch: int = 32, length: int = 128, amp_dtype=None) -> list:
    """A MemoryAccount per method, each on a fresh deep copy of `base` (the same weights, seed 0)."""
    accounts = []
    for method in methods:
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        accounts.append(account(model, apply(model, method), batch, length, method, amp_dtype=amp_dtype))
        del model
    return accounts


def quantized_report(base: nn.Module) -> str:
    """qlora's 4-bit weights against the same weights in fp32 (the issue's bound: <= 0.3x)."""
    model = copy.deepcopy(base)
    apply(model, "qlora")
    stored, dense = qlora.quantized_bytes(model)
    return f"qlora: the quantized layers' weights take {stored:,} bytes, {stored / dense:.3f}x their fp32 {dense:,}"


# ------------------------------------------------------------------------------ the GPU check
def cuda_check(model: nn.Module, trainable: list, batch: int = 32, length: int = 128, amp_dtype=None) -> dict:
    """The account against torch.cuda.max_memory_allocated over one real step (forward, backward, fused
    AdamW step) on CUDA; the optimizer state is made by a first step, the second is measured. Bytes:
    the account's resident lines (weights, optimizer state, buffers) against what CUDA held before the
    step (they, the batch and cuBLAS's workspace), and its step lines (gradients, activations, weight
    casts) against what the step added at its peak (they, less what was freed before the peak, plus
    the temporaries); their ratio is the check."""
    device = torch.device("cuda")
    model.to(device)
    acct = account(model, trainable, batch, length, amp_dtype=amp_dtype)
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-6, fused=True)
    b = synthetic_batch(model, batch, length, device)
    model.train()

    def step():
        step_loss(model, b, amp_dtype).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    resident = acct.frozen_weights + acct.trainable_weights + acct.optimizer_state + acct.buffers
    return {"account_resident": resident, "before_step": before, "account_step": acct.total - resident,
            "step_peak": peak - before, "step_ratio": (peak - before) / (acct.total - resident),
            "account_total": acct.total, "peak": peak, "account": acct.record()}


def load_base(name: str) -> nn.Module:
    """'minilm' (pretrained, mean pooling as its checkpoint declares) or 'bert-base-shape' (BertConfig's
    defaults, random weights: the memory does not depend on the values)."""
    if name == "bert-base-shape":
        from model import BertConfig, BertForSequenceClassification
        return BertForSequenceClassification(BertConfig())
    from checkpoint import load_pretrained
    return load_pretrained(name, num_labels=2, verbose=False)[0]


def main(argv=None):
    p = argparse.ArgumentParser(description="The memory bill of one training step, per method.")
    p.add_argument("--model", default="minilm", help="minilm, bert-base-shape, or a checkpoint directory")
    p.add_argument("--batch", type=int, default=32, help="B")
    p.add_argument("--length", type=int, default=128, help="T, tokens per example")
    p.add_argument("--amp", default="off", choices=("off", "bf16"), help="autocast dtype of the forward")
    p.add_argument("--methods", default=",".join(MEASURED), help="comma-separated")
    args = p.parse_args(argv)
    base = load_base(args.model)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    accounts = method_accounts(base, args.methods.split(","), args.batch, args.length, amp)
    print(f"model {args.model}")
    print(table(accounts))
    if "qlora" in args.methods.split(","):
        print(quantized_report(base))
    return accounts


if __name__ == "__main__":
    main()
