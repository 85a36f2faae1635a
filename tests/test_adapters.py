"""Bottleneck adapters: near-identity at init (and LoRA exact), the init's claims, placement."""
import copy

import pytest
import torch
import torch.nn as nn

from adapters import Adapter, MethodConfig, add_adapters, apply_method
from helpers import ALL_TARGETS, POOLINGS, batch, logits, tiny


@pytest.mark.parametrize("pooling", POOLINGS)
def test_lora_and_adapters_equal_base_at_init(minilm, pooling):
    base = minilm[pooling][0]
    ids, mask, _ = batch(30522)
    ref = logits(base, ids, mask)
    lora = copy.deepcopy(base)
    apply_method(lora, MethodConfig("lora", lora_targets=ALL_TARGETS))
    assert torch.equal(logits(lora, ids, mask), ref)  # B = 0: exactly the base model
    ad = copy.deepcopy(base)
    apply_method(ad, MethodConfig("adapter"))
    diff = (logits(ad, ids, mask) - ref).abs().max().item()
    assert 0 < diff < 1e-3  # near-identity, and the adapters are really in the forward path
    with torch.no_grad():
        for module in ad.modules():
            if isinstance(module, Adapter):
                module.up.weight.zero_()
    assert torch.equal(logits(ad, ids, mask), ref)  # x + up(...) with up = 0 is x exactly


def test_adapter_init_claims():
    ad = Adapter(32, 8, init_std=1e-3)
    assert ad.down.weight.shape == (8, 32) and ad.up.weight.shape == (32, 8)  # (out, in): H -> m -> H
    assert 0 < ad.down.weight.abs().max() <= 2e-3 and 0 < ad.up.weight.abs().max() <= 2e-3  # +-2 std
    assert torch.count_nonzero(ad.down.bias) == 0 and torch.count_nonzero(ad.up.bias) == 0
    x = torch.randn(2, 5, 32)
    ad(x).square().sum().backward()
    assert torch.count_nonzero(ad.down.weight.grad) > 0  # small-normal up: down learns from step one
    ad.zero_grad()
    with torch.no_grad():
        ad.up.weight.zero_()
    ad(x).square().sum().backward()
    assert torch.count_nonzero(ad.down.weight.grad) == 0  # why up is not zero-initialised


def test_adapter_placement_and_twice(tiny_config):
    model = tiny(tiny_config, "cls")
    assert add_adapters(model, MethodConfig("adapter", adapter_placement="pfeiffer")) == \
        ["bert.encoder.layer.0.output.adapter", "bert.encoder.layer.1.output.adapter"]
    assert isinstance(model.bert.encoder.layer[0].attention.output.adapter, nn.Identity)
    with pytest.raises(ValueError, match="already filled"):
        apply_method(model, MethodConfig("adapter"))
