"""precision.keep_frozen_in_compute_dtype's claims: under bf16 autocast, frozen Linear weights stored in bf16
once give bit for bit the logits and gradients of autocast's per-step cast, over training steps; only
frozen Linear tensors are cast, only for bf16; the frozen-weights proof covers the stored dtype."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adapters import MethodConfig, apply_method
from audit import fingerprint, verify_frozen
from helpers import SMALL, batch, tiny
from precision import keep_frozen_in_compute_dtype

METHODS = ["full", "bitfit", "lora", "ia3", "adapter", "head", "prefix", "bitfit+lora", "bitfit+ia3"]


def model_with(config, method):
    model = tiny(config, "cls")
    trainable = apply_method(model, MethodConfig(method, **SMALL))
    return model, trainable


def steps(model, trainable, ids, mask, labels, n=2):
    """n AdamW steps under bf16 autocast, dropout on (torch's masks from seed 5): each step's logits and
    the last gradients."""
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)
    torch.manual_seed(5)
    out = []
    for _ in range(n):
        model.train()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids, mask)
        F.cross_entropy(logits.float(), labels).backward()
        out.append(logits.detach())
        grads = {n: p.grad.clone() for n, p in trainable}
        opt.step()
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out.append(model(ids, mask))
    return out, grads


@pytest.mark.parametrize("method", METHODS)
def test_cast_once_is_bit_identical_to_autocast_casting_every_step(tiny_config, method):
    model, trainable = model_with(tiny_config, method)
    cast_model = copy.deepcopy(model)
    cast_trainable = [(n, dict(cast_model.named_parameters())[n]) for n, _ in trainable]
    cast = keep_frozen_in_compute_dtype(cast_model, torch.bfloat16)
    linears = {n for n, m in cast_model.named_modules() if isinstance(m, nn.Linear)}
    for name, p in cast_model.named_parameters():
        module, _, key = name.rpartition(".")
        expected = module in linears and key in ("weight", "bias") and not p.requires_grad
        assert (name in cast) == expected and p.dtype == (torch.bfloat16 if expected else torch.float32), name
    assert (cast == []) == (method == "full")  # every other method freezes some Linear
    ids, mask, labels = batch(tiny_config.vocab_size)
    logits, grads = steps(model, trainable, ids, mask, labels)
    cast_logits, cast_grads = steps(cast_model, cast_trainable, ids, mask, labels)
    assert all(torch.equal(a, b) for a, b in zip(logits, cast_logits))
    assert grads.keys() == cast_grads.keys() and all(torch.equal(grads[n], cast_grads[n]) for n in grads)
    assert all(g.dtype == torch.float32 for g in cast_grads.values())  # fp32 masters, fp32 gradients


def test_bitfit_layer_keeps_a_trainable_fp32_bias_beside_a_bf16_weight(tiny_config):
    model, _ = model_with(tiny_config, "bitfit")
    keep_frozen_in_compute_dtype(model, torch.bfloat16)
    query = model.bert.encoder.layer[0].attention.self.query
    assert (query.weight.dtype, query.bias.dtype, query.bias.requires_grad) == (torch.bfloat16, torch.float32, True)


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.float32])
def test_nothing_is_cast_unless_bf16(tiny_config, dtype):
    model, _ = model_with(tiny_config, "bitfit")
    assert keep_frozen_in_compute_dtype(model, dtype) == []
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_frozen_proof_covers_the_stored_dtype(tiny_config):
    model, trainable = model_with(tiny_config, "lora")
    keep_frozen_in_compute_dtype(model, torch.bfloat16)
    fp = fingerprint(model)  # taken after the cast, as train.py does
    assert fp["bert.encoder.layer.0.attention.self.query.weight"].startswith("bfloat16[")
    ids, mask, labels = batch(tiny_config.vocab_size)
    steps(model, trainable, ids, mask, labels)
    assert verify_frozen(model, fp)["verdict"] == "passed"
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    weight.data = weight.data.float()  # the same values, exactly, in another dtype: the proof must see it
    assert verify_frozen(model, fp)["moved"] == ["bert.encoder.layer.0.attention.self.query.weight"]
