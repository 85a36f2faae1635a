"""(IA)^3: the base model at init, the layer's formula, export as a plain BERT (merging: test_methods.py)."""
import copy

import pytest
import torch
from safetensors.torch import load_file

from adapters import MethodConfig, apply_method, mergeable_layers
from checkpoint import load_pretrained
from helpers import POOLINGS, batch, logits
from ia3 import IA3Linear
from saving import export_merged
from surgery import from_linear


@pytest.mark.parametrize("pooling", POOLINGS)
def test_ia3_equals_base_at_init(minilm, pooling):
    base = minilm[pooling][0]
    ids, mask, _ = batch(30522)
    ref = logits(base, ids, mask)
    model = copy.deepcopy(base)
    apply_method(model, MethodConfig("ia3"))
    assert len(mergeable_layers(model)) == 6 * 3
    assert torch.equal(logits(model, ids, mask), ref)  # l = 1: exactly the base model
    with torch.no_grad():
        model.bert.encoder.layer[2].output.dense.ia3_l[7] = 0.5  # one element of one l_ff
    assert not torch.equal(logits(model, ids, mask), ref)  # the vectors are in the forward path


def test_ia3_linear_formula():
    lin = torch.nn.Linear(6, 4)
    x = torch.randn(3, 6)
    out, inn = from_linear(IA3Linear, lin, "out"), from_linear(IA3Linear, lin, "in")
    assert out.ia3_l.shape == (4,) and inn.ia3_l.shape == (6,)
    with torch.no_grad():
        out.ia3_l.uniform_(0.5, 1.5)
        inn.ia3_l.uniform_(0.5, 1.5)
    torch.testing.assert_close(out(x), (x @ lin.weight.T + lin.bias) * out.ia3_l)  # l * (W x + b)
    torch.testing.assert_close(inn(x), (x * inn.ia3_l) @ lin.weight.T + lin.bias)  # W (l * x) + b


def test_ia3_exports_as_plain_bert(minilm, tmp_path):
    model = copy.deepcopy(minilm["cls"][0])
    apply_method(model, MethodConfig("ia3"))
    with torch.no_grad():  # trained-looking vectors: with l = 1 the export would be the base model
        for _, m in mergeable_layers(model):
            m.ia3_l.normal_(1.0, 0.1)
    ids, mask, _ = batch(30522)
    unmerged = logits(model, ids, mask)
    out = export_merged(model, tmp_path / "merged", minilm["cls"][1])  # a plain BERT with l folded in
    assert not any(k.endswith("ia3_l") for k in load_file(str(out / "model.safetensors")))
    plain, _ = load_pretrained(out, num_labels=2, verbose=False)
    torch.testing.assert_close(logits(plain, ids, mask), unmerged, atol=1e-5, rtol=1e-5)
    assert not any(m.merged for _, m in mergeable_layers(model))
