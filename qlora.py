"""QLoRA: LoRA on a frozen base whose Linear weights are stored in 4-bit NormalFloat (Dettmers et al.,
2023, "QLoRA: Efficient Finetuning of Quantized LLMs", sec. 3, eq. 5):

    Y = X doubleDequant(c1, c2, W_NF4) + b + (alpha / r) dropout(X) A^T B^T

The frozen W (out x in) exists only as NF4 codes and their scales (nf4.py); the forward pass dequantizes
it to the compute dtype (fp32, or bf16 / fp16 under autocast: the paper's BFloat16 storage -> compute
split, sec. 3), multiplies, and lets the dense copy go. The backward pass dequantizes again rather than
keeping it (`_DequantLinear`), as bitsandbytes' 4-bit matmul does, so autograd holds the codes, which
are in memory anyway, and never a dense W. Gradients flow through W to the input, never into W.

QLoRALinear is LoRALinear (lora.py) with the dense `weight` replaced: the same A, B, their init, the
alpha / r scaling and dropout (the constructor is LoRALinear's, so under the same seed A is drawn the
same), and the same key names `lora_A`, `lora_B`, `bias`, so LoRA's trainable pattern (lora.LORA_PARAMS)
selects the same tensors. The 4-bit form is kept as frozen parameters (requires_grad=False), named
`weight_` + nf4.quantize's keys (NF4_PARAMS): `weight_nf4` (uint8, two codes a byte) and `weight_absmax`
(fp32), or with double quantization `weight_absmax_q` (int8), `weight_absmax_scale`, `weight_absmax_mean`
(fp32). As parameters they are in every frozen-weight proof (audit.fingerprint) and in state_dict().

There is no merge: W + (alpha / r) B A rounded back to NF4 would lose every part of the update smaller
than half the gap between two codes, so the trained A, B are saved on their own (saving.save_trainable).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import nf4
from lora import LORA_TARGETS, LoRALinear
from surgery import swap_linears

NF4_PARAMS = r"\.weight_(nf4|absmax|absmax_q|absmax_scale|absmax_mean)$"  # a QLoRALinear's frozen 4-bit weight


class _DequantLinear(torch.autograd.Function):
    """x W^T + b with W dequantized from its NF4 form in forward and again in backward: the saved
    tensors are the codes and scales (parameters), never a dense W or the input (W takes no gradient)."""

    @staticmethod
    def forward(ctx, x, bias, shape, keys, *stored):
        ctx.shape, ctx.keys = shape, keys
        ctx.save_for_backward(*stored)
        w = nf4.dequantize(dict(zip(keys, stored)), shape, x.dtype)  # (out, in)
        return F.linear(x, w, bias)  # (..., in) -> (..., out)

    @staticmethod
    def backward(ctx, grad):  # grad: (..., out)
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            w = nf4.dequantize(dict(zip(ctx.keys, ctx.saved_tensors)), ctx.shape, grad.dtype)  # (out, in)
            grad_x = grad @ w  # (..., out) @ (out, in) -> (..., in)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)  # (out,): bitfit+qlora trains it
        return (grad_x, grad_bias, None, None) + (None,) * len(ctx.keys)


class QLoRALinear(LoRALinear):
    """LoRALinear whose frozen weight is NF4 (nf4.py); r, alpha, dropout as LoRALinear.

    double_quant: quantize the blocks' scales too (sec. 3, "Double Quantization"), 0.52 bytes per weight
    instead of 0.56.
    """

    def __init__(self, in_features, out_features, r, alpha, dropout=0.0, double_quant=True, bias=True,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, r, alpha, dropout, bias=bias, device=device, dtype=dtype)
        self.double_quant = double_quant
        weight = self.weight.detach()  # nn.Linear's random init, until store() is given the real one
        del self.weight  # no dense W is kept: the 4-bit codes stand for it
        self.nf4_keys = ()
        self.store(weight)

    def store(self, weight: torch.Tensor):
        """Quantize `weight` (out, in) into the frozen parameters weight_nf4, weight_absmax..."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight of shape {tuple(weight.shape)} for a QLoRALinear "
                             f"({self.out_features}, {self.in_features})")
        q = nf4.quantize(weight, self.double_quant)
        for key, tensor in q.items():
            setattr(self, "weight_" + key, nn.Parameter(tensor, requires_grad=False))
        self.nf4_keys = tuple(q)

    def quantized(self) -> dict:
        """The NF4 form, nf4.quantize's dict: {"nf4": ..., "absmax": ...} (or the double-quantized keys)."""
        return {key: getattr(self, "weight_" + key) for key in self.nf4_keys}

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        """The W the codes stand for, (out, in): what the forward multiplies by."""
        return nf4.dequantize(self.quantized(), (self.out_features, self.in_features), dtype)

    def forward(self, x):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        q = self.quantized()
        y = _DequantLinear.apply(x.to(dtype), bias, (self.out_features, self.in_features), tuple(q), *q.values())
        # LoRALinear.forward's low-rank path (lora.py), on top of the dequantized base: (..., in) -> (..., out)
        return y + (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merge(self):
        raise RuntimeError("a QLoRA layer cannot merge: W + (alpha / r) B A rounded back to NF4 would lose the "
                           "update; save the trained tensors (saving.save_trainable) instead")

    def extra_repr(self):
        return f"{super().extra_repr()}, nf4 block={nf4.BLOCK}, double_quant={self.double_quant}"


def quantize_linear(linear: nn.Linear, r, alpha, dropout=0.0, double_quant=True) -> QLoRALinear:
    """A QLoRALinear holding `linear`'s weight in NF4 and its bias as it is, on its device."""
    w = linear.weight
    new = QLoRALinear(linear.in_features, linear.out_features, r, alpha, dropout, double_quant,
                      bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    new.store(w)
    if linear.bias is not None:
        with torch.no_grad():
            new.bias.copy_(linear.bias)
    return new


def add_qlora(model: nn.Module, cfg) -> list:
    """Swap every nn.Linear named by cfg.lora_targets for a QLoRALinear: its weight in NF4, LoRA on top.
    As lora.add_lora (the same targets, r, alpha, dropout), plus cfg.qlora_double_quant. Call after the
    pretrained weights are loaded. Returns the module names replaced. (QLoRA itself quantizes every
    Linear of the base and puts LoRA on all of them, sec. 4: lora_targets = all of LORA_TARGETS.)"""
    def make(linear):
        return quantize_linear(linear, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.qlora_double_quant)
    return swap_linears(model, {LORA_TARGETS[t]: make for t in cfg.lora_targets}, "QLoRA")


def quantized_bytes(model: nn.Module) -> tuple:
    """(bytes the QLoRA layers' NF4 weights take, bytes the same weights take in fp32)."""
    layers = [m for m in model.modules() if isinstance(m, QLoRALinear)]
    return (sum(nf4.stored_bytes(m.quantized()) for m in layers),
            sum(4 * m.in_features * m.out_features for m in layers))
