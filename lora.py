"""LoRA: low-rank adaptation of frozen Linear layers (Hu et al., 2021, "LoRA: Low-Rank Adaptation
of Large Language Models").

A frozen pretrained weight W (out x in) gets a trainable low-rank update (sec. 4.1, eq. 3):

    h = W x + b + (alpha / r) * B A dropout(x),     A: (r x in), B: (out x r), r << min(in, out)

B starts at zero, so the model is exactly the pretrained one at init (sec. 4.1, "We use a random
Gaussian initialization for A and zero for B"); the reference implementation (microsoft/LoRA,
loralib/layers.py) draws A with nn.Linear's default, kaiming_uniform(a=sqrt(5)), which we copy.
After training, W + (alpha / r) B A can be folded into W for inference at no extra latency
(sec. 4.1, "No Additional Inference Latency"): `merge()` / `unmerge()` below, explicit calls only.

Which Linear layers get LoRA is `LORA_TARGETS`: a short name -> the module path inside one encoder
layer. A target matches a module name only in full: `^bert\\.encoder\\.layer\\.\\d+\\.<path>$`, so
"output.dense" is the FFN output projection and never `attention.output.dense`.
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

# short name -> module path inside `bert.encoder.layer.N.` (the HF state-dict key, less ".weight")
LORA_TARGETS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention.output.dense": "attention.output.dense",
    "intermediate.dense": "intermediate.dense",
    "output.dense": "output.dense",
}


def target_pattern(target: str) -> re.Pattern:
    """The anchored regex over module names that one LoRA target selects."""
    if target not in LORA_TARGETS:
        raise ValueError(f"lora target {target!r}: allowed {list(LORA_TARGETS)}")
    return re.compile(r"^bert\.encoder\.layer\.\d+\." + re.escape(LORA_TARGETS[target]) + "$")


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update; keeps the keys `weight`, `bias`, adds `lora_A`, `lora_B`.

    r:       rank of the update (sec. 4.1; sec. 7.2 finds r = 1..8 enough for W_q, W_v).
    alpha:   the update is scaled by alpha / r, so changing r needs no re-tuning of the learning
             rate (sec. 4.1, "scale dW x by alpha / r").
    dropout: dropout on the input of the LoRA path only; the frozen path sees x unchanged.
    """

    def __init__(self, in_features, out_features, r, alpha, dropout=0.0, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device, dtype=dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as loralib; B = 0 makes B A = 0
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False  # True while weight holds W + scaling * B A
        self._unmerged_weight = None  # W, kept while merged so unmerge() restores it bit for bit

    @classmethod
    def from_linear(cls, linear: nn.Linear, r, alpha, dropout=0.0) -> "LoRALinear":
        """A LoRALinear holding a copy of `linear`'s pretrained weight and bias (same values)."""
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, r, alpha, dropout,
                  bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)  # (..., in) -> (..., out)
        if self.merged:
            return y
        # (..., in) @ (in, r) @ (r, out) -> (..., out): never forms the (out, in) product
        return y + (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self):
        """weight <- W + (alpha / r) B A. Idempotent. Only an explicit call merges (never .eval()).
        While merged, state_dict()["weight"] is the merged matrix: save trainable tensors, or use
        saving.export_merged, rather than a raw state_dict."""
        if self.merged:
            return
        self._unmerged_weight = self.weight.detach().clone()
        self.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """weight <- W exactly as it was before merge() (a stored copy, not W + dW - dW). Idempotent."""
        if not self.merged:
            return
        self.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self):
        return f"{super().extra_repr()}, r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


def add_lora(model: nn.Module, cfg) -> list:
    """Swap every nn.Linear named by cfg.lora_targets for a LoRALinear with the same weight and bias.

    Call after the pretrained weights are loaded. Returns the module names replaced. cfg needs
    lora_targets, lora_r, lora_alpha, lora_dropout (adapters.MethodConfig).
    """
    patterns = [target_pattern(t) for t in cfg.lora_targets]
    replaced = []
    for name, module in list(model.named_modules()):
        if not any(p.match(name) for p in patterns):
            continue
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name} already has LoRA; add_lora was applied twice")
        if type(module) is not nn.Linear:
            raise TypeError(f"{name} is a {type(module).__name__}, not an nn.Linear")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child,
                LoRALinear.from_linear(module, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
        replaced.append(name)
    n_layers = len(model.bert.encoder.layer)
    assert len(replaced) == n_layers * len(set(cfg.lora_targets)), (replaced, cfg.lora_targets)
    return replaced


def lora_layers(model: nn.Module) -> list:
    """(name, LoRALinear) for every LoRA layer in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> int:
    """merge() every LoRA layer; returns how many there are. Idempotent."""
    layers = lora_layers(model)
    for _, m in layers:
        m.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """unmerge() every LoRA layer; returns how many there are. Idempotent."""
    layers = lora_layers(model)
    for _, m in layers:
        m.unmerge()
    return len(layers)
