"""audit.py: the groups partition every parameter, patterns are anchored, the optimizer holds exactly the
audited list, and the frozen-weights proof names a tensor that moved by one float step."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from adapters import METHODS, POOLER, TRAINABLE, MethodConfig, add_adapters, apply_method
from audit import GROUPS, assert_optimizer_matches, audit, fingerprint, group_of, verify_frozen
from helpers import ALL_TARGETS, CORE, NEW, SMALL, n_params, tiny
from lora import add_lora
from prompts import merge_prefix


def test_audit_groups_and_table(minilm):
    expected_groups = {"full": {g for g, _ in GROUPS} - {"adapters", "LoRA", "prompt", "prefix", "IA3", "pooler",
                                                          "4-bit weights"},
                       "bitfit": {"biases", "head"},
                       "adapter": {"adapters", "LayerNorm", "biases", "head"}, "lora": {"LoRA", "head"},
                       "head": {"head"}}
    for method in CORE:
        model = copy.deepcopy(minilm["mean"][0])
        trainable = apply_method(model, MethodConfig(method))
        a = audit(model, trainable, method)
        assert sum(n for _, _, n in a.rows) == n_params(model) == a.total
        assert {g for g, t, _ in a.rows if t} == expected_groups[method]
        assert a.trainable_bytes == 4 * a.trainable  # fp32
        table = a.table()
        assert "pooling mean" in table and table.endswith(a.line()) and "trainable%: " in a.line()
    with torch.no_grad():  # a flag flipped behind apply_method's back is caught
        model.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="requires_grad"):
        audit(model, trainable)
    model = copy.deepcopy(minilm["cls"][0])  # under [CLS] the pooler is a group of its own
    for cfg, pooler_trains in ((MethodConfig("lora"), 0), (MethodConfig("bitfit"), 384),
                               (MethodConfig("lora", train_pooler=True), 384 * 384 + 384)):
        m = copy.deepcopy(model)
        rows = {g: (t, n) for g, t, n in audit(m, apply_method(m, cfg), cfg.method).rows}
        assert rows["pooler"] == (pooler_trains, 384 * 384 + 384) and rows["head"] == (770, 770)


def test_groups_are_disjoint_and_cover(tiny_config):
    model = tiny(tiny_config, "cls")
    add_adapters(model, MethodConfig("adapter"))
    add_lora(model, MethodConfig("lora", lora_targets=ALL_TARGETS))
    names = [n for n, _ in model.named_parameters()]
    new_groups = {"prompt", "prefix", "IA3", "4-bit weights"}  # the new methods' modules: the next test
    assert {group_of(n) for n in names} == {g for g, _ in GROUPS} - new_groups  # group_of raises unless one matches
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="extra.weight"):
        group_of("extra.weight")


def test_groups_are_disjoint_and_cover_every_new_module(tiny_config):
    model = tiny(tiny_config, "cls")
    apply_method(model, MethodConfig("adapter+ia3+lora+prefix+prompt", adapter_size=4, **SMALL))
    names = [n for n, _ in model.named_parameters()]
    quantized = tiny(tiny_config, "cls")
    apply_method(quantized, MethodConfig("qlora", **SMALL))
    names += [n for n, _ in quantized.named_parameters()]  # QLoRA's 4-bit weights
    assert {group_of(n) for n in names} == {g for g, _ in GROUPS}  # group_of raises unless exactly one matches
    merge_prefix(model)
    assert group_of("bert.encoder.prefix.kv") == "prefix"
    assert set(METHODS) >= set(NEW)


def test_patterns_are_anchored():
    patterns = [p for ps in TRAINABLE.values() for p in ps] + [p for _, p in GROUPS] + list(POOLER)
    assert [p for p in patterns if not (p.startswith("^") or p.endswith("$"))] == []
    assert set(TRAINABLE) == set(METHODS)


def test_optimizer_must_hold_exactly_the_audited_list(tiny_config):
    model = tiny(tiny_config, "cls")
    trainable = apply_method(model, MethodConfig("lora"))
    assert_optimizer_matches(torch.optim.AdamW([p for _, p in trainable]), trainable)
    with pytest.raises(ValueError, match="extra"):
        assert_optimizer_matches(torch.optim.AdamW(model.parameters()), trainable)
    with pytest.raises(ValueError, match="classifier.bias"):
        assert_optimizer_matches(torch.optim.AdamW([p for n, p in trainable if n != "classifier.bias"]), trainable)


def test_verify_frozen_names_a_moved_tensor(tiny_config):
    model = tiny(tiny_config, "cls")
    apply_method(model, MethodConfig("bitfit"))
    fp = fingerprint(model)
    w = model.bert.encoder.layer[1].intermediate.dense.weight
    with torch.no_grad():  # the smallest possible change: one element to its next float
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(math.inf))
    assert verify_frozen(model, fp) == {"verdict": "failed", "checked": len(fp),
                                        "moved": ["bert.encoder.layer.1.intermediate.dense.weight"]}
