"""LoRA: the layer's formula, init and dropout; targets match whole module names (merging: test_methods.py)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adapters import MethodConfig
from helpers import tiny
from lora import LoRALinear, add_lora
from surgery import from_linear


def test_lora_linear_formula_init_and_dropout():
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    lin = from_linear(LoRALinear, base, 4, 8, 0.5)  # r, alpha, dropout
    assert torch.equal(lin.weight, base.weight) and torch.equal(lin.bias, base.bias)
    assert lin.lora_A.shape == (4, 16) and lin.lora_B.shape == (24, 4) and lin.scaling == 2.0
    assert torch.count_nonzero(lin.lora_B) == 0 and torch.count_nonzero(lin.lora_A) == lin.lora_A.numel()
    assert lin.lora_A.abs().max() <= 1 / math.sqrt(16)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    x = torch.randn(3, 5, 16)
    lin.train()
    assert torch.equal(lin(x), base(x))  # B = 0: dropout only touches the LoRA path, so no effect
    with torch.no_grad():
        lin.lora_B.normal_()
    lin.eval()
    expected = F.linear(x, base.weight + 2.0 * lin.lora_B @ lin.lora_A, base.bias)
    torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)
    lin.train()
    assert not torch.equal(lin(x), lin(x))  # dropout on the LoRA path in training


def test_lora_targets_match_whole_names(tiny_config):
    model = tiny(tiny_config, "cls")
    assert add_lora(model, MethodConfig("lora", lora_targets=("output.dense",))) == \
        ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert type(model.bert.encoder.layer[0].attention.output.dense) is nn.Linear
    with pytest.raises(TypeError, match="LoRALinear, not an nn.Linear: LoRA cannot go there"):
        add_lora(model, MethodConfig("lora", lora_targets=("output.dense",)))
