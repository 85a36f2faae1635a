"""Every method's trainable set: counts by hand, one large step that moves every trainable tensor and
no frozen one, exact merge and unmerge, hybrids as unions, bad configurations refused, bf16 autocast.

Counts are computed here by hand from the architecture's dimensions, never read back from the code.
"""
import copy
import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

import adapters
from adapters import (METHODS, TRAINABLE, MethodConfig, apply_method, canonical_method, merge, mergeable_layers, method_parts,
                      trainable_params, unmerge)
from audit import audit, fingerprint, verify_frozen
from helpers import (ALL_TARGETS, BERT_BASE, CORE, HYBRIDS, MINILM, NEW, POOLINGS, SMALL, batch, count_union,
                     logits, n_params, step_and_check, tiny)
from model import BertConfig, BertForSequenceClassification


# ------------------------------------------------------- counts by hand: full, bitfit, adapter, lora, head
def added_core(d, method, m=64, slots=2, r=8, targets=("query", "value")):
    """Parameters the method adds to the model: adapters' down/up, or LoRA's A/B."""
    H, I, L = d["H"], d["I"], d["L"]
    if method == "adapter":
        return L * slots * (H * m + m + m * H + H)  # down (H -> m) and up (m -> H), weights and biases
    if method == "lora":
        shape = {"query": (H, H), "key": (H, H), "value": (H, H), "attention.output.dense": (H, H),
                 "intermediate.dense": (H, I), "output.dense": (I, H)}  # (in, out)
        return L * sum(r * shape[t][0] + shape[t][1] * r for t in targets)  # A: (r, in), B: (out, r)
    return 0


def count_core(d, method, pooling, labels=2, train_pooler=False, **added):
    """Trainable parameters from the dimensions alone. The pooler (dense H -> H, [CLS] only) is
    backbone: it trains under full, its bias under bitfit, all of it with train_pooler."""
    H, I, L, V, P, T = d["H"], d["I"], d["L"], d["V"], d["P"], d["T"]
    head = H * labels + labels  # the classifier
    pooler_w, pooler_b = (H * H, H) if pooling == "cls" else (0, 0)
    biases = L * (4 * H + I + H + 2 * H) + H + pooler_b  # q,k,v,attn-out; FFN in, out; 2 LNs; emb. LN; pooler
    layernorms = L * 2 * 2 * H + 2 * H  # weight + bias of 2 LayerNorms per layer, plus the embedding LN
    if method == "full":
        layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
        return (V + P + T) * H + 2 * H + L * layer + pooler_w + pooler_b + head
    if method == "bitfit":
        return biases + head + (pooler_w if train_pooler else 0)
    pooler = pooler_w + pooler_b if train_pooler else 0
    if method == "adapter":
        return added_core(d, method, **added) + layernorms + head + pooler
    if method == "lora":
        return added_core(d, method, **added) + head + pooler
    return head + pooler


VARIANTS = [(MethodConfig(m), {}) for m in CORE] + [
    (MethodConfig("adapter", adapter_size=8, adapter_placement="pfeiffer"), dict(m=8, slots=1)),
    (MethodConfig("lora", lora_r=4, lora_targets=ALL_TARGETS), dict(r=4, targets=ALL_TARGETS))] + [
    (MethodConfig(m, train_pooler=True), dict(train_pooler=True)) for m in ("bitfit", "lora", "head")]


@pytest.mark.parametrize("pooling,cfg,kw", [(pooling, cfg, kw) for pooling in POOLINGS for cfg, kw in VARIANTS
                                             if pooling == "cls" or not cfg.train_pooler],  # mean: no pooler
                         ids=lambda v: v if isinstance(v, str) else v.method if isinstance(v, MethodConfig) else
                         ",".join(f"{k}={len(x) if isinstance(x, tuple) else x}" for k, x in v.items()))
def test_minilm_counts_by_hand_core(minilm, pooling, cfg, kw):
    model = copy.deepcopy(minilm[pooling][0])
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size,
            c.max_position_embeddings, c.type_vocab_size) == tuple(MINILM.values())
    trainable = apply_method(model, cfg)
    a = audit(model, trainable, cfg.method)
    assert a.trainable == sum(p.numel() for _, p in trainable) == count_core(MINILM, cfg.method, pooling, **kw)
    added = added_core(MINILM, cfg.method, **{k: v for k, v in kw.items() if k != "train_pooler"})
    assert a.total == n_params(model) == count_core(MINILM, "full", pooling) + added


@pytest.mark.parametrize("pooling,train_pooler", [("mean", False), ("cls", False), ("cls", True)])
@pytest.mark.parametrize("method", CORE)
def test_bert_base_counts_by_hand_core(pooling, method, train_pooler):
    with torch.device("meta"):  # counts depend on shapes only: no memory, no init
        model = BertForSequenceClassification(BertConfig(pooling=pooling))
    trainable = apply_method(model, MethodConfig(method, train_pooler=train_pooler))
    assert sum(p.numel() for _, p in trainable) == count_core(BERT_BASE, method, pooling, train_pooler=train_pooler)
    if method == "full":
        assert count_core(BERT_BASE, "full", "cls") == 109_483_778  # bert-base-uncased 109,482,240 + 2-way head


# Issue 14's figures (MiniLM, [CLS] pooling, 2 labels), typed in: a check on the formulas above too.
ISSUE_COUNTS = {"full": 22_713_986, "bitfit": 26_882, "lora": 74_498, "head": 770, "adapter": 605_954,
                "ia3": 14_594, "bitfit+lora": 100_610, "bitfit --train-pooler": 174_338}


def test_minilm_cls_counts_as_the_papers_define_them(minilm):
    for name, expected in ISSUE_COUNTS.items():
        method, *flag = name.split()
        model = copy.deepcopy(minilm["cls"][0])
        trainable = apply_method(model, MethodConfig(method, train_pooler=bool(flag)))
        assert sum(p.numel() for _, p in trainable) == expected, name
        if "full" not in method and "bitfit" not in method:  # the pooler is backbone: frozen, weight and bias
            assert not any(n.startswith("bert.pooler.") for n, _ in trainable), name
    names = {n for n, _ in apply_method(copy.deepcopy(minilm["cls"][0]), MethodConfig("bitfit"))}
    assert "bert.pooler.dense.bias" in names and "bert.pooler.dense.weight" not in names  # a bias like any other
    assert count_core(MINILM, "bitfit", "cls", train_pooler=True) == ISSUE_COUNTS["bitfit --train-pooler"]


# --------------------------------------------------------- checks that can fail: the table itself
def test_pattern_that_claims_nothing_raises(tiny_config, monkeypatch):
    """A typo in a row used to leave only the head training, silently; now apply_method names it."""
    model = tiny(tiny_config, "cls")
    monkeypatch.setitem(TRAINABLE, "lora", (r"\.lora[AB]$",) + adapters.HEAD)  # "_" dropped
    typo = re.escape(r"method 'lora': pattern r'\.lora[AB]$' of 'lora' claims no parameter")
    with pytest.raises(ValueError, match=typo):
        apply_method(model, MethodConfig("lora"))
    assert all(p.requires_grad for p in model.parameters())  # raised before any flag was set
    with pytest.raises(ValueError, match=r"method 'bitfit\+lora': pattern .* of 'lora' claims no parameter"):
        apply_method(tiny(tiny_config, "cls"), MethodConfig("bitfit+lora"))  # in a hybrid too
    monkeypatch.setitem(TRAINABLE, "lora", (r"\.lora_A$",) + adapters.HEAD)  # claims something, not all
    with pytest.raises(ValueError, match=r"method 'lora': parameters it inserted .* would stay frozen: "
                                         r"\['bert\.encoder\.layer\.0\.attention\.self\.query\.lora_B'"):
        apply_method(tiny(tiny_config, "cls"), MethodConfig("lora"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"of 'pooler' claims no parameter of this model; this model has no "
                                         r"pooler \(pooling 'mean'\)"):
        apply_method(tiny(tiny_config, "mean"), MethodConfig("bitfit", train_pooler=True))
    assert len(apply_method(tiny(tiny_config, "cls"), MethodConfig("lora"))) == 2 * 2 * 2 + 2  # the real row


def test_every_pattern_claims_a_parameter_in_every_method(tiny_config):
    """No pattern in force is dead weight, under either pooling, alone or in a hybrid."""
    for pooling in POOLINGS:
        for method in METHODS + ("adapter+bitfit+ia3+prefix+prompt",):
            apply_method(tiny(tiny_config, pooling), MethodConfig(method, train_pooler=pooling == "cls"))


# ------------------------- counts by hand: prompt, prefix, ia3 and hybrids (helpers.count_union)
def added_new(d, method, V=20, P=20, h=512, merged=False, **_):
    """Parameters the new methods add to the model."""
    H, I, L = d["H"], d["I"], d["L"]
    added = {"prompt": V * H, "ia3": L * (2 * H + I),
             "prefix": L * 2 * P * H if merged else P * H + (H * h + h) + (h * L * 2 * H + L * 2 * H)}
    return sum(added[p] for p in method.split("+"))


def test_hand_count_matches_the_old_formulas():
    """count_union agrees with count_core for the methods both cover (cross-check)."""
    H, I, L = 384, 1536, 6
    assert count_union(MINILM, "bitfit+lora", "mean") == L * (4 * H + I + 3 * H) + H + L * 4 * 8 * H + 2 * H + 2
    assert count_union(MINILM, "adapter+bitfit", "mean") == 626_690  # hand-added below: 595,200 + 4,992 + 25,728 + 770
    assert count_union(MINILM, "bitfit+lora", "cls") == 100_610  # issue 14's figure: + the pooler's bias


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method,kw", [(m, {}) for m in NEW] + [
    ("prompt", dict(V=5)), ("prefix", dict(P=4, h=32)), ("bitfit+lora", {}), ("adapter+bitfit", {})],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{x}" for k, x in v.items()))
def test_minilm_counts_by_hand_new(minilm, pooling, method, kw):
    model = copy.deepcopy(minilm[pooling][0])
    opts = {"prompt_length": kw.get("V", 20), "prefix_length": kw.get("P", 20), "prefix_hidden": kw.get("h", 512)}
    trainable = apply_method(model, MethodConfig(method, **opts))
    a = audit(model, trainable, method)
    assert a.trainable == sum(p.numel() for _, p in trainable) == count_union(MINILM, method, pooling, **kw)
    if method in NEW:
        assert a.total == n_params(model) == n_params(minilm[pooling][0]) + added_new(MINILM, method, **kw)


@pytest.mark.parametrize("pooling,train_pooler", [("mean", False), ("cls", False), ("cls", True)])
@pytest.mark.parametrize("method", NEW + ("bitfit+lora", "adapter+bitfit"))
def test_bert_base_counts_by_hand_new(pooling, method, train_pooler):
    with torch.device("meta"):  # counts depend on shapes only: no memory, no init
        model = BertForSequenceClassification(BertConfig(pooling=pooling))
    trainable = apply_method(model, MethodConfig(method, train_pooler=train_pooler))
    assert sum(p.numel() for _, p in trainable) == count_union(BERT_BASE, method, pooling, train_pooler=train_pooler)
    if method == "prefix":  # 20 x 768 + 768 x 512 + 512 + 512 x 18,432 + 18,432
        assert count_union(BERT_BASE, "prefix", "mean") - 1538 == 9_864_704


# ------------------------------------------------------- one large step: frozen stays, trainable moves
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", CORE)
def test_step_tiny_core(tiny_config, pooling, method):
    model = tiny(tiny_config, pooling)
    step_and_check(model, apply_method(model, MethodConfig(method, adapter_size=4, lora_targets=ALL_TARGETS)),
                   *batch(tiny_config.vocab_size))


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", NEW + HYBRIDS)
def test_step_tiny_new_and_hybrids(tiny_config, pooling, method):
    model = tiny(tiny_config, pooling)
    step_and_check(model, apply_method(model, MethodConfig(method, adapter_size=4, **SMALL)),
                   *batch(tiny_config.vocab_size))


# ------------------------------------------------------------------------------- merging
def perturb_lora(m):
    m.lora_B.normal_(std=0.02)


def perturb_ia3(m):
    m.ia3_l.normal_(1.0, 0.1)


@pytest.mark.parametrize("cfg,count,perturb", [(MethodConfig("lora", lora_targets=ALL_TARGETS), 6 * 6, perturb_lora),
                                               (MethodConfig("ia3"), 6 * 3, perturb_ia3)], ids=("lora", "ia3"))
def test_merge_unmerge(minilm, cfg, count, perturb):
    """adapters.merge/unmerge over every LoRA and (IA)^3 layer: outputs kept, idempotent, never on
    .eval(), the frozen-weights proof refused while merged, weights and biases restored bit for bit."""
    model = copy.deepcopy(minilm["cls"][0])
    apply_method(model, cfg)
    fp = fingerprint(model)
    layers = [m for _, m in mergeable_layers(model)]
    with torch.no_grad():  # a trained-looking update: at init merging would be a no-op
        for m in layers:
            perturb(m)
    ids, mask, _ = batch(30522)
    w0 = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in layers]
    unmerged = logits(model, ids, mask)  # .eval() inside: must not merge
    assert not any(m.merged for m in layers)
    assert merge(model) == count
    w1 = [m.weight.detach().clone() for m in layers]
    assert not any(torch.equal(w, b) for (w, _), b in zip(w0, w1))
    torch.testing.assert_close(logits(model, ids, mask), unmerged, atol=1e-5, rtol=1e-5)
    merge(model)  # twice == once
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, w1))
    with pytest.raises(RuntimeError, match="unmerge"):
        verify_frozen(model, fp)
    unmerge(model)
    unmerge(model)
    assert all(torch.equal(m.weight, w) and torch.equal(m.bias, b) for m, (w, b) in zip(layers, w0))  # bit for bit
    assert verify_frozen(model, fp)["verdict"] == "passed"
    assert torch.equal(logits(model, ids, mask), unmerged)


# ------------------------------------------------------------------------------- hybrids
def test_hybrid_names_are_canonical_and_checked():
    assert MethodConfig("lora+bitfit").method == "bitfit+lora" == canonical_method("bitfit+lora")
    assert method_parts("prompt+ia3+lora") == ("ia3", "lora", "prompt")
    for bad, match in [("lora+nope", r"unknown part 'nope'; allowed parts \['bitfit', 'adapter', 'lora', 'prompt'"),
                       ("lora+", "unknown part ''"), ("lora+lora", "'lora' appears twice"),
                       ("full+lora", "'full' cannot be part of a hybrid: it already trains every parameter"),
                       ("head+bitfit", "'head' cannot be part of a hybrid"),
                       ("lora-bitfit", r"allowed \['full', 'bitfit', 'adapter', 'lora', 'head', 'prompt', 'prefix', "
                                       r"'ia3', 'qlora'\], or several joined by '\+'")]:
        with pytest.raises(ValueError, match=match):
            MethodConfig(bad)
    with pytest.raises(ValueError, match=r"lora_targets \['value'\] are layers \(IA\)\^3 rescales"):
        MethodConfig("ia3+lora").validate()  # the default targets query, value: value is (IA)^3's too
    MethodConfig("ia3+lora", lora_targets=("query",)).validate()


@pytest.mark.parametrize("train_pooler", (False, True))
@pytest.mark.parametrize("method", HYBRIDS)
def test_hybrid_trains_the_union_of_its_parts(tiny_config, method, train_pooler):
    cfg = MethodConfig(method, adapter_size=4, train_pooler=train_pooler, **SMALL)
    hybrid = tiny(tiny_config, "cls")
    names = {n for n, _ in apply_method(hybrid, cfg)}
    union = set()
    for part in method_parts(method):
        alone = tiny(tiny_config, "cls")
        union |= {n for n, _ in apply_method(alone, dataclasses.replace(cfg, method=part))}
    assert names == union
    a = audit(hybrid, trainable_params(hybrid), method, train_pooler)
    parts = {p: (claimed, alone) for p, claimed, alone in a.parts}
    assert ("pooler" in parts) == train_pooler  # the pooler's pattern is a part of its own
    assert sum(alone for p, (_, alone) in parts.items()) == a.trainable  # alone + shared cover the union once
    assert parts["shared"][0] >= sum(p.numel() for n, p in hybrid.named_parameters() if n.startswith("classifier."))
    assert "part" in a.table() and "shared" in a.table()


# ------------------------------------------------------------------------- config errors, precision
@pytest.mark.parametrize("bad,match", [
    (dict(method="prefix-tuning"), r"method 'prefix-tuning': allowed \['full', 'bitfit', 'adapter', 'lora', 'head', "
                                    r"'prompt', 'prefix', 'ia3', 'qlora'\], or several joined by '\+'"),
    (dict(method="lora", lora_targets=("query_proj",)), r"lora target 'query_proj': allowed \['query'"),
    (dict(method="lora", lora_targets="query"), r"non-empty tuple of distinct names from \['query'"),
    (dict(method="lora", lora_targets=("query", "query")), "distinct"),
    (dict(method="adapter", adapter_placement="parallel"), r"allowed \['houlsby', 'pfeiffer'\]"),
    (dict(method="adapter", adapter_act="swish"), "adapter_act 'swish': allowed"),
])
def test_bad_config_raises(tiny_config, bad, match):
    model = tiny(tiny_config, "cls")
    with pytest.raises(ValueError, match=match):  # a bad method name is refused by MethodConfig itself
        apply_method(model, MethodConfig(**bad))
    assert all(p.requires_grad for p in model.parameters())  # rejected before touching the model


@pytest.mark.parametrize("method", NEW)
def test_bf16_autocast_forward_backward(tiny_config, method):
    """Under autocast the added tensors are fp32 and the activations bf16: no dtype clash."""
    model = tiny(tiny_config, "cls")
    apply_method(model, MethodConfig(method, **SMALL))
    ids, mask, labels = batch(tiny_config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask)
    F.cross_entropy(out.float(), labels).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for _, p in trainable_params(model))
