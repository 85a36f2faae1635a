"""prompts.py, ia3.py and hybrids: trainable sets, frozen weights, init, merge, masks, pooling, checkpoints.

Counts are computed here by hand from the architecture's dimensions, never read back from the code.
MiniLM is loaded once per pooling (module fixture) and deep-copied per test.
"""
import argparse
import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from adapters import METHODS, MethodConfig, apply_method, canonical_method, method_parts, trainable_params
from audit import GROUPS, audit, fingerprint, group_of, verify_frozen
from saving import export_merged, load_trainable, save_trainable
from test_adapters import minilm, step_and_check  # noqa: F401 (a fixture); the same proof as for the core methods
from config import default_lr, method_flag, parse_args
from ia3 import IA3Linear, ia3_layers, merge_ia3, unmerge_ia3
from model import BertConfig, BertForSequenceClassification, count_params, load_pretrained
from prompts import PROMPT_INIT_IDS, PrefixEncoder, merge_prefix

POOLINGS = ("mean", "cls")
MINILM = dict(H=384, I=1536, L=6, V=30522, P=512, T=2, N=12)  # all-MiniLM-L6-v2's config.json
BERT_BASE = dict(H=768, I=3072, L=12, V=30522, P=512, T=2, N=12)  # BertConfig() defaults
NEW = ("prompt", "prefix", "ia3")
HYBRIDS = ("bitfit+lora", "adapter+bitfit", "bitfit+ia3", "prefix+prompt", "ia3+lora+prompt")
SMALL = dict(prompt_length=5, prefix_length=4, prefix_hidden=32, lora_targets=("query",))  # fits ia3+lora


def tiny(config, pooling):
    return BertForSequenceClassification(dataclasses.replace(config, pooling=pooling))


def batch(vocab_size, pad_from=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, min(vocab_size, 2000), (2, 12), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, pad_from:] = 0  # one padded row
    return ids, mask, torch.tensor([0, 1])


def logits(model, ids, mask, types=None):
    model.eval()
    with torch.no_grad():
        return model(ids, mask, types)


# ------------------------------------------------------------------------- counts by hand
def hand_count(d, method, pooling, V=20, P=20, h=512, r=8, m=64, labels=2, merged=False, train_pooler=False):
    """Trainable parameters of a method (a hybrid: of the union), from the dimensions alone. The
    pooler ([CLS] only) is backbone: bitfit trains its bias, train_pooler its weight and bias."""
    H, I, L = d["H"], d["I"], d["L"]
    head = H * labels + labels  # the classifier
    pooler_w, pooler_b = (H * H, H) if pooling == "cls" else (0, 0)
    biases = L * (4 * H + I + H + 2 * H) + H + pooler_b  # q,k,v,attn-out; FFN in, out; 2 LNs; emb. LN; pooler
    ln_gains = L * 2 * H + H  # LayerNorm weights; their biases are in `biases`
    own = {
        "prompt": V * H,  # V vectors of size H
        "prefix": L * 2 * P * H if merged else P * H + (H * h + h) + (h * L * 2 * H + L * 2 * H),  # P' + MLP
        "ia3": L * (H + H + I),  # l_k, l_v, l_ff per layer
        "lora": L * 2 * (r * H + H * r),  # A (r, H) and B (H, r) on query and value
        "adapter": L * 2 * (H * m + m + m * H + H) + ln_gains,  # plus LayerNorm gains (biases: below)
        "bitfit": 0,
    }
    parts = method.split("+")
    n = sum(own[p] for p in parts) + head + (pooler_w if train_pooler else 0)
    if "bitfit" in parts:
        n += biases  # every backbone bias, the LayerNorms' and the pooler's included
    else:
        n += pooler_b if train_pooler else 0
        if "adapter" in parts:
            n += L * 2 * H + H  # the LayerNorms' biases
    return n


def hand_added(d, method, V=20, P=20, h=512, merged=False, **_):
    """Parameters the new methods add to the model."""
    H, I, L = d["H"], d["I"], d["L"]
    added = {"prompt": V * H, "ia3": L * (2 * H + I),
             "prefix": L * 2 * P * H if merged else P * H + (H * h + h) + (h * L * 2 * H + L * 2 * H)}
    return sum(added[p] for p in method.split("+"))


def test_hand_count_matches_the_old_formulas():
    """The formula above agrees with test_adapters.py's for the methods both cover (cross-check)."""
    H, I, L = 384, 1536, 6
    assert hand_count(MINILM, "bitfit+lora", "mean") == L * (4 * H + I + 3 * H) + H + L * 4 * 8 * H + 2 * H + 2
    assert hand_count(MINILM, "adapter+bitfit", "mean") == 626_690  # hand-added below: 595,200 + 4,992 + 25,728 + 770
    assert hand_count(MINILM, "bitfit+lora", "cls") == 100_610  # issue 14's figure: + the pooler's bias


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method,kw", [(m, {}) for m in NEW] + [
    ("prompt", dict(V=5)), ("prefix", dict(P=4, h=32)), ("bitfit+lora", {}), ("adapter+bitfit", {})],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{x}" for k, x in v.items()))
def test_minilm_counts_by_hand(minilm, pooling, method, kw):
    model = copy.deepcopy(minilm[pooling][0])
    opts = {"prompt_length": kw.get("V", 20), "prefix_length": kw.get("P", 20), "prefix_hidden": kw.get("h", 512)}
    trainable = apply_method(model, MethodConfig(method, **opts))
    a = audit(model, trainable, method)
    assert a.trainable == sum(p.numel() for _, p in trainable) == hand_count(MINILM, method, pooling, **kw)
    if method in NEW:
        assert a.total == count_params(model) == count_params(minilm[pooling][0]) + hand_added(MINILM, method, **kw)


@pytest.mark.parametrize("pooling,train_pooler", [("mean", False), ("cls", False), ("cls", True)])
@pytest.mark.parametrize("method", NEW + ("bitfit+lora", "adapter+bitfit"))
def test_bert_base_counts_by_hand(pooling, method, train_pooler):
    with torch.device("meta"):  # counts depend on shapes only: no memory, no init
        model = BertForSequenceClassification(BertConfig(pooling=pooling))
    trainable = apply_method(model, MethodConfig(method, train_pooler=train_pooler))
    assert sum(p.numel() for _, p in trainable) == hand_count(BERT_BASE, method, pooling, train_pooler=train_pooler)
    if method == "prefix":  # 20 x 768 + 768 x 512 + 512 + 512 x 18,432 + 18,432
        assert hand_count(BERT_BASE, "prefix", "mean") - 1538 == 9_864_704


# ------------------------------------------------------- one large step: frozen stays, trainable moves
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", NEW + HYBRIDS)
def test_step_tiny(tiny_config, pooling, method):
    model = tiny(tiny_config, pooling)
    step_and_check(model, apply_method(model, MethodConfig(method, adapter_size=4, **SMALL)),
                   *batch(tiny_config.vocab_size))


# ------------------------------------------------------------------------------- hybrids
def test_hybrid_names_are_canonical_and_checked():
    assert MethodConfig("lora+bitfit").method == "bitfit+lora" == canonical_method("bitfit+lora")
    assert method_parts("prompt+ia3+lora") == ("ia3", "lora", "prompt")
    for bad, match in [("lora+nope", r"unknown part 'nope'; allowed parts \['bitfit', 'adapter', 'lora', 'prompt'"),
                       ("lora+", "unknown part ''"), ("lora+lora", "'lora' appears twice"),
                       ("full+lora", "'full' cannot be part of a hybrid: it already trains every parameter"),
                       ("head+bitfit", "'head' cannot be part of a hybrid"),
                       ("lora-bitfit", r"allowed \['full', 'bitfit', 'adapter', 'lora', 'head', 'prompt', 'prefix', "
                                       r"'ia3'\], or several joined by '\+'")]:
        with pytest.raises(ValueError, match=match):
            MethodConfig(bad)
    with pytest.raises(ValueError, match=r"lora_targets \['value'\] are layers \(IA\)\^3 rescales"):
        MethodConfig("ia3+lora").validate()  # the default targets query, value: value is (IA)^3's too
    MethodConfig("ia3+lora", lora_targets=("query",)).validate()


def test_hybrid_flags_and_learning_rate(capsys):
    cfg = parse_args(["--method", "lora+bitfit"])
    assert (cfg.method, cfg.lr, cfg.out) == ("bitfit+lora", 5e-4, "runs/mrpc-bitfit+lora-f1-s0")
    assert default_lr("adapter+bitfit") == 5e-4 and default_lr("ia3") == 3e-3 and default_lr("prompt+ia3") == 3e-3
    cfg = parse_args(["--method", "prefix", "--prefix-length", "7", "--prefix-hidden", "64", "--prompt-length", "3"])
    assert (cfg.method_config().prefix_length, cfg.method_config().prefix_hidden, cfg.method_config().prompt_length) \
        == (7, 64, 3)
    with pytest.raises(argparse.ArgumentTypeError, match="invalid choice: 'lora\\+full'"):
        method_flag("lora+full")
    with pytest.raises(SystemExit):
        parse_args(["--method", "bitfit+nope"])
    assert "unknown part 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--method", "prompt", "--prompt-length", "0"])
    assert "prompt_length, prefix_length and prefix_hidden must be >= 1" in capsys.readouterr().err


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


# --------------------------------------------------------------------------------- (IA)^3
@pytest.mark.parametrize("pooling", POOLINGS)
def test_ia3_equals_base_at_init(minilm, pooling):
    base = minilm[pooling][0]
    ids, mask, _ = batch(30522)
    ref = logits(base, ids, mask)
    model = copy.deepcopy(base)
    apply_method(model, MethodConfig("ia3"))
    assert len(ia3_layers(model)) == 6 * 3
    assert torch.equal(logits(model, ids, mask), ref)  # l = 1: exactly the base model
    with torch.no_grad():
        model.bert.encoder.layer[2].output.dense.ia3_l[7] = 0.5  # one element of one l_ff
    assert not torch.equal(logits(model, ids, mask), ref)  # the vectors are in the forward path


def test_ia3_linear_formula():
    lin = torch.nn.Linear(6, 4)
    x = torch.randn(3, 6)
    out, inn = IA3Linear.from_linear(lin, "out"), IA3Linear.from_linear(lin, "in")
    assert out.ia3_l.shape == (4,) and inn.ia3_l.shape == (6,)
    with torch.no_grad():
        out.ia3_l.uniform_(0.5, 1.5)
        inn.ia3_l.uniform_(0.5, 1.5)
    torch.testing.assert_close(out(x), (x @ lin.weight.T + lin.bias) * out.ia3_l)  # l * (W x + b)
    torch.testing.assert_close(inn(x), (x * inn.ia3_l) @ lin.weight.T + lin.bias)  # W (l * x) + b


def test_ia3_merge_unmerge(minilm, tmp_path):
    model = copy.deepcopy(minilm["cls"][0])
    apply_method(model, MethodConfig("ia3"))
    fp = fingerprint(model)
    layers = [m for _, m in ia3_layers(model)]
    with torch.no_grad():  # trained-looking vectors: with l = 1 merging would be a no-op
        for m in layers:
            m.ia3_l.normal_(1.0, 0.1)
    ids, mask, _ = batch(30522)
    w0 = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in layers]
    unmerged = logits(model, ids, mask)  # .eval() inside: must not merge
    assert not any(m.merged for m in layers)
    assert merge_ia3(model) == 18
    w1 = [m.weight.detach().clone() for m in layers]
    assert not any(torch.equal(a, b) for (a, _), b in zip(w0, w1))
    torch.testing.assert_close(logits(model, ids, mask), unmerged, atol=1e-5, rtol=1e-5)
    merge_ia3(model)  # twice == once
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, w1))
    with pytest.raises(RuntimeError, match="unmerge"):
        verify_frozen(model, fp)
    unmerge_ia3(model)
    unmerge_ia3(model)
    assert all(torch.equal(m.weight, w) and torch.equal(m.bias, b) for m, (w, b) in zip(layers, w0))
    assert verify_frozen(model, fp)["verdict"] == "passed"
    assert torch.equal(logits(model, ids, mask), unmerged)
    out = export_merged(model, tmp_path / "merged", minilm["cls"][1])  # a plain BERT with l folded in
    assert not any(k.endswith("ia3_l") for k in load_file(str(out / "model.safetensors")))
    plain, _ = load_pretrained(out, num_labels=2, verbose=False)
    torch.testing.assert_close(logits(plain, ids, mask), unmerged, atol=1e-5, rtol=1e-5)
    assert not any(m.merged for m in layers)


# --------------------------------------------------------------------------------- prefix
def test_prefix_attention_by_hand(tiny_config):
    """Each query attends over [P prefixes; T keys] with the padding mask extended by True."""
    model = tiny(tiny_config, "cls").eval()
    attn = model.bert.encoder.layer[0].attention.self
    B, T, H, N, P = 2, 5, 32, 4, 3
    D = H // N
    x = torch.randn(B, T, H)
    pk, pv = torch.randn(N, P, D), torch.randn(N, P, D)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()  # (B, T)
    mask = torch.cat([torch.ones(B, P, dtype=torch.bool), real], 1)[:, None, None, :]  # (B, 1, 1, P + T)
    q, k, v = (proj(x).view(B, T, N, D).transpose(1, 2) for proj in (attn.query, attn.key, attn.value))
    k, v = torch.cat([pk.expand(B, -1, -1, -1), k], 2), torch.cat([pv.expand(B, -1, -1, -1), v], 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask, -math.inf)  # (B, N, T, P + T)
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
    torch.testing.assert_close(attn(x, mask, (pk, pv)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_prefix_padding_merge_and_checkpoints(minilm, tmp_path, pooling):
    base = minilm[pooling][0]
    model = copy.deepcopy(base)
    cfg = MethodConfig("prefix", prefix_length=4, prefix_hidden=32)
    trainable = apply_method(model, cfg)
    ids, mask, labels = batch(30522)
    ref = logits(model, ids, mask)  # at init, before a large step makes the prefixes swamp the real keys
    assert (ref - logits(base, ids, mask)).abs().max() > 1e-3  # the prefixes are in the forward path
    padded = (F.pad(ids, (0, 5)), F.pad(mask, (0, 5)))  # 5 more padding positions: nothing changes
    torch.testing.assert_close(logits(model, *padded), ref, atol=1e-5, rtol=1e-5)
    short = logits(model, ids[1:, :8], mask[1:, :8])  # the padded row without its padding
    torch.testing.assert_close(short, ref[1:], atol=1e-5, rtol=1e-5)
    step_and_check(model, trainable, ids, mask, labels)
    ref = logits(model, ids, mask)
    save_trainable(model, trainable, cfg, tmp_path / "mlp.safetensors", {"task": "MRPC"})
    loaded, _, _ = load_trainable(tmp_path / "mlp.safetensors")  # the training form, MLP and all
    assert torch.equal(logits(loaded, ids, mask), ref)

    assert merge_prefix(model) and merge_prefix(model)  # twice == once
    prefix = model.bert.encoder.prefix
    assert isinstance(prefix, PrefixEncoder) and prefix.kv.shape == (6, 2, 12, 4, 32)  # (layers, 2, N, P, D)
    assert {n for n, _ in prefix.named_parameters()} == {"kv"}  # the MLP is gone
    assert torch.equal(logits(model, ids, mask), ref)
    with pytest.raises(ValueError, match="trainable_params"):  # the old list names tensors the model dropped
        save_trainable(model, trainable, cfg, tmp_path / "stale.safetensors", {})
    merged = trainable_params(model)
    assert sum(p.numel() for _, p in merged) == hand_count(MINILM, "prefix", pooling, P=4, merged=True)
    save_trainable(model, merged, cfg, tmp_path / "kv.safetensors", {})
    assert "bert.encoder.prefix.kv" in load_file(str(tmp_path / "kv.safetensors"))
    assert not any(".hidden." in k for k in load_file(str(tmp_path / "kv.safetensors")))
    loaded, _, meta = load_trainable(tmp_path / "kv.safetensors")
    assert loaded.bert.encoder.prefix.merged and torch.equal(logits(loaded, ids, mask), ref)
    with pytest.raises(ValueError, match="prefixes cannot be merged"):
        export_merged(model, tmp_path / "nope")


# --------------------------------------------------------------------------------- prompt
def test_prompt_init_is_distinct_vocabulary_words(minilm):
    model = copy.deepcopy(minilm["mean"][0])
    apply_method(model, MethodConfig("prompt"))
    words = model.bert.embeddings.word_embeddings.weight
    rows = model.bert.embeddings.prompt.weight
    assert rows.shape == (20, 384) and rows.requires_grad and not words.requires_grad
    lo, hi = PROMPT_INIT_IDS
    found = [int((words[lo:hi] == r).all(1).nonzero()[0]) + lo for r in rows]
    assert len(set(found)) == 20  # 20 different words, all among the 5,000 most frequent
    assert rows.data_ptr() != words.data_ptr()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_prompt_is_a_hard_prompt_after_cls(minilm, pooling):
    """With its vectors set to the embeddings of words w, the prompt model computes exactly what the base
    model computes on [CLS] w x..., and returns the states of [CLS] x... only: pooling sees real tokens."""
    base = minilm[pooling][0]
    model = copy.deepcopy(base)
    apply_method(model, MethodConfig("prompt", prompt_length=3))
    w = torch.tensor([2023, 2003, 1037])
    with torch.no_grad():
        model.bert.embeddings.prompt.weight.copy_(base.bert.embeddings.word_embeddings.weight[w])
    ids, mask, _ = batch(30522)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1  # a sentence pair: the prompt takes [CLS]'s segment A
    hard = lambda x, fill: torch.cat([x[:, :1], fill.expand(2, 3), x[:, 1:]], 1)  # noqa: E731
    ids_h, mask_h, types_h = hard(ids, w), hard(mask, torch.ones(3, dtype=mask.dtype)), hard(types, 0 * w)
    model.eval(), base.eval()
    with torch.no_grad():
        h = model.bert(ids, mask, types)  # (B, T, H)
        h_hard = base.bert(ids_h, mask_h, types_h)  # (B, 3 + T, H)
    assert h.shape == (2, 12, 384)
    assert torch.equal(h, torch.cat([h_hard[:, :1], h_hard[:, 4:]], 1))
    expected = model.classifier(model.pool(h, mask))  # pooled over the real tokens' states only
    assert torch.equal(logits(model, ids, mask, types), expected)
    if pooling == "cls":  # the pooler reads [CLS], the same state as the hard-prompted base model's
        assert torch.equal(logits(model, ids, mask, types), logits(base, ids_h, mask_h, types_h))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_prompt_padding_step_and_checkpoint(minilm, tmp_path, pooling):
    base = minilm[pooling][0]
    model = copy.deepcopy(base)
    cfg = MethodConfig("prompt", prompt_length=5)
    trainable = apply_method(model, cfg)
    ids, mask, labels = batch(30522)
    for trained in (False, True):  # at init, and after a large step
        if trained:
            step_and_check(model, trainable, ids, mask, labels)
        ref = logits(model, ids, mask)
        padded = (F.pad(ids, (0, 5)), F.pad(mask, (0, 5)))  # 5 more padding positions: nothing changes
        torch.testing.assert_close(logits(model, *padded), ref, atol=1e-5, rtol=1e-5)
        short = logits(model, ids[1:, :8], mask[1:, :8])  # the padded row without its padding
        torch.testing.assert_close(short, ref[1:], atol=1e-5, rtol=1e-5)
    save_trainable(model, trainable, cfg, tmp_path / "p.safetensors", {})
    expected = {"bert.embeddings.prompt.weight", "classifier.weight", "classifier.bias"}  # the pooler is frozen
    assert set(load_file(str(tmp_path / "p.safetensors"))) == expected
    loaded, _, _ = load_trainable(tmp_path / "p.safetensors")
    assert torch.equal(logits(loaded, ids, mask), ref)
    with pytest.raises(ValueError, match="soft prompts cannot be merged"):
        export_merged(model, tmp_path / "nope")


def test_prompt_too_long_is_named(tiny_config):
    model = tiny(tiny_config, "cls")  # 64 positions
    apply_method(model, MethodConfig("prompt", prompt_length=60))
    with pytest.raises(ValueError, match="12 tokens \\+ 60 prompt tokens > max_position_embeddings 64"):
        model(*batch(tiny_config.vocab_size)[:2])


# ------------------------------------------------------------------- save / load of the rest
@pytest.mark.parametrize("method", ("ia3", "bitfit+lora", "adapter+bitfit", "ia3+lora+prompt"))
def test_save_load_round_trip(minilm, tmp_path, method):
    model = copy.deepcopy(minilm["mean"][0])
    cfg = MethodConfig(method, **SMALL)
    trainable = apply_method(model, cfg)
    step_and_check(model, trainable, *batch(30522))
    path = tmp_path / "t.safetensors"
    save_trainable(model, trainable, cfg, path, {"task": "MRPC"})
    assert set(load_file(str(path))) == {n for n, _ in trainable}
    loaded, _, meta = load_trainable(path)
    assert meta["method"] == method and MethodConfig(**meta["method_config"]) == cfg
    ids, mask, _ = batch(30522)
    assert torch.equal(logits(loaded, ids, mask), logits(model, ids, mask))


# ------------------------------------------------------------------------- audit groups, precision
def test_groups_are_disjoint_and_cover_every_new_module(tiny_config):
    model = tiny(tiny_config, "cls")
    apply_method(model, MethodConfig("adapter+ia3+lora+prefix+prompt", adapter_size=4, **SMALL))
    names = [n for n, _ in model.named_parameters()]
    assert {group_of(n) for n in names} == {g for g, _ in GROUPS}  # group_of raises unless exactly one matches
    merge_prefix(model)
    assert group_of("bert.encoder.prefix.kv") == "prefix"
    assert set(METHODS) >= set(NEW)


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
