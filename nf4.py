"""4-bit NormalFloat (NF4) with blockwise absmax scales and double quantization, in plain torch
(Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", sec. 3).

NF4 (sec. 3, "4-bit NormalFloat Quantization"): 16 code values that are quantiles of N(0, 1), scaled
to [-1, 1], so that a normally distributed weight block lands equally often in each code (eq. 4). The
type is asymmetric so that it has an exact zero: 8 quantiles for the positive half, 7 for the negative
half, plus 0. `NF4_VALUES` are the values the paper's reference code (bitsandbytes, create_normal_map)
computes; tests/test_qlora.py rebuilds them from the normal quantiles.

Blockwise absmax (sec. 2, "Block-wise k-bit Quantization"): the flattened weight is cut into blocks of
BLOCK = 64; each block is divided by its absolute maximum c (kept in fp32), and every value is replaced by
the index of the nearest code. Dequantized: NF4_VALUES[index] * c. Two 4-bit indices share one uint8:
the first in the high nibble, as bitsandbytes packs them.

Double quantization (sec. 3, "Double Quantization"): the scales c themselves are quantized to 8 bits in
blocks of SCALE_BLOCK = 256, after subtracting their mean (the scales are positive; centred, a symmetric
code fits them). This saves 32/64 - 8/64 - 32/(64*256) = 0.373 bits per weight (sec. 3 quotes 0.373).
One departure: the paper quantizes the scales with 8-bit floats (bitsandbytes' dynamic map); here the
8-bit code is linear (int8, round(127 * c / absmax)), whose error is at most half a step, absmax / 254:
the same bytes, and a bound the tests can state.

Bytes per weight: 0.5 (codes) + 4/64 (fp32 scales) = 0.5625, or 0.5 + 1/64 + 4/(64*256) ~ 0.516 with
double quantization: 14% or 13% of fp32's 4 bytes.
"""
import math

import torch
import torch.nn.functional as F

BLOCK = 64  # weights per absmax scale (sec. 3, Double Quantization: "a blocksize of 64 for W")
SCALE_BLOCK = 256  # scales per second-level scale under double quantization (sec. 3: blocksize 256)
NF4_VALUES = torch.tensor([  # the 16 codes, ascending; index 7 is the exact zero
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])
MIDPOINTS = (NF4_VALUES[1:] + NF4_VALUES[:-1]) / 2  # (15,): bucketize against these = nearest code


def pack(codes: torch.Tensor) -> torch.Tensor:
    """(n,) uint8 codes in 0..15, n even -> (n / 2,) uint8: codes[2i] in the high nibble, codes[2i+1] low."""
    return (codes[0::2] << 4) | codes[1::2]


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """(n / 2,) uint8 -> (n,) uint8 codes: the inverse of pack."""
    return torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)  # (n/2, 2) -> (n,)


def _blocks(flat: torch.Tensor, size: int) -> torch.Tensor:
    """(n,) -> (ceil(n / size), size), zero-padded at the end."""
    return F.pad(flat, (0, (-flat.numel()) % size)).view(-1, size)


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero block divides by 1


def quantize(weight: torch.Tensor, double_quant: bool = True) -> dict:
    """Any-shaped weight -> its NF4 form, a dict of tensors (the names QLoRALinear stores them under):
      nf4           (ceil(n / 64) * 32,) uint8   two codes per byte
      absmax        (ceil(n / 64),) fp32         the blocks' scales, without double quantization; with it:
      absmax_q      (ceil(n / 64),) int8         the centred scales' 8-bit codes
      absmax_scale  (ceil(n / 64 / 256),) fp32   the second-level scales
      absmax_mean   () fp32                      the mean subtracted before quantizing the scales
    """
    blocks = _blocks(weight.detach().float().reshape(-1), BLOCK)  # (nb, 64)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    normed = blocks / _nonzero(absmax)[:, None]  # (nb, 64), in [-1, 1]
    codes = torch.bucketize(normed, MIDPOINTS.to(normed.device))  # (nb, 64): index of the nearest code
    q = {"nf4": pack(codes.reshape(-1).to(torch.uint8))}
    q.update(quantize_scales(absmax) if double_quant else {"absmax": absmax})
    return q


def quantize_scales(absmax: torch.Tensor) -> dict:
    """(nb,) fp32 scales -> 8-bit codes in blocks of 256 around their mean (double quantization, sec. 3)."""
    mean = absmax.mean()
    blocks = _blocks(absmax - mean, SCALE_BLOCK)  # (nb2, 256)
    scale = blocks.abs().amax(dim=1)  # (nb2,)
    codes = torch.round(blocks / _nonzero(scale)[:, None] * 127).to(torch.int8)  # (nb2, 256) in -127..127
    return {"absmax_q": codes.reshape(-1)[:absmax.numel()], "absmax_scale": scale, "absmax_mean": mean}


def dequantize_scales(q: dict) -> torch.Tensor:
    """The blocks' fp32 scales: stored as they are, or decoded from double quantization."""
    if "absmax" in q:
        return q["absmax"]
    codes = _blocks(q["absmax_q"].float(), SCALE_BLOCK)  # (nb2, 256)
    centred = codes / 127 * q["absmax_scale"][:, None]  # (nb2, 256)
    return centred.reshape(-1)[:q["absmax_q"].numel()] + q["absmax_mean"]  # (nb,)


def dequantize(q: dict, shape, dtype=torch.float32) -> torch.Tensor:
    """quantize's dict -> the weight of `shape` it stands for, NF4_VALUES[code] * scale, in `dtype`
    (computed in fp32, then cast once)."""
    codes = unpack(q["nf4"]).long().view(-1, BLOCK)  # (nb, 64)
    values = NF4_VALUES.to(codes.device)[codes] * dequantize_scales(q)[:, None]  # (nb, 64)
    return values.reshape(-1)[:math.prod(shape)].view(shape).to(dtype)


def stored_bytes(q: dict) -> int:
    """Bytes of the quantized form: what stands in memory for the weight."""
    return sum(t.numel() * t.element_size() for t in q.values())
