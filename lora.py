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
layer, matched in full (surgery.layer_pattern), so "output.dense" is the FFN output projection and
never `attention.output.dense`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Dropout
from surgery import from_linear, keep, restore, swap_linears

# short name -> module path inside `bert.encoder.layer.N.` (the HF state-dict key, less ".weight")
# The names of what add_lora inserts, as a pattern over parameter names: the one place they are
# spelled (adapters.TRAINABLE, audit.GROUPS and saving.export_merged read it from here).
LORA_PARAMS = r"\.lora_[AB]$"
LORA_TARGETS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention.output.dense": "attention.output.dense",
    "intermediate.dense": "intermediate.dense",
    "output.dense": "output.dense",
}


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
        self.lora_dropout = Dropout(dropout)  # model.Dropout: --dropout-masks reaches it too
        self.merged = False  # True while weight holds W + scaling * B A
        self._unmerged = None  # (W, b), kept while merged so unmerge() restores them bit for bit

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
        self._unmerged = keep(self)
        self.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """weight <- W exactly as it was before merge() (a stored copy, not W + dW - dW). Idempotent."""
        if not self.merged:
            return
        restore(self, self._unmerged)
        self._unmerged = None
        self.merged = False

    def extra_repr(self):
        return f"{super().extra_repr()}, r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


def add_lora(model: nn.Module, cfg) -> list:
    """Swap every nn.Linear named by cfg.lora_targets for a LoRALinear with the same weight and bias.

    Call after the pretrained weights are loaded. Returns the module names replaced. cfg needs
    lora_targets, lora_r, lora_alpha, lora_dropout (adapters.MethodConfig, which checks the names).
    """
    def make(linear):
        return from_linear(LoRALinear, linear, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return swap_linears(model, {LORA_TARGETS[t]: make for t in cfg.lora_targets}, "LoRA")
