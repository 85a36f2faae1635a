"""saving.py: trainable-only checkpoints hold exactly the expected keys and reproduce the outputs; broken
ones fail naming the key; LoRA exports as a plain BERT."""
import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adapters import MethodConfig, apply_method, mergeable_layers
from checkpoint import load_pretrained, load_state_dict
from helpers import ALL_TARGETS, CORE, POOLINGS, SMALL, batch, logits, step_and_check
from model import BertForSequenceClassification
from saving import TENSORS_ONLY_FORMAT, export_merged, header_digest, load_trainable, save_trainable, tensor_digest
from tokenizer import BertTokenizer


def expected_keys(method, pooling, L=6):
    head = {"classifier.weight", "classifier.bias"}  # the pooler is backbone: only bitfit saves its bias
    layer = [f"bert.encoder.layer.{i}." for i in range(L)]
    if method == "lora":
        return head | {f"{p}attention.self.{t}.lora_{x}" for p in layer for t in ("query", "value") for x in "AB"}
    if method == "bitfit":
        mods = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
        pooler = {"bert.pooler.dense.bias"} if pooling == "cls" else set()
        return head | pooler | {"bert.embeddings.LayerNorm.bias"} | {f"{p}{m}.bias" for p in layer for m in mods}
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
    save_trainable(model, trainable, cfg, path, {"base_model": "minilm", "task": "MRPC", "seed": 7})
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


@pytest.mark.parametrize("pooling", POOLINGS)
def test_checkpoint_from_before_the_frozen_pooler_loads_as_it_trained(minilm, tmp_path, pooling):
    """A file saved when every method trained the pooler under [CLS] has no train_pooler in its
    method_config: it loads with train_pooler = (pooling == "cls"), the set it was trained with."""
    model = copy.deepcopy(minilm[pooling][0])
    cfg = MethodConfig("lora", lora_r=4, train_pooler=pooling == "cls")  # the old semantics' trainable set
    trainable = apply_method(model, cfg)
    with torch.no_grad():  # trained-looking values, cheaper than a step
        for _, p in trainable:
            p.add_(torch.randn_like(p), alpha=0.01)
    save_trainable(model, trainable, cfg, tmp_path / "new.safetensors", {"task": "MRPC", "base_model": "minilm"})
    with safe_open(str(tmp_path / "new.safetensors"), "pt") as f:
        header = f.metadata()
    tensors, raw = load_file(str(tmp_path / "new.safetensors")), json.loads(header["method_config"])
    assert ("bert.pooler.dense.weight" in tensors) == (pooling == "cls")
    del raw["train_pooler"]  # what the old code wrote, in the format of its time (no header digest)
    old = {k: v for k, v in header.items() if k != "header_digest"}
    save_file(tensors, str(tmp_path / "old.safetensors"),
              {**old, "format": TENSORS_ONLY_FORMAT, "method_config": json.dumps(raw)})
    with pytest.warns(UserWarning, match="header cannot be verified"):
        loaded, _, meta = load_trainable(tmp_path / "old.safetensors")
    assert meta["method_config"]["train_pooler"] is (pooling == "cls")
    ids, mask, _ = batch(30522)
    assert torch.equal(logits(loaded, ids, mask), logits(model, ids, mask))
    if pooling == "cls":  # read with today's default instead, the file would not fit: the rule matters
        wrong = {**header, "method_config": json.dumps({**raw, "train_pooler": False})}
        save_file(tensors, str(tmp_path / "wrong.safetensors"), {**wrong, "header_digest": header_digest(wrong)})
        with pytest.raises(ValueError, match="not what lora with its header's options trains: .*unexpected keys "
                                             "\\['bert.pooler.dense.bias', 'bert.pooler.dense.weight'\\]"):
            load_trainable(tmp_path / "wrong.safetensors")


def test_load_errors_name_the_key(minilm, tmp_path):
    model = copy.deepcopy(minilm["mean"][0])
    cfg = MethodConfig("lora")
    trainable = apply_method(model, cfg)
    path = tmp_path / "t.safetensors"
    save_trainable(model, trainable, cfg, path, {"base_model": "minilm"})
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    key = "bert.encoder.layer.3.attention.self.value.lora_A"

    def save_with_digest(tensors, path):  # a well-formed file that holds other tensors than the model's
        signed = {**header, "tensor_digest": tensor_digest(tensors)}
        save_file(tensors, str(path), {**signed, "header_digest": header_digest(signed)})

    save_with_digest({k: v for k, v in tensors.items() if k != key}, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=f"missing from the checkpoint \\['{key}'\\]"):
        load_trainable(tmp_path / "missing.safetensors")
    save_with_digest({**tensors, key: torch.zeros(3, 384)}, tmp_path / "shape.safetensors")
    with pytest.raises(ValueError, match=r"value.lora_A: checkpoint \(3, 384\), model \(8, 384\)"):
        load_trainable(tmp_path / "shape.safetensors")
    with torch.no_grad():  # a frozen weight that moved: the checkpoint no longer fits the base model
        model.bert.encoder.layer[0].attention.self.key.weight[0, 0] += 1.0
    save_trainable(model, trainable, cfg, tmp_path / "moved.safetensors", {"base_model": "minilm"})
    with pytest.raises(ValueError, match="frozen tensors"):
        load_trainable(tmp_path / "moved.safetensors")


def test_corrupted_or_truncated_checkpoint_is_refused_naming_the_file(minilm, tmp_path):
    """One flipped byte inside a tensor's data loads silently from safetensors alone (a logit moved
    from -0.17 to 925.9 in the issue's trial); the digest in the header refuses it."""
    model = copy.deepcopy(minilm["mean"][0])
    cfg = MethodConfig("lora")
    trainable = apply_method(model, cfg)
    path = tmp_path / "best.safetensors"
    save_trainable(model, trainable, cfg, path, {"base_model": "minilm"})
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
        for _, m in mergeable_layers(model):
            m.lora_B.normal_(std=0.02)
    w0 = [m.weight.detach().clone() for _, m in mergeable_layers(model)]
    out = export_merged(model, tmp_path / "merged", tok)
    assert not any(m.merged for _, m in mergeable_layers(model))  # left as found, weights exact
    assert all(torch.equal(m.weight, w) for (_, m), w in zip(mergeable_layers(model), w0))
    assert set(load_file(str(out / "model.safetensors"))) == set(base.state_dict())  # no lora_ keys
    plain, tok2 = load_pretrained(out, num_labels=2, verbose=False)
    assert plain.config.pooling == pooling
    assert load_state_dict(BertForSequenceClassification(plain.config), out / "model.safetensors").new == []
    ids, mask, _ = batch(30522)
    torch.testing.assert_close(logits(plain, ids, mask), logits(model, ids, mask), atol=1e-5, rtol=0)
    text = ["Merged LoRA exports tokenize the same."]
    assert isinstance(tok2, BertTokenizer) and tok2(text) == tok(text)
    adapter_model = copy.deepcopy(base)
    apply_method(adapter_model, MethodConfig("adapter"))
    with pytest.raises(ValueError, match="adapters cannot be merged"):
        export_merged(adapter_model, tmp_path / "nope")


@pytest.mark.parametrize("method", ("ia3", "bitfit+lora", "adapter+bitfit", "ia3+lora+prompt", "qlora", "bitfit+qlora"))
def test_save_load_round_trip(minilm, tmp_path, method):
    model = copy.deepcopy(minilm["mean"][0])
    cfg = MethodConfig(method, **SMALL)
    trainable = apply_method(model, cfg)
    step_and_check(model, trainable, *batch(30522))
    path = tmp_path / "t.safetensors"
    save_trainable(model, trainable, cfg, path, {"base_model": "minilm", "task": "MRPC"})
    assert set(load_file(str(path))) == {n for n, _ in trainable}
    loaded, _, meta = load_trainable(path)
    assert meta["method"] == method and MethodConfig(**meta["method_config"]) == cfg
    ids, mask, _ = batch(30522)
    assert torch.equal(logits(loaded, ids, mask), logits(model, ids, mask))
