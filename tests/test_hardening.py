"""Issue 27, items 4 and 8: a checkpoint's header is covered by a digest of its own (an edited field is
refused as corrupted, older formats still load); malformed model files (config.json, tokenizer.json,
a vocabulary the embedding table cannot hold) and checkpoint headers name the file and the field.
(The tokenization cache: tests/test_cache.py.)"""
import copy
import json
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adapters import MethodConfig, apply_method
from checkpoint import load_pretrained
from helpers import batch, logits
from model import BertConfig
from saving import (FORMAT, TENSORS_ONLY_FORMAT, UNVERIFIED_FORMAT, header_digest, load_trainable, save_trainable)


@pytest.fixture
def saved(minilm, tmp_path):
    """(model, path, header, tensors) of a LoRA run saved by save_trainable, its B moved off zero."""
    model = copy.deepcopy(minilm["mean"][0])
    cfg = MethodConfig("lora", lora_r=4)
    trainable = apply_method(model, cfg)
    with torch.no_grad():
        for _, p in trainable:
            p.add_(torch.randn_like(p), alpha=0.01)
    path = tmp_path / "best.safetensors"
    save_trainable(model, trainable, cfg, path, {"base_model": "minilm", "task": "mrpc"})
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    return model, path, header, load_file(str(path))


def write(path, tensors, header, sign=True):
    """A save_trainable file with this header; sign: give it a matching header digest, as if saved so."""
    header = {k: v for k, v in header.items() if k != "header_digest"}
    save_file(tensors, str(path), {**header, "header_digest": header_digest(header)} if sign else header)
    return path


@pytest.mark.parametrize("field, value", [
    ("task", "cola"), ("num_labels", "3"), ("pooling", "cls"), ("base_model", "google-bert/bert-base-uncased"),
    ("method_config", "LORA_R"), ("frozen_digest", "0" * 64), ("meta", "{}"), ("method", "bitfit"),
])
def test_an_edited_header_field_is_refused_as_corrupted(saved, tmp_path, field, value):
    model, path, header, tensors = saved
    if value == "LORA_R":  # a method option changed: not "another base checkpoint"
        value = json.dumps({**json.loads(header["method_config"]), "lora_r": 8})
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), {**header, field: value})
    with pytest.raises(ValueError, match=f"{edited}: corrupted: its header .* does not match the sha256"):
        load_trainable(edited)
    loaded, _, meta = load_trainable(path)  # the untouched file loads, in eval mode
    assert not loaded.training and meta["task"] == "mrpc"
    ids, mask, _ = batch(30522)
    assert torch.equal(loaded(ids, mask), logits(model, ids, mask))


def test_header_fields_missing_or_malformed_are_named(saved, tmp_path):
    _, _, header, tensors = saved
    cases = [({k: v for k, v in header.items() if k != "task"}, "the header has no field 'task'"),
             ({k: v for k, v in header.items() if k != "header_digest"}, "the header has no field 'header_digest'"),
             ({**header, "method_config": "{"}, "header field 'method_config' is not valid JSON"),
             ({**header, "meta": "[1]"}, "header fields 'method_config' and 'meta' must be JSON objects"),
             ({**header, "num_labels": "two"}, "header field 'num_labels' 'two' is not a positive integer"),
             ({**header, "pooling": "max"}, "header field 'pooling' 'max': allowed 'cls', 'mean'"),
             ({**header, "method": "bitfit"}, "header fields 'method' 'bitfit' and 'method_config' 'lora' disagree"),
             ({**header, "method_config": json.dumps({"method": "lora", "lora_rank": 4})},
              "header field 'method_config': .*lora_rank")]
    for i, (fields, message) in enumerate(cases):
        path = write(tmp_path / f"case{i}.safetensors", tensors, fields, sign="header_digest" in fields)
        with pytest.raises(ValueError, match=f"{path}: {message}"):
            load_trainable(path)


def test_files_of_the_earlier_formats_still_load(saved, tmp_path):
    """Format 2 (a tensor digest, no header digest) and format 1 (neither) load with a warning that says what
    cannot be verified; a format-2 file's tensors are still checked."""
    model, _, header, tensors = saved
    two = {k: v for k, v in header.items() if k != "header_digest"} | {"format": TENSORS_ONLY_FORMAT}
    one = {k: v for k, v in two.items() if k != "tensor_digest"} | {"format": UNVERIFIED_FORMAT}
    ids, mask, _ = batch(30522)
    for fields, message in ((two, "header cannot be verified"), (one, "tensors cannot be verified")):
        path = write(tmp_path / f"{fields['format'][-1]}.safetensors", tensors, fields, sign=False)
        with pytest.warns(UserWarning, match=message):
            loaded, _, meta = load_trainable(path)
        assert torch.equal(loaded(ids, mask), logits(model, ids, mask)) and meta["task"] == "mrpc"
    assert header["format"] == FORMAT
    flipped = {**tensors, "classifier.bias": tensors["classifier.bias"] + 1}
    path = write(tmp_path / "flipped2.safetensors", flipped, two, sign=False)
    with pytest.raises(ValueError, match="corrupted: its tensor bytes"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_trainable(path)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected a JSON object of config fields, got a list"),
    ('{"hidden_size": 64, ', "not valid JSON"),
    ('{"num_attention_heads": 0}', "num_attention_heads = 0: must be >= 1"),
    ('{"hidden_size": "384"}', "hidden_size = '384': expected int"),
    ('{"num_hidden_layers": true}', "num_hidden_layers = True: expected int"),
    ('{"vocab_size": -5}', "vocab_size = -5: must be >= 1"),
    ('{"intermediate_size": 0}', "intermediate_size = 0: must be >= 1"),
    ('{"hidden_dropout_prob": 1.5}', r"hidden_dropout_prob = 1.5: must be in \[0, 1\)"),
    ('{"layer_norm_eps": "1e-12"}', "layer_norm_eps = '1e-12': expected a number"),
    ('{"hidden_size": 64, "num_attention_heads": 5}', "hidden_size 64 is not a multiple of num_attention_heads 5"),
    ('{"pad_token_id": 40000}', "pad_token_id = 40000: not an id of the vocabulary"),
])
def test_model_config_json_errors_name_file_and_field(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        BertConfig.from_json(path)


def model_dir(minilm_dir, tmp_path, config_changes=None, drop=()):
    """MiniLM's files (linked), with config.json changed."""
    out = tmp_path / "model"
    out.mkdir(exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json"):
        if not (out / name).exists():
            (out / name).symlink_to(minilm_dir / name)
    config = {**json.loads((minilm_dir / "config.json").read_text()), **(config_changes or {})}
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in drop}))
    return out


def test_model_directory_mismatches_name_the_file(minilm_dir, tmp_path):
    """A vocabulary the embedding table cannot hold, token types beyond type_vocab_size (both an IndexError
    at the first step before), a size config.json leaves out, a truncated tokenizer.json."""
    d = model_dir(minilm_dir, tmp_path, {"vocab_size": 30000})
    with pytest.raises(ValueError, match=f"{d / 'tokenizer.json'}: token ids up to 30521, but {d / 'config.json'} "
                                         "has vocab_size 30000"):
        load_pretrained(d, verbose=False)
    d = model_dir(minilm_dir, tmp_path, {"type_vocab_size": 1})
    with pytest.raises(ValueError, match=f"{d / 'config.json'}: type_vocab_size 1, but .*tokenizer.json gives a "
                                         "sentence pair token types up to 1"):
        load_pretrained(d, verbose=False)
    d = model_dir(minilm_dir, tmp_path, drop=("hidden_size",))
    with pytest.raises(ValueError, match=r"shape mismatch .* \(.*config.json has no hidden_size: BERT-base's "):
        load_pretrained(d, verbose=False)
    d = model_dir(minilm_dir, tmp_path)
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=f"{d / '1_Pooling' / 'config.json'}: not valid JSON"):
        load_pretrained(d, verbose=False)
    shutil.rmtree(d / "1_Pooling")
    (d / "tokenizer.json").unlink()
    raw = (minilm_dir / "tokenizer.json").read_bytes()
    (d / "tokenizer.json").write_bytes(raw[:len(raw) // 3])
    with pytest.raises(ValueError, match=f"{d / 'tokenizer.json'}: not a readable tokenizer file"):
        load_pretrained(d, verbose=False)
