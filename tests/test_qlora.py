"""NF4 (nf4.py) and QLoRA (qlora.py): the 16 code values against the paper's construction (and
bitsandbytes' table where it is installed), the quantization error within the format's bound, the
bytes, and a QLoRA model that equals its dequantized base at init, trains only A and B (the codes
bit-identical after a huge step), keeps LoRA's key names and round-trips through its state dict."""
import copy
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import nf4
from adapters import method_patterns
from audit import fingerprint, verify_frozen
from helpers import ALL_TARGETS, batch, logits, tiny
from lora import LORA_TARGETS, LoRALinear, add_lora
from qlora import NF4_PARAMS, QLoRALinear, add_qlora, quantize_linear, quantized_bytes

PAPER_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]
HALF_GAP = (nf4.NF4_VALUES.diff().max() / 2).item()  # the farthest a value in [-1, 1] lies from its code


def cfg(targets=("query", "value"), double_quant=True):
    return SimpleNamespace(lora_targets=targets, lora_r=4, lora_alpha=8.0, lora_dropout=0.0,
                           qlora_double_quant=double_quant)


def normal_float(offset, dtype):
    """NF4 as the paper builds it (sec. 3): quantiles of N(0, 1) at evenly spaced probabilities from
    `offset` down to 1/2, 2^(k-1) + 1 = 9 of them for the positive half and 8 for the negative half,
    each half's 1/2 (the zero) dropped, one zero put back, then scaled to [-1, 1]."""
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=dtype)[:-1].double())  # 8 values
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=dtype)[:-1].double())  # 7 values
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return values


def test_the_16_code_values_are_the_papers():
    assert nf4.NF4_VALUES.tolist() == PAPER_NF4
    # The outermost probability sits between the two halves' last bins: 1 - (1/(2*15) + 1/(2*16)) / 2.
    exact = normal_float(1 - (1 / 30 + 1 / 32) / 2, torch.float64)
    assert (exact / exact.max() - torch.tensor(PAPER_NF4, dtype=torch.float64)).abs().max() < 5e-7
    # bitsandbytes' create_normal_map rounds that offset to 0.9677083 and works in float32: to the bit.
    theirs = normal_float(0.9677083, torch.float32).float()
    assert (theirs / theirs.max()).tolist() == PAPER_NF4


def test_the_code_values_equal_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    assert bnb.functional.get_4bit_type("nf4", device="cpu").tolist() == PAPER_NF4


def test_pack_puts_two_codes_in_a_byte():
    codes = torch.randint(0, 16, (64,), dtype=torch.uint8)
    packed = nf4.pack(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 32
    assert torch.equal(nf4.unpack(packed), codes)
    assert nf4.pack(torch.tensor([1, 2, 15, 0], dtype=torch.uint8)).tolist() == [0x12, 0xF0]  # first code high


def blocks_of(x, size):
    flat = x.reshape(-1)
    return F.pad(flat, (0, (-flat.numel()) % size)).view(-1, size)


@pytest.mark.parametrize("double_quant", [False, True])
def test_quantization_error_within_the_format_bound(double_quant):
    """Per block of 64: |x - dequantized| <= absmax * (largest half-gap between adjacent codes), plus,
    with double quantization, the scale's own error, at most half an int8 step of its block of 256."""
    w = torch.randn(300, 70) * 0.05  # 21,000 weights: the last block is padded
    w[7, 3], w[150, 0] = 1.5, -2.0  # outliers: their blocks get large scales, the others do not care
    deq = nf4.dequantize(nf4.quantize(w, double_quant), w.shape)
    err = blocks_of((w - deq).abs(), nf4.BLOCK).amax(dim=1)  # (blocks,)
    absmax = blocks_of(w.abs(), nf4.BLOCK).amax(dim=1)  # (blocks,)
    bound = absmax * HALF_GAP
    if double_quant:
        centred = blocks_of(absmax - absmax.mean(), nf4.SCALE_BLOCK).abs().amax(dim=1)  # (blocks of 256,)
        bound = bound + centred.repeat_interleave(nf4.SCALE_BLOCK)[:absmax.numel()] / 254
    assert (err <= bound * (1 + 1e-6) + 1e-7).all()
    assert err.max() > 0.5 * HALF_GAP * 0.05  # not vacuous: 4 bits do lose precision


def test_values_on_the_grid_come_back_exactly():
    codes = torch.randint(0, 16, (8, 64))
    codes[:, 0] = 15  # every block reaches 1.0, so its absmax is the scale
    scales = torch.rand(8, 1) + 0.5
    w = nf4.NF4_VALUES[codes] * scales  # (8, 64)
    assert torch.equal(nf4.dequantize(nf4.quantize(w, double_quant=False), w.shape), w)
    zeros = torch.zeros(4, 64)  # an all-zero block: scale 0, no division by it
    assert torch.equal(nf4.dequantize(nf4.quantize(zeros), zeros.shape), zeros)


def test_bytes_per_weight():
    n = 768 * 768
    plain, double = (nf4.stored_bytes(nf4.quantize(torch.randn(768, 768), dq)) for dq in (False, True))
    assert plain == n // 2 + 4 * n // 64  # codes + fp32 scales: 0.5625 bytes a weight
    assert double == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4  # int8 scales, their scales, the mean
    assert double < plain <= 0.3 * 4 * n


def qlora_model(config, pooling, targets=("query", "value"), double_quant=True):
    model = tiny(config, pooling)
    add_qlora(model, cfg(targets, double_quant))
    patterns = [p for _, p in method_patterns("lora")]  # QLoRA trains what LoRA trains
    for name, p in model.named_parameters():
        p.requires_grad_(any(re.search(pat, name) for pat in patterns))
    return model, [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_at_init_qlora_equals_the_dequantized_base(tiny_config, pooling):
    torch.manual_seed(0)
    base = tiny(tiny_config, pooling)
    reference, model = copy.deepcopy(base), copy.deepcopy(base)
    add_qlora(model, cfg(ALL_TARGETS))
    with torch.no_grad():
        for name, m in reference.named_modules():
            if any(name.endswith("." + LORA_TARGETS[t]) and ".layer." in name for t in ALL_TARGETS):
                m.weight.copy_(nf4.dequantize(nf4.quantize(m.weight), m.weight.shape))
    ids, mask, _ = batch(tiny_config.vocab_size)
    assert torch.equal(logits(model, ids, mask), logits(reference, ids, mask))  # B = 0: the LoRA path adds 0
    assert not torch.equal(logits(base, ids, mask), logits(reference, ids, mask))  # 4 bits do change W


def test_lora_init_and_scaling_are_loras(tiny_config):
    base = tiny(tiny_config, "cls")
    lora, qlora = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(3)
    add_lora(lora, cfg())
    torch.manual_seed(3)
    add_qlora(qlora, cfg())
    a, b = (dict(m.named_parameters()) for m in (lora, qlora))
    for name in (n for n in a if n.endswith(("lora_A", "lora_B"))):
        assert torch.equal(a[name], b[name]), name
    q = qlora.bert.encoder.layer[0].attention.self.query
    assert isinstance(q, LoRALinear) and q.scaling == 8.0 / 4 and q.weight_nf4.dtype == torch.uint8


def test_gradients_equal_lora_on_the_dequantized_weight():
    """The custom backward (dequantize again, never keep W): input, bias, A and B gradients equal
    LoRALinear's with the dequantized W, under a nonzero B."""
    torch.manual_seed(0)
    q = quantize_linear(torch.nn.Linear(96, 48), r=4, alpha=8.0)
    ref = LoRALinear(96, 48, 4, 8.0)
    with torch.no_grad():
        q.lora_B.normal_()
        for name in ("bias", "lora_A", "lora_B"):
            getattr(ref, name).copy_(getattr(q, name))
        ref.weight.copy_(q.dequantized_weight())
    ref.weight.requires_grad_(False)
    x1, x2 = (torch.randn(3, 5, 96, generator=torch.Generator().manual_seed(1)).requires_grad_() for _ in range(2))
    for layer, x in ((q, x1), (ref, x2)):
        (layer(x) ** 2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    for name in ("bias", "lora_A", "lora_B"):
        assert torch.allclose(getattr(q, name).grad, getattr(ref, name).grad, rtol=1e-5, atol=1e-5), name


def test_frozen_codes_bit_identical_after_a_huge_step(tiny_config):
    model, trainable = qlora_model(tiny_config, "mean")
    fp = fingerprint(model)
    codes = {n: p.detach().clone() for n, p in model.named_parameters() if ".weight_" in n}
    assert codes and set(codes) <= set(fp)  # the 4-bit codes and scales are in the freeze proof
    before = {n: p.detach().clone() for n, p in trainable}
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1.0)
    ids, mask, labels = batch(tiny_config.vocab_size)
    model.train()
    for _ in range(2):  # A gets a gradient once B != 0
        opt.zero_grad()
        F.cross_entropy(model(ids, mask), labels).backward()
        opt.step()
    assert all(torch.equal(p, codes[n]) for n, p in model.named_parameters() if n in codes)
    assert verify_frozen(model, fp) == {"verdict": "passed", "checked": len(fp)}
    assert [n for n, p in trainable if torch.equal(p, before[n])] == []


@pytest.mark.parametrize("double_quant", [False, True])
def test_key_names_and_state_dict_round_trip(tiny_config, double_quant):
    model, _ = qlora_model(tiny_config, "cls", double_quant=double_quant)
    prefix = "bert.encoder.layer.1.attention.self.query."
    stored = ("absmax",) if double_quant is False else ("absmax_q", "absmax_scale", "absmax_mean")
    expected = {prefix + k for k in ("bias", "lora_A", "lora_B", "weight_nf4", *("weight_" + s for s in stored))}
    assert {k for k in model.state_dict() if k.startswith(prefix)} == expected  # no dense `weight`
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad and ".layer." in n and ".weight_" in n}
    assert frozen and frozen == {n for n, _ in model.named_parameters() if re.search(NF4_PARAMS, n)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()
    torch.manual_seed(7)
    again, _ = qlora_model(tiny_config, "cls", double_quant=double_quant)
    again.load_state_dict(model.state_dict())  # strict: every key and shape
    ids, mask, _ = batch(tiny_config.vocab_size)
    assert torch.equal(logits(again, ids, mask), logits(model, ids, mask))


def test_autocast_computes_in_bf16(tiny_config):
    model, trainable = qlora_model(tiny_config, "cls", targets=ALL_TARGETS)
    ids, mask, labels = batch(tiny_config.vocab_size)
    model.eval()  # no dropout: the two forwards differ by precision only
    with torch.no_grad():
        h32 = model.bert(ids, mask)  # (B, T, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = model.bert.encoder.layer[0].attention.self.query
        assert q(torch.randn(2, 3, tiny_config.hidden_size)).dtype == torch.bfloat16
        h16 = model.bert(ids, mask)
        out = model(ids, mask)
    assert 0 < (h16.float() - h32).abs().max() < 0.05 * h32.abs().max()  # bf16's 8 bits, over 2 layers
    F.cross_entropy(out.float(), labels).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for n, p in trainable if "lora_" in n)


def test_merge_is_refused_and_the_weights_are_under_a_third(tiny_config):
    model, _ = qlora_model(tiny_config, "cls", targets=ALL_TARGETS)
    q = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(q, QLoRALinear) and not hasattr(q, "weight")
    with pytest.raises(RuntimeError, match="cannot merge"):
        q.merge()
    stored, dense = quantized_bytes(model)
    assert dense == 4 * tiny_config.num_hidden_layers * (4 * 32 * 32 + 2 * 32 * 64) and stored <= 0.3 * dense


def test_train_py_trains_qlora_passes_the_freeze_proof_and_its_checkpoint_round_trips(tmp_path, glue_dir):
    """train.py --method qlora end to end: the 4-bit codes never move (the run's own proof), and the
    best checkpoint, loaded onto a fresh base, predicts the test split exactly as the run recorded."""
    import numpy as np

    import data
    import glue
    import train
    from evaluation import evaluate
    from saving import load_trainable
    out = tmp_path / "run"
    results = train.main(["--model", "minilm", "--task", "mrpc", "--method", "qlora", "--frac", "0.03",
                          "--epochs", "1", "--max-length", "32", "--amp", "off", "--data-dir", str(glue_dir),
                          "--out", str(out)])
    assert results["freeze_audit"] == "passed" and results["params"]["by_group"]["4-bit weights"]["trainable"] == 0
    assert results["memory"]["method"] == "qlora" and results["memory"]["frozen_weights"] > 0
    model, tokenizer, meta = load_trainable(out / "best.safetensors")
    task = glue.get_task("mrpc")
    test = data.load_task_data(data.read_task_files(task, glue_dir), tokenizer, max_length=32).test
    _, preds = evaluate(model, task, test, 256, torch.device("cpu"), None)
    assert meta["method"] == "qlora" and np.array_equal(preds, results["best"]["test_predictions"])
