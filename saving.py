"""Trainable-only checkpoints: save what a method trained, rebuild the fine-tuned model from the
pretrained base, and export LoRA / (IA)^3 folded into a plain BERT checkpoint (HF key layout) that
transformers' BertForSequenceClassification loads. PEFT adapter directories, both ways: hf.py
(export_peft, import_peft, re-exported here: saving is the one import for checkpoints).

A save_trainable file is safetensors holding only the trainable tensors, with metadata naming the
method and its options, the base model, task, label count, pooling, and a digest of the frozen
weights, so that load_trainable refuses a base whose frozen weights differ.

Files saved before the pooler became backbone (their method_config has no `train_pooler`) trained
BERT's pooler with the head under [CLS] pooling: load_trainable reads them as train_pooler=True when
their pooling is "cls", which is exactly the set they trained (old_method_config).
"""
import hashlib
import json
import os
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from adapters import Adapter, MethodConfig, apply_method, mergeable_layers, trainable_params
from audit import fingerprint
from checkpoint import load_pretrained
from hf import export_peft, import_peft, transformers_config  # noqa: F401 (export_peft, import_peft: re-exported)
from prompts import PrefixEncoder, SoftPrompt, merge_prefix

FORMAT = "bertfit-trainable/2"  # safetensors metadata "format" of a save_trainable file
UNVERIFIED_FORMAT = "bertfit-trainable/1"  # the same, written before files carried a tensor digest
RESUME_FORMAT = "bertfit-resume/1"  # the "format" entry of a resume.pt


def tensor_digest(obj) -> str:
    """sha256 over a nest of dicts, lists and tensors: keys in sorted order, each tensor's name, dtype,
    shape and raw bytes, other leaves by repr. safetensors and torch.save store no checksum of their
    data, so without this one flipped byte inside a tensor loads silently."""
    digest = hashlib.sha256()

    def walk(x):
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                digest.update(f"<{k!r}>".encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            digest.update(f"[{len(x)}".encode())
            for item in x:
                walk(item)
        elif torch.is_tensor(x):
            t = x.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(x).encode())

    walk(obj)
    return digest.hexdigest()


def read_tensors(path) -> tuple:
    """(tensors, header) of a save_trainable file; a file that is unreadable, truncated, or whose
    tensor bytes differ from the digest saved with them is refused with an error naming it."""
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if header.get("format") == UNVERIFIED_FORMAT:
        warnings.warn(f"{path}: written before checkpoints carried a digest; its tensors cannot be verified")
    elif header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a save_trainable checkpoint (format {header.get('format')!r})")
    elif tensor_digest(tensors) != header.get("tensor_digest"):
        raise ValueError(f"{path}: corrupted: its tensor bytes do not match the sha256 saved with them")
    return tensors, header


def write_resume(path, state: dict):
    """torch.save `state` with its tensor_digest, atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**state, "format": RESUME_FORMAT, "digest": tensor_digest(state)}, tmp)
    os.replace(tmp, path)


def read_resume(path) -> dict:
    """The state write_resume saved; an unreadable or truncated file, or one whose digest does not
    match its contents, is refused with an error naming it."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle.UnpicklingError, EOFError, zipfile errors...
        raise ValueError(f"{path}: not a readable resume file ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "format" not in state and {"trainable", "results"} <= set(state):
        warnings.warn(f"{path}: written before resume files carried a digest; its contents cannot be verified")
        return state
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ValueError(f"{path}: not a resume file of this version of train.py (no {RESUME_FORMAT!r} format)")
    saved = state.pop("digest", None)
    state.pop("format")
    if tensor_digest(state) != saved:
        raise ValueError(f"{path}: corrupted: its contents do not match the sha256 saved with them")
    return state


def fingerprint_digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def save_trainable(model: nn.Module, trainable: list, cfg: MethodConfig, path, meta: dict):
    """Write only the trainable tensors (safetensors). The metadata holds what load_trainable needs:
    method, its options (JSON), base model id, task, num_labels, pooling, `meta` (JSON), and a digest
    of the frozen tensors, so a different base checkpoint, or frozen weights that moved, fail to load.
    Prefix tuning saves the MLP while training (what the optimizer and resume need); after
    merge_prefix(model), pass trainable_params(model) and only the prefixes `kv` are written."""
    base = meta.get("base_model")
    if not base:
        raise ValueError("save_trainable needs meta['base_model']: the model id or directory load_pretrained was given")
    if {(n, id(p)) for n, p in trainable} != {(n, id(p)) for n, p in trainable_params(model)}:
        raise ValueError("the trainable list is not the model's requires_grad parameters "
                         "(after merge_prefix, pass trainable_params(model))")
    prefix = model.bert.encoder.prefix
    tensors = {n: p.detach().cpu().contiguous() for n, p in trainable}
    header = {"format": FORMAT, "tensor_digest": tensor_digest(tensors), "method": cfg.method,
              "method_config": json.dumps(asdict(cfg)), "base_model": str(base),
              "task": str(meta.get("task", "")), "num_labels": str(model.config.num_labels),
              "pooling": model.config.pooling, "frozen_digest": fingerprint_digest(fingerprint(model)),
              "prefix_merged": str(prefix is not None and prefix.merged), "meta": json.dumps(meta)}
    save_file(tensors, str(path), metadata=header)


def load_trainable_tensors(model: nn.Module, trainable: list, path):
    """Copy a save_trainable file into the trainable parameters; every key and shape must match."""
    tensors, target = read_tensors(path)[0], dict(trainable)
    missing, unexpected = sorted(set(target) - set(tensors)), sorted(set(tensors) - set(target))
    if missing or unexpected:
        raise ValueError(f"{path}: keys missing from the checkpoint {missing}, unexpected keys {unexpected}")
    bad = [f"{k}: checkpoint {tuple(t.shape)}, model {tuple(target[k].shape)}"
           for k, t in tensors.items() if t.shape != target[k].shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch: " + "; ".join(bad))
    with torch.no_grad():
        for k, t in tensors.items():
            target[k].copy_(t)


def old_method_config(header: dict):
    """The MethodConfig of a file saved before `train_pooler` existed, or None for a newer file. Then
    every method trained the pooler with the head under [CLS] pooling, so such a file is read with
    train_pooler = (pooling == "cls"): the same trainable set, the same frozen digest, the same outputs."""
    raw = json.loads(header["method_config"])
    if "train_pooler" in raw:
        return None
    return MethodConfig.from_json(json.dumps({**raw, "train_pooler": header["pooling"] == "cls"}))


def copy_named(target: dict, tensors: dict, source):
    """Copy tensors into the parameters of the same names; different names are an error naming
    `source` and the keys (a state saved by another method)."""
    missing, unexpected = sorted(set(target) - set(tensors)), sorted(set(tensors) - set(target))
    if missing or unexpected:
        raise ValueError(f"{source}: keys missing {missing[:5]}, unexpected keys {unexpected[:5]}"
                         f"{' (and more)' if len(missing) > 5 or len(unexpected) > 5 else ''}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            target[name].copy_(tensor)


def load_trainable(path, device="cpu") -> tuple:
    """Rebuild (model, tokenizer, meta) from a save_trainable file: load_pretrained(base, num_labels,
    pooling), apply_method, check the frozen digest, load the trainable tensors."""
    header = read_tensors(path)[1]  # refuses a corrupt file before the base model loads
    cfg = old_method_config(header) or MethodConfig.from_json(header["method_config"])
    model, tokenizer = load_pretrained(header["base_model"], num_labels=int(header["num_labels"]),
                                       pooling=header["pooling"], verbose=False)
    trainable = apply_method(model, cfg)
    if fingerprint_digest(fingerprint(model)) != header["frozen_digest"]:
        raise ValueError(f"{path}: the frozen tensors of {header['base_model']!r} differ from the ones "
                         "saved with the checkpoint (another base checkpoint, or frozen weights moved)")
    if header.get("prefix_merged") == "True":  # saved after merge_prefix: the file holds `kv`, not the MLP
        merge_prefix(model)
        trainable = trainable_params(model)
    load_trainable_tensors(model, trainable, path)
    meta = {**json.loads(header["meta"]), "method": cfg.method, "method_config": asdict(cfg),
            "base_model": header["base_model"], "task": header["task"],
            "num_labels": int(header["num_labels"]), "pooling": header["pooling"]}
    return model.to(device), tokenizer, meta


def export_merged(model: nn.Module, path, tokenizer=None, task=None) -> Path:
    """Fold LoRA and (IA)^3 into the base weights and write a plain checkpoint directory that
    checkpoint.load_pretrained(path, num_labels=L) reads and, under [CLS] pooling,
    transformers.BertForSequenceClassification.from_pretrained(path) too: model.safetensors (HF key
    layout, plain weight/bias keys, no lora_ / ia3_ keys), config.json (hf.transformers_config: labels,
    named after `task`'s classes when given, and the problem type), 1_Pooling/config.json (declares the
    pooling; transformers ignores it and pools [CLS]), and tokenizer.json when a tokenizer is given.
    Adapters, soft prompts and prefixes add computation a plain BERT does not have, so they cannot be
    exported. Layers are left merged or not, as found."""
    kinds = {Adapter: "adapters", SoftPrompt: "soft prompts", PrefixEncoder: "prefixes"}
    found = [name for kind, name in kinds.items() if any(isinstance(m, kind) for m in model.modules())]
    if found:
        raise ValueError(f"{' and '.join(found)} cannot be merged into the base weights; use save_trainable")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    layers = [m for _, m in mergeable_layers(model)]
    was_merged = {id(m) for m in layers if m.merged}
    for m in layers:
        m.merge()
    try:  # clone: on CPU .cpu() aliases the parameter, which unmerge() below overwrites
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                 if not re.search(r"\.(lora_[AB]|ia3_l)$", k)}
    finally:
        for m in layers:
            if id(m) not in was_merged:
                m.unmerge()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    c = model.config
    (out / "config.json").write_text(json.dumps(transformers_config(c, task), indent=2))
    if c.pooling != "cls":
        warnings.warn(f"{out}: pooling {c.pooling!r}: transformers' BertForSequenceClassification would pool [CLS] "
                      "through the pooler; checkpoint.load_pretrained reads the pooling from 1_Pooling/config.json")
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": c.hidden_size, "pooling_mode_cls_token": c.pooling == "cls",
         "pooling_mode_mean_tokens": c.pooling == "mean"}, indent=2))
    if tokenizer is not None:
        tokenizer.tok.save(str(out / "tokenizer.json"))
    return out
