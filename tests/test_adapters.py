"""adapters.py / lora.py: trainable sets, frozen weights, init equivalence, merge, audit, checkpoints.

Counts are computed here by hand from the architecture's dimensions, never read back from the code.
MiniLM is loaded once per pooling (module fixture) and deep-copied per test.
"""
import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adapters import METHODS, TRAINABLE, Adapter, MethodConfig, add_adapters, apply_method
from audit import GROUPS, assert_frozen, assert_optimizer_matches, audit, fingerprint, group_of, verify_frozen
from saving import export_merged, load_trainable, save_trainable, tensor_digest
from lora import LORA_TARGETS, LoRALinear, add_lora, lora_layers, merge_lora, unmerge_lora
from model import BertConfig, BertForSequenceClassification, count_params, load_pretrained
from tokenizer import BertTokenizer

POOLINGS = ("mean", "cls")
CORE = ("full", "bitfit", "adapter", "lora", "head")  # prompt, prefix, ia3 and hybrids: test_peft_more.py
ALL_TARGETS = tuple(LORA_TARGETS)
MINILM = dict(H=384, I=1536, L=6, V=30522, P=512, T=2)  # all-MiniLM-L6-v2's config.json
BERT_BASE = dict(H=768, I=3072, L=12, V=30522, P=512, T=2)  # BertConfig() defaults


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    """{pooling: (model, tokenizer)}, loaded once; tests deep-copy the model."""
    # Seeded here: a module fixture is built before the per-test seed, after earlier tests have
    # drawn a variable number of random numbers (time-budget runs), so the new head would vary.
    torch.manual_seed(0)
    return {p: load_pretrained("minilm", num_labels=2, pooling=p, verbose=False) for p in POOLINGS}


def tiny(config, pooling):
    return BertForSequenceClassification(dataclasses.replace(config, pooling=pooling))


def batch(vocab_size):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, min(vocab_size, 2000), (2, 12), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # one padded row, so the mean pooling's mask matters
    return ids, mask, torch.tensor([0, 1])


def logits(model, ids, mask):
    model.eval()
    with torch.no_grad():
        return model(ids, mask)


# ------------------------------------------------------------------------- counts by hand
def hand_added(d, method, m=64, slots=2, r=8, targets=("query", "value")):
    """Parameters the method adds to the model: adapters' down/up, or LoRA's A/B."""
    H, I, L = d["H"], d["I"], d["L"]
    if method == "adapter":
        return L * slots * (H * m + m + m * H + H)  # down (H -> m) and up (m -> H), weights and biases
    if method == "lora":
        shape = {"query": (H, H), "key": (H, H), "value": (H, H), "attention.output.dense": (H, H),
                 "intermediate.dense": (H, I), "output.dense": (I, H)}  # (in, out)
        return L * sum(r * shape[t][0] + shape[t][1] * r for t in targets)  # A: (r, in), B: (out, r)
    return 0


def hand_count(d, method, pooling, labels=2, **added):
    H, I, L, V, P, T = d["H"], d["I"], d["L"], d["V"], d["P"], d["T"]
    head = H * labels + labels + (H * H + H if pooling == "cls" else 0)  # classifier (+ pooler dense)
    biases = L * (4 * H + I + H + 2 * H) + H  # q,k,v,attn-out; FFN in, out; two LayerNorms; embedding LN
    layernorms = L * 2 * 2 * H + 2 * H  # weight + bias of 2 LayerNorms per layer, plus the embedding LN
    if method == "full":
        layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
        return (V + P + T) * H + 2 * H + L * layer + head
    if method == "bitfit":
        return biases + head
    if method == "adapter":
        return hand_added(d, method, **added) + layernorms + head
    if method == "lora":
        return hand_added(d, method, **added) + head
    return head


VARIANTS = [(MethodConfig(m), {}) for m in CORE] + [
    (MethodConfig("adapter", adapter_size=8, adapter_placement="pfeiffer"), dict(m=8, slots=1)),
    (MethodConfig("lora", lora_r=4, lora_targets=ALL_TARGETS), dict(r=4, targets=ALL_TARGETS))]


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("cfg,kw", VARIANTS, ids=lambda v: getattr(v, "method", ""))
def test_minilm_counts_by_hand(minilm, pooling, cfg, kw):
    model = copy.deepcopy(minilm[pooling][0])
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size,
            c.max_position_embeddings, c.type_vocab_size) == tuple(MINILM.values())
    trainable = apply_method(model, cfg)
    a = audit(model, trainable, cfg.method)
    assert a.trainable == sum(p.numel() for _, p in trainable) == hand_count(MINILM, cfg.method, pooling, **kw)
    assert a.total == count_params(model) == hand_count(MINILM, "full", pooling) + hand_added(MINILM, cfg.method, **kw)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", CORE)
def test_bert_base_counts_by_hand(pooling, method):
    with torch.device("meta"):  # counts depend on shapes only: no memory, no init
        model = BertForSequenceClassification(BertConfig(pooling=pooling))
    trainable = apply_method(model, MethodConfig(method))
    assert sum(p.numel() for _, p in trainable) == hand_count(BERT_BASE, method, pooling)
    if method == "full":
        assert hand_count(BERT_BASE, "full", "cls") == 109_483_778  # bert-base-uncased 109,482,240 + 2-way head


# ------------------------------------------------------- one large step: frozen stays, trainable moves
def step_and_check(model, trainable, ids, mask, labels):
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable}
    fp = fingerprint(model)
    assert set(fp) == set(frozen)  # the model has no buffers; every frozen parameter is covered
    # lr 1e-2, not 1.0: Adam moves every parameter with a gradient by about lr, so any leak into a
    # frozen tensor still shows, while at 1.0 the first step could saturate [CLS] pooling's tanh to
    # exactly +-1 and leave LoRA's A with a zero gradient on the second (1 head init in 12 did).
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-2, weight_decay=0.0)
    assert_optimizer_matches(opt, trainable)
    model.train()
    for _ in range(2):  # LoRA's A gets a gradient only once B != 0, i.e. on the second step
        opt.zero_grad()
        F.cross_entropy(model(ids, mask), labels).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), f"frozen {n} moved"
    assert [n for n, p in trainable if torch.equal(p, before[n])] == []
    assert assert_frozen(model, fp) == {"verdict": "passed", "checked": len(frozen)}


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", CORE)
def test_step_tiny(tiny_config, pooling, method):
    model = tiny(tiny_config, pooling)
    step_and_check(model, apply_method(model, MethodConfig(method, adapter_size=4, lora_targets=ALL_TARGETS)),
                   *batch(tiny_config.vocab_size))


def test_verify_frozen_names_a_moved_tensor(tiny_config):
    model = tiny(tiny_config, "cls")
    apply_method(model, MethodConfig("bitfit"))
    fp = fingerprint(model)
    w = model.bert.encoder.layer[1].intermediate.dense.weight
    with torch.no_grad():  # the smallest possible change: one element to its next float
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(math.inf))
    assert verify_frozen(model, fp) == {"verdict": "failed", "checked": len(fp),
                                        "moved": ["bert.encoder.layer.1.intermediate.dense.weight"]}
    with pytest.raises(RuntimeError, match="intermediate.dense.weight"):
        assert_frozen(model, fp)


# ------------------------------------------------------------------------- init equivalence
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


def test_lora_linear_formula_init_and_dropout():
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    lin = LoRALinear.from_linear(base, r=4, alpha=8, dropout=0.5)
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


# -------------------------------------------------------------------------------- merge
def test_merge_unmerge(minilm):
    model = copy.deepcopy(minilm["cls"][0])
    apply_method(model, MethodConfig("lora", lora_targets=ALL_TARGETS))
    fp = fingerprint(model)
    layers = [m for _, m in lora_layers(model)]
    assert len(layers) == 6 * 6
    with torch.no_grad():  # a trained-looking update: with B = 0 merging would be a no-op
        for m in layers:
            m.lora_B.normal_(std=0.02)
    ids, mask, _ = batch(30522)
    w0 = [m.weight.detach().clone() for m in layers]
    unmerged = logits(model, ids, mask)  # .eval() inside: must not merge
    assert not any(m.merged for m in layers) and all(torch.equal(m.weight, w) for m, w in zip(layers, w0))
    assert merge_lora(model) == 36
    w1 = [m.weight.detach().clone() for m in layers]
    assert not any(torch.equal(a, b) for a, b in zip(w0, w1))
    torch.testing.assert_close(logits(model, ids, mask), unmerged, atol=1e-5, rtol=0)
    merge_lora(model)  # twice == once
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, w1))
    with pytest.raises(RuntimeError, match="unmerge"):
        verify_frozen(model, fp)
    unmerge_lora(model)
    unmerge_lora(model)
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, w0))  # bit-identical, not approximately
    assert verify_frozen(model, fp)["verdict"] == "passed"
    assert torch.equal(logits(model, ids, mask), unmerged)


# ------------------------------------------------------------------------------- audit, optimizer
def test_audit_groups_and_table(minilm):
    expected_groups = {"full": {g for g, _ in GROUPS} - {"adapters", "LoRA", "prompt", "prefix", "IA3"},
                       "bitfit": {"biases", "head"},
                       "adapter": {"adapters", "LayerNorm", "biases", "head"}, "lora": {"LoRA", "head"},
                       "head": {"head"}}
    for method in CORE:
        model = copy.deepcopy(minilm["mean"][0])
        trainable = apply_method(model, MethodConfig(method))
        a = audit(model, trainable, method)
        assert sum(n for _, _, n in a.rows) == count_params(model) == a.total
        assert {g for g, t, _ in a.rows if t} == expected_groups[method]
        assert a.trainable_bytes == 4 * a.trainable  # fp32
        table = a.table()
        assert "pooling mean" in table and table.endswith(a.line()) and "trainable%: " in a.line()
        assert json.loads(json.dumps(a.to_dict()))["trainable"] == a.trainable
    with torch.no_grad():  # a flag flipped behind apply_method's back is caught
        model.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="requires_grad"):
        audit(model, trainable)


def test_groups_are_disjoint_and_cover(tiny_config):
    model = tiny(tiny_config, "cls")
    add_adapters(model, MethodConfig("adapter"))
    add_lora(model, MethodConfig("lora", lora_targets=ALL_TARGETS))
    names = [n for n, _ in model.named_parameters()]
    new_groups = {"prompt", "prefix", "IA3"}  # the new methods' modules: test_peft_more.py
    assert {group_of(n) for n in names} == {g for g, _ in GROUPS} - new_groups  # group_of raises unless one matches
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="extra.weight"):
        group_of("extra.weight")


def test_patterns_are_anchored():
    patterns = [p for ps in TRAINABLE.values() for p in ps] + [p for _, p in GROUPS]
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


# ------------------------------------------------------------------------- config errors, surgery
@pytest.mark.parametrize("bad,match", [
    (dict(method="prefix-tuning"), r"method 'prefix-tuning': allowed \['full', 'bitfit', 'adapter', 'lora', 'head', "
                                    r"'prompt', 'prefix', 'ia3'\], or several joined by '\+'"),
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


def test_lora_targets_match_whole_names(tiny_config):
    model = tiny(tiny_config, "cls")
    assert add_lora(model, MethodConfig("lora", lora_targets=("output.dense",))) == \
        ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert type(model.bert.encoder.layer[0].attention.output.dense) is nn.Linear
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, MethodConfig("lora", lora_targets=("output.dense",)))


def test_adapter_placement_and_twice(tiny_config):
    model = tiny(tiny_config, "cls")
    assert add_adapters(model, MethodConfig("adapter", adapter_placement="pfeiffer")) == \
        ["bert.encoder.layer.0.output.adapter", "bert.encoder.layer.1.output.adapter"]
    assert isinstance(model.bert.encoder.layer[0].attention.output.adapter, nn.Identity)
    with pytest.raises(ValueError, match="already filled"):
        apply_method(model, MethodConfig("adapter"))


# --------------------------------------------------------------------------------- checkpoints
def expected_keys(method, pooling, L=6):
    head = {"classifier.weight", "classifier.bias"}
    head |= {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} if pooling == "cls" else set()
    layer = [f"bert.encoder.layer.{i}." for i in range(L)]
    if method == "lora":
        return head | {f"{p}attention.self.{t}.lora_{x}" for p in layer for t in ("query", "value") for x in "AB"}
    if method == "bitfit":
        mods = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
        return head | {"bert.embeddings.LayerNorm.bias"} | {f"{p}{m}.bias" for p in layer for m in mods}
    if method == "adapter":
        lns = {f"bert.embeddings.LayerNorm.{w}" for w in ("weight", "bias")}
        lns |= {f"{p}{m}.LayerNorm.{w}" for p in layer for m in ("attention.output", "output")
                for w in ("weight", "bias")}
        return head | lns | {f"{p}{s}.adapter.{lin}.{w}" for p in layer for s in ("attention.output", "output")
                             for lin in ("down", "up") for w in ("weight", "bias")}
    return head


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", CORE)
def test_minilm_step_save_load(minilm, tmp_path, pooling, method):
    """A large step moves every trainable tensor and no frozen one; the checkpoint holds exactly the
    expected keys; loading it reproduces the trained model's outputs exactly."""
    model = copy.deepcopy(minilm[pooling][0])
    cfg = MethodConfig(method, lora_r=4)
    trainable = apply_method(model, cfg)
    step_and_check(model, trainable, *batch(30522))  # trained values, not a reproducible init
    path = tmp_path / "trainable.safetensors"
    save_trainable(model, trainable, cfg, path, {"task": "MRPC", "seed": 7})
    keys = set(load_file(str(path)))
    if method == "full":
        assert keys == set(minilm[pooling][0].state_dict())
    else:
        assert keys == expected_keys(method, pooling)
    loaded, _, meta = load_trainable(path)
    assert (meta["method"], meta["task"], meta["seed"], meta["pooling"], meta["num_labels"]) == \
        (method, "MRPC", 7, pooling, 2)
    assert MethodConfig.from_json(json.dumps(meta["method_config"])) == cfg
    ids, mask, _ = batch(30522)
    assert torch.equal(logits(loaded, ids, mask), logits(model, ids, mask))


def test_load_errors_name_the_key(minilm, tmp_path):
    model = copy.deepcopy(minilm["mean"][0])
    cfg = MethodConfig("lora")
    trainable = apply_method(model, cfg)
    path = tmp_path / "t.safetensors"
    save_trainable(model, trainable, cfg, path, {})
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    key = "bert.encoder.layer.3.attention.self.value.lora_A"

    def save_with_digest(tensors, path):  # a well-formed file that holds other tensors than the model's
        save_file(tensors, str(path), {**header, "tensor_digest": tensor_digest(tensors)})

    save_with_digest({k: v for k, v in tensors.items() if k != key}, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=f"missing from the checkpoint \\['{key}'\\]"):
        load_trainable(tmp_path / "missing.safetensors")
    save_with_digest({**tensors, key: torch.zeros(3, 384)}, tmp_path / "shape.safetensors")
    with pytest.raises(ValueError, match=r"value.lora_A: checkpoint \(3, 384\), model \(8, 384\)"):
        load_trainable(tmp_path / "shape.safetensors")
    with torch.no_grad():  # a frozen weight that moved: the checkpoint no longer fits the base model
        model.bert.encoder.layer[0].attention.self.key.weight[0, 0] += 1.0
    save_trainable(model, trainable, cfg, tmp_path / "moved.safetensors", {})
    with pytest.raises(ValueError, match="frozen tensors"):
        load_trainable(tmp_path / "moved.safetensors")


def test_corrupted_or_truncated_checkpoint_is_refused_naming_the_file(minilm, tmp_path):
    """One flipped byte inside a tensor's data loads silently from safetensors alone (a logit moved
    from -0.17 to 925.9 in the issue's trial); the digest in the header refuses it."""
    model = copy.deepcopy(minilm["mean"][0])
    cfg = MethodConfig("lora")
    trainable = apply_method(model, cfg)
    path = tmp_path / "best.safetensors"
    save_trainable(model, trainable, cfg, path, {})
    raw = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")  # u64 header length, JSON header, then tensor bytes
    flipped = bytearray(raw)
    flipped[data_start + 1001] ^= 0x40
    (tmp_path / "flipped.safetensors").write_bytes(flipped)
    load_file(str(tmp_path / "flipped.safetensors"))  # safetensors itself does not notice
    with pytest.raises(ValueError, match=r"flipped\.safetensors: corrupted"):
        load_trainable(tmp_path / "flipped.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.safetensors: not a readable safetensors file"):
        load_trainable(tmp_path / "cut.safetensors")
    load_trainable(path)  # the untouched file still loads


@pytest.mark.parametrize("pooling", POOLINGS)
def test_export_merged_loads_as_plain_bert(minilm, tmp_path, pooling):
    base, tok = minilm[pooling]
    model = copy.deepcopy(base)
    apply_method(model, MethodConfig("lora", lora_targets=ALL_TARGETS))
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.normal_(std=0.02)
    w0 = [m.weight.detach().clone() for _, m in lora_layers(model)]
    out = export_merged(model, tmp_path / "merged", tok)
    assert not any(m.merged for _, m in lora_layers(model))  # left as found, weights exact
    assert all(torch.equal(m.weight, w) for (_, m), w in zip(lora_layers(model), w0))
    assert set(load_file(str(out / "model.safetensors"))) == set(base.state_dict())  # no lora_ keys
    plain, tok2 = load_pretrained(out, num_labels=2, verbose=False)
    assert plain.config.pooling == pooling and plain.load_report.new == []
    ids, mask, _ = batch(30522)
    torch.testing.assert_close(logits(plain, ids, mask), logits(model, ids, mask), atol=1e-5, rtol=0)
    text = ["Merged LoRA exports tokenize the same."]
    assert isinstance(tok2, BertTokenizer) and tok2(text) == tok(text)
    adapter_model = copy.deepcopy(base)
    apply_method(adapter_model, MethodConfig("adapter"))
    with pytest.raises(ValueError, match="adapters cannot be merged"):
        export_merged(adapter_model, tmp_path / "nope")
