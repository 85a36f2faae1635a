"""Our runs in Hugging Face's formats, and back: the config.json that transformers needs for a merged
checkpoint (saving.export_merged writes it), a PEFT adapter directory from a run (export_peft), and a
PEFT adapter directory trained elsewhere as a run of ours (import_peft). The formats are files, written
out here; nothing imports transformers or peft (the tests use them as the reference).

A PEFT adapter directory is adapter_config.json plus adapter_model.safetensors, whose keys are the
transformers model's, prefixed by PeftModel's wrapper "base_model.model.", with the adapter's own
name left out (`...attention.self.query.lora_A.weight`). Which of our methods PEFT parametrises the
same way (PEFT 0.21, transformers 5):
  lora    yes. PEFT's LoRA is h = W x + b + (lora_alpha / r) B A dropout(x) with lora_A.weight (r, in)
          and lora_B.weight (out, r): our lora_A and lora_B as they are (lora.py). rsLoRA, DoRA, per-
          module ranks (rank_pattern) and trained biases (bias != "none") are other formulas: refused.
  ia3     yes, given the placement explicitly. PEFT scales a Linear's output (ia3_l (out, 1)) or, for
          `feedforward_modules`, its input (ia3_l (1, in)), as ia3.py does. Its default for BERT targets
          the suffix "output.dense", which also matches attention.output.dense, so the config names our
          three layers by an anchored regex (PEFT fullmatches a string target_modules).
  prompt  no. PEFT's prompt tuning puts the virtual tokens before [CLS] (positions 0..V-1; the pooler
          then reads a virtual token); ours go after [CLS] (prompts.py).
  prefix  no. PEFT passes the prefixes as past_key_values, and transformers' BERT then numbers the real
          tokens' positions from P (BertEmbeddings: position_ids[past_key_values_length:]); ours keep
          positions 0..T-1, a prefix has none.
  adapter no: PEFT has no Houlsby bottleneck adapter.
  full, bitfit, head: PEFT adds nothing for them; saving.export_merged writes a plain transformers
          checkpoint. A hybrid is refused, naming the tensors a PEFT adapter has no place for.
The task head travels by PEFT's convention for trained modules, `modules_to_save`: the classifier
always (transformers initialises a fresh one), bert.pooler when the run trained it. transformers'
BertForSequenceClassification pools [CLS] through bert.pooler, so a mean-pooled model is refused.
"""
import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import glue
from adapters import Adapter, MethodConfig, apply_method, mergeable_layers, trainable_params
from checkpoint import MINILM_ALIAS, load_pretrained, read_json_object, resolve_model_dir
from ia3 import IA3_TARGETS, IA3Linear
from lora import LORA_TARGETS, LoRALinear
from prompts import PrefixEncoder, SoftPrompt
from qlora import QLoRALinear

PEFT_PREFIX = "base_model.model."  # PeftModel(model): the transformers model is base_model.model
LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")  # module name -> (layer index, path inside it)
REFUSED = {  # module kind -> why a PEFT adapter cannot hold it (this module's docstring explains)
    SoftPrompt: "PEFT's prompt tuning puts the virtual tokens before [CLS]; ours go after it",
    PrefixEncoder: "PEFT's prefix tuning shifts the real tokens' positions by the prefix length; ours do not",
    Adapter: "PEFT has no bottleneck adapter (Houlsby et al.)",
    QLoRALinear: "our QLoRA's 4-bit base is NF4 quantized here, not by bitsandbytes: a PEFT LoRA on the "
                 "full-precision base would compute another function",
}
LORA_UNSUPPORTED = {  # adapter_config.json field -> the value our LoRA formula needs
    "use_rslora": False, "use_dora": False, "bias": "none", "lora_bias": False, "fan_in_fan_out": False,
    "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layer_replication": None,
}


def layers_of(model: nn.Module, kind) -> list:
    """(name, layer) for the model's LoRA or (IA)^3 layers (adapters.mergeable_layers of one kind)."""
    return [(n, m) for n, m in mergeable_layers(model) if isinstance(m, kind)]


def transformers_config(config, task=None) -> dict:
    """config.json for transformers' BertForSequenceClassification: our BertConfig's fields (HF names),
    the architecture, the labels (GLUE's names when `task` is given) and the problem type that picks
    transformers' loss: "regression" (MSE) for one output, else "single_label_classification"."""
    L = config.num_labels
    names = list(task.label_names) if task is not None and task.label_names else [f"LABEL_{i}" for i in range(L)]
    return {**asdict(config), "model_type": "bert", "architectures": ["BertForSequenceClassification"],
            "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
            "problem_type": "regression" if L == 1 else "single_label_classification",
            "position_embedding_type": "absolute", "classifier_dropout": None}


def base_reference(name_or_path) -> str:
    """What base_model_name_or_path should say: a hub id as is, a local directory as an absolute path,
    the alias "minilm" as the package's directory (transformers does not know the alias)."""
    if str(name_or_path) == MINILM_ALIAS or Path(str(name_or_path)).is_dir():
        return str(resolve_model_dir(name_or_path).resolve())
    return str(name_or_path)


# ---------------------------------------------------------------------------------- the layout
def peft_kind(model: nn.Module) -> str:
    """"LORA" or "IA3": the one PEFT adapter type the model's added modules map to; else ValueError."""
    if model.config.pooling != "cls":
        raise ValueError(f"pooling {model.config.pooling!r}: transformers' BertForSequenceClassification pools "
                         "[CLS] through bert.pooler, so a mean-pooled model has no transformers head "
                         "(train with --pooling cls)")
    refused = sorted({why for kind, why in REFUSED.items() for m in model.modules() if isinstance(m, kind)})
    if refused:
        raise ValueError("no PEFT adapter reproduces this model: " + "; ".join(refused))
    has_lora, has_ia3 = bool(layers_of(model, LoRALinear)), bool(layers_of(model, IA3Linear))
    if has_lora and has_ia3:
        raise ValueError("LoRA and (IA)^3 together: a PEFT adapter directory holds one adapter type")
    if not (has_lora or has_ia3):
        raise ValueError("the model has no LoRA or (IA)^3 layers, nothing for a PEFT adapter to add "
                         "(full, bitfit, head): use saving.export_merged for a plain transformers checkpoint")
    return "LORA" if has_lora else "IA3"


def layer_paths(layers: list) -> list:
    """The paths inside bert.encoder.layer.N that the (name, module) layers occupy, each in every layer."""
    paths = sorted({LAYER.match(name).group(2) for name, _ in layers})
    n_layers = len({LAYER.match(name).group(1) for name, _ in layers})
    assert len(layers) == n_layers * len(paths), "the layers are not the same paths in every layer"
    return paths


def anchored(paths) -> str:
    """A regex that PEFT fullmatches against module names: exactly these paths, in every layer."""
    return r"bert\.encoder\.layer\.\d+\.(" + "|".join(re.escape(p) for p in paths) + ")"


def peft_layout(model: nn.Module, pooler: bool) -> tuple:
    """(adapter_config, {PEFT key: (our parameter, its shape in the PEFT file)}) for the model's LoRA or
    (IA)^3 layers, the classifier and, if `pooler`, bert.pooler (PEFT's modules_to_save)."""
    kind = peft_kind(model)
    head = ["classifier"] + (["bert.pooler"] if pooler else [])
    layout = {PEFT_PREFIX + name: (p, tuple(p.shape)) for name, p in model.named_parameters()
              if name.startswith("classifier.") or (pooler and name.startswith("bert.pooler."))}
    config = {"peft_type": kind, "task_type": "SEQ_CLS", "modules_to_save": head, "inference_mode": True,
              "base_model_name_or_path": None, "revision": None}
    if kind == "LORA":
        layers = layers_of(model, LoRALinear)
        r, scaling, dropout = {(m.r, m.scaling, m.lora_dropout.p) for _, m in layers}.pop()
        assert all((m.r, m.scaling, m.lora_dropout.p) == (r, scaling, dropout) for _, m in layers)
        # LoRALinear keeps alpha / r; times r gives alpha back, less float noise (16 / 3 * 3)
        config |= {"r": r, "lora_alpha": round(scaling * r, 9), "lora_dropout": dropout,
                   "target_modules": anchored(layer_paths(layers)), "init_lora_weights": True, **LORA_UNSUPPORTED}
        for name, m in layers:  # ours and PEFT's: A (r, in), B (out, r)
            layout[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (m.lora_A, tuple(m.lora_A.shape))
            layout[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (m.lora_B, tuple(m.lora_B.shape))
    else:
        layers = layers_of(model, IA3Linear)
        feedforward = [path for path, side in IA3_TARGETS.values() if side == "in"]
        config |= {"target_modules": anchored(layer_paths(layers)), "feedforward_modules": anchored(feedforward),
                   "fan_in_fan_out": False, "init_ia3_weights": True}
        for name, m in layers:  # (H,) -> (H, 1) for an output scale; (I,) -> (1, I) for an input scale
            n = m.ia3_l.shape[0]
            layout[f"{PEFT_PREFIX}{name}.ia3_l"] = (m.ia3_l, (n, 1) if m.side == "out" else (1, n))
    return config, layout


# ---------------------------------------------------------------------------------- export
EXPORT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "1_Pooling", "1_Pooling/config.json",
                "adapter_config.json", "adapter_model.safetensors"}  # what export_merged and export_peft write


def export_dir(path, replace: bool) -> Path:
    """The directory an export writes into, empty: made if new; one that holds anything only with
    replace=True, and then only when it holds nothing but a previous export's files (config.json or
    adapter_config.json among them), which are removed first: a stale tokenizer.json must not outlive
    the export it came with. Anything else is refused, naming the directory."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    held = sorted(str(f.relative_to(out)) for f in out.rglob("*")) if out.is_dir() else []
    if held and not replace:
        raise ValueError(f"{out}: not empty ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}); "
                         "pass replace=True to replace a previous export")
    foreign = [f for f in held if f not in EXPORT_FILES]
    if held and (foreign or not {"config.json", "adapter_config.json"} & set(held)):
        raise ValueError(f"{out}: does not look like an export (it holds {(foreign or held)[0]}), so even "
                         "replace=True does not clear it: choose another directory")
    for name in sorted(held, reverse=True):  # files before the folders that hold them
        (out / name).rmdir() if (out / name).is_dir() and not (out / name).is_symlink() else (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_peft(model: nn.Module, path, base=None, replace: bool = False) -> Path:
    """Write the model's LoRA or (IA)^3 run as a PEFT adapter directory that
    `PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base, num_labels=L), path)`
    loads with our logits. `base` (required): the pretrained model's id or directory the run started
    from; a model does not carry its origin, a run's best.safetensors records it (meta["base_model"]).
    Every trainable tensor must find a place in the adapter, or nothing is written. A directory that
    holds anything is refused unless replace=True (export_dir)."""
    trained = {name for name, _ in trainable_params(model)}
    pooler = any(name.startswith("bert.pooler.") for name in trained)
    config, layout = peft_layout(model, pooler)
    placed = {id(p) for p, _ in layout.values()}
    homeless = [name for name, p in trainable_params(model) if id(p) not in placed]
    if homeless:
        raise ValueError(f"a PEFT {config['peft_type']} adapter has no place for {len(homeless)} trainable tensors "
                         f"of this model ({', '.join(homeless[:3])}{', ...' if len(homeless) > 3 else ''}): "
                         "use saving.export_merged")
    if not base:  # the model does not carry its origin; a run's best.safetensors records it as base_model
        raise ValueError("export_peft needs base=: the model id or directory the run started from")
    config["base_model_name_or_path"] = base_reference(base)
    out = export_dir(path, replace)
    tensors = {key: p.detach().cpu().reshape(shape).contiguous().clone() for key, (p, shape) in layout.items()}
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


# ---------------------------------------------------------------------------------- import
CONFIG_FIELDS = {  # adapter_config.json field -> (the JSON types PEFT accepts, the adapter types requiring it)
    "peft_type": ((str,), ("LORA", "IA3")),
    "target_modules": ((str, list), ("LORA", "IA3")),
    "r": ((int,), ("LORA",)),
    "lora_alpha": ((int, float), ("LORA",)),
    "feedforward_modules": ((str, list), ("IA3",)),
    "lora_dropout": ((int, float), ()),
    "base_model_name_or_path": ((str, type(None)), ()),
    "modules_to_save": ((list, type(None)), ()),
    "task_type": ((str, type(None)), ()),
}


def read_adapter(path) -> tuple:
    """(adapter_config, tensors) of a PEFT adapter directory: a JSON object, finite floating-point
    tensors; errors name the file (and the key)."""
    path = Path(path)
    config_path, weights_path = path / "adapter_config.json", path / "adapter_model.safetensors"
    for f in (config_path, weights_path):
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist: a PEFT adapter directory holds adapter_config.json "
                                    "and adapter_model.safetensors")
    config = read_json_object(config_path, "a JSON object of PEFT config fields")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({e})") from None
    for key, t in tensors.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{weights_path}: tensor {key!r} is not finite floating-point ({t.dtype}, "
                             f"{(~torch.isfinite(t)).sum().item() if t.is_floating_point() else 'n/a'} non-finite)")
    return config, tensors


def check_config(config: dict, where):
    """PEFT's own checks on an adapter_config.json: a known peft_type, the fields its type requires, every
    field of the JSON type PEFT reads, and values in range. Errors name the file and the field."""
    kind = config.get("peft_type")
    if kind not in ("LORA", "IA3"):
        raise ValueError(f"{where}: peft_type {kind!r}: allowed 'LORA', 'IA3'")
    for field, (types, required_for) in CONFIG_FIELDS.items():
        if field not in config:
            if kind in required_for:
                raise ValueError(f"{where}: no {field!r} field (a PEFT {kind} config requires it)")
            continue
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, types) or \
                (isinstance(value, list) and not all(isinstance(x, str) for x in value)):
            allowed = " or ".join("null" if t is type(None) else "a list of strings" if t is list else t.__name__
                                  for t in types)
            raise ValueError(f"{where}: {field} = {value!r}: expected {allowed}")
    problems = [kind == "LORA" and config["r"] < 1 and f"r = {config['r']}: must be >= 1",
                kind == "LORA" and not math.isfinite(config["lora_alpha"]) and "lora_alpha must be finite",
                not 0 <= (config.get("lora_dropout") or 0) < 1 and f"lora_dropout = {config['lora_dropout']}: "
                "must be in [0, 1)",
                config.get("task_type") not in (None, "SEQ_CLS") and f"task_type = {config['task_type']!r}: "
                "a sequence-classification adapter has 'SEQ_CLS'"]
    for problem in problems:
        if problem:
            raise ValueError(f"{where}: {problem}")


def peft_matches(spec, name: str) -> bool:
    """PEFT's rule for target_modules (and feedforward_modules): a string is a regular expression the whole
    module name must match; a list matches a name equal to an entry or ending in "." + an entry."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return name in spec or any(name.endswith("." + t) for t in spec)


def targeted(config: dict, field: str, model: nn.Module, where) -> set:
    """The model's module names that config[field] selects by PEFT's rule; each must be a Linear."""
    try:
        names = {n for n, _ in model.named_modules() if n and peft_matches(config[field], n)}
    except re.error as e:
        raise ValueError(f"{where}: {field} {config[field]!r} is not a valid regular expression ({e})") from None
    modules = dict(model.named_modules())
    other = sorted(n for n in names if not isinstance(modules[n], nn.Linear))
    if other:
        raise ValueError(f"{where}: {field} {config[field]!r} matches {other[0]}, a {type(modules[other[0]]).__name__}: "
                         "PEFT and we adapt Linear layers only")
    return names


def check_targets(config: dict, model: nn.Module, tensors: dict, where) -> list:
    """The paths inside bert.encoder.layer.N that the adapter adapts, checked three ways as PEFT would load
    it: target_modules selects, by PEFT's matching rule, modules our method supports, in every layer
    (ours adapts every layer alike); the tensors' keys name exactly those modules; for (IA)^3,
    feedforward_modules selects exactly the input-scaled ones among them."""
    kind = config["peft_type"]
    supported = set(LORA_TARGETS.values()) if kind == "LORA" else {path for path, _ in IA3_TARGETS.values()}
    suffix = ".lora_A.weight" if kind == "LORA" else ".ia3_l"
    keyed = {k.removeprefix(PEFT_PREFIX).removesuffix(suffix) for k in tensors if k.endswith(suffix)}
    chosen = targeted(config, "target_modules", model, where)
    for source, names in (("the adapter's tensors", keyed), (f"target_modules {config['target_modules']!r}", chosen)):
        for name in sorted(names):
            m = LAYER.match(name)
            if not m or m.group(2) not in supported:
                raise ValueError(f"{where}: {'LoRA' if kind == 'LORA' else '(IA)^3'} on {name} ({source}): ours goes "
                                 f"only on {sorted(supported)} inside bert.encoder.layer.N")
    if not chosen:
        raise ValueError(f"{where}: target_modules {config['target_modules']!r} matches no module of the model")
    if keyed != chosen:
        odd = sorted(keyed ^ chosen)[0]
        raise ValueError(f"{where}: target_modules {config['target_modules']!r} and the tensors in "
                         f"adapter_model.safetensors disagree on {odd} ({'only' if odd in chosen else 'not'} selected "
                         f"by target_modules; {len(chosen)} modules selected, {len(keyed)} in the tensors)")
    paths = sorted({LAYER.match(n).group(2) for n in chosen})
    every = {f"bert.encoder.layer.{i}.{p}" for i in range(model.config.num_hidden_layers) for p in paths}
    if chosen != every:
        raise ValueError(f"{where}: target_modules selects {paths} in some layers only (e.g. not "
                         f"{sorted(every - chosen)[0]}): ours adapts every layer alike")
    if kind == "IA3":
        inputs = {p for p, side in IA3_TARGETS.values() if side == "in"}
        if set(paths) != supported:
            raise ValueError(f"{where}: (IA)^3 on {paths}: ours scales exactly {sorted(supported)} (ia3.py)")
        ff = targeted(config, "feedforward_modules", model, where)
        if ff != {n for n in chosen if LAYER.match(n).group(2) in inputs}:
            raise ValueError(f"{where}: feedforward_modules {config['feedforward_modules']!r} must select exactly "
                             f"the {sorted(inputs)} layers among target_modules (ours scales their input)")
    return paths


def method_of(config: dict, paths: list, where) -> MethodConfig:
    """Our MethodConfig for a checked PEFT adapter: LoRA with its rank, alpha and dropout on `paths`
    (the formula's options PEFT varies must be ours), or (IA)^3, whose placement is fixed."""
    if config["peft_type"] == "IA3":
        return MethodConfig("ia3")
    for field, value in LORA_UNSUPPORTED.items():
        if config.get(field) not in (None, value):  # None: absent, or PEFT's "not used"
            raise ValueError(f"{where}: {field} = {config[field]!r}; our LoRA (lora.py) needs {value!r}")
    return MethodConfig("lora", lora_r=config["r"], lora_alpha=float(config["lora_alpha"]),
                        lora_dropout=float(config.get("lora_dropout") or 0.0),
                        lora_targets=tuple(name for name, path in LORA_TARGETS.items() if path in paths))


def head_of(config: dict, tensors: dict, task: str, path) -> tuple:
    """(num_labels, pooler trained?) from the adapter's head (modules_to_save): a classifier (L, H) and
    (L,), L the task's label count when a task is given; bert.pooler saved exactly when listed."""
    weight, bias = (tensors.get(f"{PEFT_PREFIX}classifier.{k}") for k in ("weight", "bias"))
    if weight is None:
        raise ValueError(f"{path}: the adapter holds no classifier (modules_to_save): the head would be random")
    if weight.ndim != 2 or bias is None or tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{path}: classifier weight {tuple(weight.shape)} and bias "
                         f"{None if bias is None else tuple(bias.shape)}: expected (L, H) and (L,)")
    if task and weight.shape[0] != glue.get_task(task).num_labels:
        raise ValueError(f"{path}: the classifier has {weight.shape[0]} outputs, task {task} has "
                         f"{glue.get_task(task).num_labels} labels")
    pooler = PEFT_PREFIX + "bert.pooler.dense.weight" in tensors
    listed = any("bert.pooler".endswith(m) or "bert.pooler.dense".endswith(m) for m in config.get("modules_to_save") or [])
    if pooler != listed and config.get("modules_to_save") is not None:
        raise ValueError(f"{Path(path) / 'adapter_config.json'}: modules_to_save {config['modules_to_save']} {'does not list' if pooler else 'lists'} "
                         f"bert.pooler, but the tensors {'hold' if pooler else 'lack'} it: PEFT would not load it so")
    return weight.shape[0], pooler


def import_peft(path, base=None, task="", device="cpu") -> tuple:
    """Rebuild a PEFT LoRA or (IA)^3 adapter directory (sequence classification) as our model: returns
    (model, tokenizer, meta) as saving.load_trainable does, with PEFT's logits ([CLS] pooling), the model
    in eval mode (dropout off; call model.train() to train it further).
    `base`: the pretrained model (default: the adapter's base_model_name_or_path). `task`: a GLUE task
    whose label count the classifier must have. What is read is checked as PEFT checks it (check_config,
    check_targets): every tensor finite, and landing in the model with its shape; bert.pooler comes from
    the adapter when it holds one."""
    config, tensors = read_adapter(path)
    where = Path(path) / "adapter_config.json"
    check_config(config, where)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{where}: no base_model_name_or_path; pass base=")
    num_labels, pooler = head_of(config, tensors, task, path)
    model, tokenizer = load_pretrained(base, num_labels=num_labels, pooling="cls", verbose=False)
    cfg = method_of(config, check_targets(config, model, tensors, where), where)
    cfg = replace(cfg, train_pooler=pooler)  # a pooler in modules_to_save was trained: ours trains it too
    apply_method(model, cfg)
    _, layout = peft_layout(model, pooler)
    missing, unexpected = sorted(set(layout) - set(tensors)), sorted(set(tensors) - set(layout))
    if missing or unexpected:
        raise ValueError(f"{path}: keys missing from the adapter {missing[:5]}, keys our {cfg.method} model "
                         f"has no place for {unexpected[:5]}")
    with torch.no_grad():
        for key, (p, shape) in layout.items():
            t = tensors[key]
            if tuple(t.shape) != shape:
                raise ValueError(f"{path}: shape mismatch for {key!r}: adapter {tuple(t.shape)}, model {shape}")
            p.copy_(t.reshape(p.shape))
    meta = {"method": cfg.method, "method_config": asdict(cfg), "base_model": str(base), "task": task,
            "num_labels": num_labels, "pooling": "cls", "peft_adapter": str(path)}
    return model.to(device).eval(), tokenizer, meta
