"""Trainable-only checkpoints: save what a method trained, rebuild the fine-tuned model from the
pretrained base, and export LoRA / (IA)^3 folded into a plain BERT checkpoint (HF key layout) that
transformers' BertForSequenceClassification loads. PEFT adapter directories, both ways: hf.py
(export_peft, import_peft, re-exported here: saving is the one import for checkpoints).

A save_trainable file is safetensors holding only the trainable tensors, with metadata naming the
method and its options, the base model, task, label count, pooling, and a digest of the frozen
weights, so that load_trainable refuses a base whose frozen weights differ. Two more digests make the
file tamper-evident: one over the tensor bytes, one over the header's fields (header_digest), so a
flipped byte or a task edited by hand is refused as corrupted, naming the file.

Files saved before the pooler became backbone (their method_config has no `train_pooler`) trained
BERT's pooler with the head under [CLS] pooling: load_trainable reads them as train_pooler=True when
their pooling is "cls", which is exactly the set they trained (old_method_config).
"""
import errno
import hashlib
import json
import os
import re
import shutil
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
from ia3 import IA3_PARAMS
from lora import LORA_PARAMS
from hf import export_dir, export_peft, import_peft, transformers_config  # noqa: F401 (export_peft, import_peft: re-exported)
from prompts import PrefixEncoder, SoftPrompt, merge_prefix

FORMAT = "bertfit-trainable/3"  # safetensors metadata "format" of a save_trainable file
TENSORS_ONLY_FORMAT = "bertfit-trainable/2"  # the same, written before the header carried a digest of its own
UNVERIFIED_FORMAT = "bertfit-trainable/1"  # the same, written before files carried a tensor digest
HEADER_FIELDS = ("method", "method_config", "base_model", "task", "num_labels", "pooling", "frozen_digest",
                 "meta")  # what load_trainable reads from every save_trainable header
LATER_FIELDS = {TENSORS_ONLY_FORMAT: ("header_digest",), UNVERIFIED_FORMAT: ("tensor_digest", "header_digest")}
RESUME_FORMAT = "bertfit-resume/1"
FULL_DISK_BYTES = 64 << 20  # free space below which a failed torch.save is taken for a full disk  # the "format" entry of a resume.pt


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


def header_digest(header: dict) -> str:
    """sha256 over every header field but this digest itself: the format, method and its options, task,
    label count, pooling, base model, meta and the digests of the frozen and of the saved tensors. The
    tensor digest cannot see the header, and a header edited by hand (another task) would otherwise
    load as a model of that task."""
    fields = {k: v for k, v in header.items() if k != "header_digest"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def read_tensors(path) -> tuple:
    """(tensors, header) of a save_trainable file; a file that is unreadable, truncated, lacks a header
    field, or whose header or tensor bytes differ from the digests saved with them is refused with an
    error naming it. Files of the two earlier formats load with a warning saying what is not verified;
    one labelled with an earlier format that carries a later format's digest field is refused."""
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    version = header.get("format")
    if version not in (FORMAT, TENSORS_ONLY_FORMAT, UNVERIFIED_FORMAT):
        raise ValueError(f"{path}: not a save_trainable checkpoint (format {version!r})")
    required = HEADER_FIELDS + {FORMAT: ("tensor_digest", "header_digest"), TENSORS_ONLY_FORMAT: ("tensor_digest",),
                                UNVERIFIED_FORMAT: ()}[version]
    missing = [k for k in required if k not in header]
    if missing:
        raise ValueError(f"{path}: the header has no field {missing[0]!r} (a {version} file has {list(required)})")
    later = [k for k in LATER_FIELDS.get(version, ()) if k in header]
    if later:  # a newer file relabelled as older, to load without its digests being checked
        raise ValueError(f"{path}: corrupted: its header says format {version!r} but has the field {later[0]!r}, "
                         "which only a later format writes: its format was edited after saving?")
    if version == FORMAT and header_digest(header) != header["header_digest"]:
        raise ValueError(f"{path}: corrupted: its header (method and options, task, labels, pooling, base model, "
                         "frozen-weights digest) does not match the sha256 saved with it: edited after saving?")
    if version == UNVERIFIED_FORMAT:
        warnings.warn(f"{path}: written before checkpoints carried a digest; its tensors cannot be verified")
    elif tensor_digest(tensors) != header["tensor_digest"]:
        raise ValueError(f"{path}: corrupted: its tensor bytes do not match the sha256 saved with them")
    if version == TENSORS_ONLY_FORMAT:
        warnings.warn(f"{path}: written before checkpoints carried a header digest; its header cannot be verified")
    return tensors, header


def check_run_beside(path, task: str, method: str, why: str):
    """Refuse a checkpoint whose task or method differ from the config of the results.json beside it (the
    run that saved it), naming both files; `why`: what the disagreement means to the caller. A results.json
    that is absent, not JSON, or silent on a field checks nothing."""
    results = Path(path).parent / "results.json"
    try:
        config = json.loads(results.read_text())["config"]
    except (OSError, ValueError, LookupError, TypeError):
        return
    for field, ours in (("task", task), ("method", method)):
        theirs = config.get(field) if isinstance(config, dict) else None
        if theirs is not None and theirs != ours:
            raise ValueError(f"{path}: its header says {field} {ours!r}, but {results} beside it says {theirs!r}{why}")


def read_header(header: dict, path) -> tuple:
    """(MethodConfig, num_labels, meta dict) from a save_trainable header; a field that does not parse is
    an error naming the file and the field."""
    def parsed(field):
        try:
            return json.loads(header[field])
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: header field {field!r} is not valid JSON ({e})") from None

    raw, meta = parsed("method_config"), parsed("meta")
    if not isinstance(raw, dict) or not isinstance(meta, dict):
        raise ValueError(f"{path}: header fields 'method_config' and 'meta' must be JSON objects")
    try:
        cfg = old_method_config(raw, header["pooling"]) or MethodConfig.from_json(header["method_config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: header field 'method_config': {e}") from None
    if cfg.method != header["method"]:
        raise ValueError(f"{path}: header fields 'method' {header['method']!r} and 'method_config' "
                         f"{cfg.method!r} disagree")
    if not header["num_labels"].isdigit() or int(header["num_labels"]) < 1:
        raise ValueError(f"{path}: header field 'num_labels' {header['num_labels']!r} is not a positive integer")
    if header["pooling"] not in ("cls", "mean"):
        raise ValueError(f"{path}: header field 'pooling' {header['pooling']!r}: allowed 'cls', 'mean'")
    return cfg, int(header["num_labels"]), meta


def write_resume(path, state: dict):
    """torch.save `state` with its tensor_digest, atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "format": RESUME_FORMAT, "digest": tensor_digest(state)}, f)
    except (OSError, RuntimeError) as e:  # no half-written temporary file left behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, RuntimeError) and shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES:
            # torch reports a short write on a full disk as "enforce fail ... unexpected pos"
            raise OSError(errno.ENOSPC, f"No space left on device (torch.save: {e})", str(tmp)) from e
        raise
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
    save_file(tensors, str(path), metadata={**header, "header_digest": header_digest(header)})


def load_trainable_tensors(trainable: list, tensors: dict, path, cfg: MethodConfig):
    """Copy a save_trainable file's tensors into the trainable parameters; every key and shape must
    match. Other keys mean the file was not saved by this method with these options (`cfg`, read from
    its header): the error says so, rather than blaming the base checkpoint."""
    target = dict(trainable)
    missing, unexpected = sorted(set(target) - set(tensors)), sorted(set(tensors) - set(target))
    if missing or unexpected:
        raise ValueError(f"{path}: not what {cfg.method} with its header's options trains: keys missing from the "
                         f"checkpoint {missing[:5]}, unexpected keys {unexpected[:5]}"
                         f"{' (and more)' if len(missing) > 5 or len(unexpected) > 5 else ''}")
    bad = [f"{k}: checkpoint {tuple(t.shape)}, model {tuple(target[k].shape)}"
           for k, t in tensors.items() if t.shape != target[k].shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch (the method's options in the header, or the base model, differ "
                         "from the saved run's): " + "; ".join(bad))
    with torch.no_grad():
        for k, t in tensors.items():
            target[k].copy_(t)


def old_method_config(raw: dict, pooling: str):
    """The MethodConfig of a file saved before `train_pooler` existed, or None for a newer file. Then
    every method trained the pooler with the head under [CLS] pooling, so such a file is read with
    train_pooler = (pooling == "cls"): the same trainable set, the same frozen digest, the same outputs."""
    if "train_pooler" in raw:
        return None
    return MethodConfig.from_json(json.dumps({**raw, "train_pooler": pooling == "cls"}))


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
    pooling), apply_method, load the trainable tensors, check the frozen digest. A file of an earlier format
    (no header digest) must agree on task and method with the results.json beside it, when there is one.
    The model comes back in eval mode (dropout off: one input, one output); call model.train() to train
    it further."""
    tensors, header = read_tensors(path)  # refuses a corrupt file before the base model loads
    cfg, num_labels, saved_meta = read_header(header, path)
    if header["format"] != FORMAT:  # no header digest: the run's own record is the only check there is
        check_run_beside(path, header["task"], cfg.method, f"; a {header['format']} header carries no digest and "
                         "cannot be verified: edited after saving?")
    model, tokenizer = load_pretrained(header["base_model"], num_labels=num_labels, pooling=header["pooling"],
                                       verbose=False)
    trainable = apply_method(model, cfg)
    frozen = fingerprint_digest(fingerprint(model))  # before merge_prefix, as save_trainable took it
    if header.get("prefix_merged") == "True":  # saved after merge_prefix: the file holds `kv`, not the MLP
        merge_prefix(model)
        trainable = trainable_params(model)
    load_trainable_tensors(trainable, tensors, path, cfg)  # the method's own keys first: a clearer cause
    if frozen != header["frozen_digest"]:
        raise ValueError(f"{path}: the frozen tensors of {header['base_model']!r} differ from the ones "
                         "saved with the checkpoint (another base checkpoint, or frozen weights moved)")
    meta = {**saved_meta, "method": cfg.method, "method_config": asdict(cfg),
            "base_model": header["base_model"], "task": header["task"],
            "num_labels": num_labels, "pooling": header["pooling"]}
    return model.to(device).eval(), tokenizer, meta


def export_merged(model: nn.Module, path, tokenizer=None, task=None, replace: bool = False) -> Path:
    """Fold LoRA and (IA)^3 into the base weights and write a plain checkpoint directory that
    checkpoint.load_pretrained(path, num_labels=L) reads and, under [CLS] pooling,
    transformers.BertForSequenceClassification.from_pretrained(path) too: model.safetensors (HF key
    layout, plain weight/bias keys, no lora_ / ia3_ keys), config.json (hf.transformers_config: labels,
    named after `task`'s classes when given, and the problem type), 1_Pooling/config.json (declares the
    pooling; transformers ignores it and pools [CLS]), and tokenizer.json when a tokenizer is given.
    Adapters, soft prompts and prefixes add computation a plain BERT does not have, so they cannot be
    exported. Layers are left merged or not, as found. A directory that holds anything is refused unless
    replace=True, and then emptied first if it holds only what an export writes (hf.export_dir)."""
    kinds = {Adapter: "adapters", SoftPrompt: "soft prompts", PrefixEncoder: "prefixes"}
    found = [name for kind, name in kinds.items() if any(isinstance(m, kind) for m in model.modules())]
    if found:
        raise ValueError(f"{' and '.join(found)} cannot be merged into the base weights; use save_trainable")
    out = export_dir(path, replace)
    layers = [m for _, m in mergeable_layers(model)]
    was_merged = {id(m) for m in layers if m.merged}
    for m in layers:
        m.merge()
    try:  # clone: on CPU .cpu() aliases the parameter, which unmerge() below overwrites
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                 if not re.search(LORA_PARAMS, k) and not re.search(IA3_PARAMS, k)}
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
