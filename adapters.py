"""Efficient fine-tuning methods: which parameters train, the modules some methods add, and the proof
that everything else stayed frozen.

  full    every parameter trains.
  bitfit  every bias term plus the task head (Ben Zaken et al., 2022, "BitFit", sec. 3).
  adapter bottleneck adapters in the layers' adapter slots, plus every LayerNorm and the task head
          (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning for NLP", sec. 2.1).
  lora    low-rank updates of chosen Linear layers plus the task head (Hu et al., 2021; lora.py).
  head    only the task head.
  prompt  V trainable virtual-token embeddings after [CLS], plus the task head (Lester et al., 2021;
          prompts.py).
  prefix  trainable key/value prefixes in every layer, reparameterised by an MLP while training,
          plus the task head (Li & Liang, 2021; prompts.py).
  ia3     vectors rescaling keys, values and the FFN activation, plus the task head (Liu et al.,
          2022; ia3.py).
Hybrids combine methods by name, `bitfit+lora`: the parts' modules are all inserted and the trainable
set is the union of their rows of TRAINABLE (the "hybrid" family of Xu et al.'s PEFT survey, 2023,
arXiv 2312.12148). The name is canonical with its parts sorted; `full` and `head` stand alone.

The task head is `classifier` plus `bert.pooler` when pooling is "cls"; under "mean" the model has no
pooler, so the head is the classifier alone. (adapter-bert, Houlsby's code, keeps the pretrained pooler
frozen; we train it with the head in every method so that methods differ only in the backbone.)

The whole trainable set of a method is one row of TRAINABLE: anchored regexes over parameter names.
`apply_method` is the one function that sets requires_grad, on every parameter, and returns the
(name, parameter) list that the optimizer, the audit and save_trainable are all built from.
Checkpoints hold only the trainable tensors (save_trainable / load_trainable); export_merged writes
a plain BERT checkpoint with LoRA and (IA)^3 folded in.
"""
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# re-exported: adapters is the one import for every method
from ia3 import IA3_TARGETS, IA3Linear, add_ia3, ia3_layers, merge_ia3, unmerge_ia3  # noqa: F401
from lora import LORA_TARGETS, LoRALinear, add_lora, lora_layers, merge_lora, unmerge_lora  # noqa: F401
from model import ACTIVATIONS, load_pretrained
from prompts import PrefixEncoder, SoftPrompt, add_prefix, add_prompt, merge_prefix  # noqa: F401

METHODS = ("full", "bitfit", "adapter", "lora", "head", "prompt", "prefix", "ia3")
SOLO = {"full": "it already trains every parameter", "head": "every method already trains the task head"}
ADAPTER_SLOTS = {  # placement -> slots (module paths inside bert.encoder.layer.N) that get an Adapter
    "houlsby": ("attention.output", "output"),  # two per layer (Houlsby et al., 2019, Fig. 2)
    "pfeiffer": ("output",),  # one per layer, in the FFN slot: the position Pfeiffer et al. (2021,
}  # AdapterFusion) chose; their adapter's own LayerNorm/residual wiring is not reproduced


@dataclass
class MethodConfig:
    method: str  # one of METHODS
    adapter_size: int = 64  # m, the bottleneck width; Houlsby sec. 3.1 sweeps m in {8, 64, 256}
    adapter_placement: str = "houlsby"  # a key of ADAPTER_SLOTS
    adapter_act: str = "gelu"  # bottleneck nonlinearity, a key of model.ACTIVATIONS (adapter-bert: gelu)
    adapter_init_std: float = 1e-3  # truncated normal (+-2 std) for down/up weights: adapter-bert's
    # init_scale; Houlsby sec. 3.6 finds results robust for std below 1e-2
    lora_r: int = 8  # rank r (Hu et al. sec. 7.2); 8 as in their RoBERTa GLUE runs (Table 9)
    lora_alpha: float = 16  # update scaled by alpha / r; 16 as in microsoft/LoRA examples/NLU scripts
    lora_dropout: float = 0.0  # on the LoRA path's input. 0.0: the RoBERTa/DeBERTa GLUE code
    # (microsoft/LoRA examples/NLU) builds lora.Linear without lora_dropout (loralib default 0.0);
    # the paper's 0.1 is for GPT-2 on E2E (Table 11).
    lora_targets: tuple = ("query", "value")  # keys of lora.LORA_TARGETS; W_q, W_v: the paper's GLUE
    # setting (sec. 5.1; sec. 7.1 compares other choices)
    prompt_length: int = 20  # V virtual tokens. Lester et al. sec. 3.2 (Fig. 3a): beyond 20 tokens the
    # gains are marginal (they used 100 for T5); each token lengthens every sequence, 128 -> 148 here
    prefix_length: int = 20  # P prefix positions per layer; Li & Liang sec. 7.1 find 200 best for
    # summarisation, 10 for table-to-text; 20 is PEFT's usual num_virtual_tokens
    prefix_hidden: int = 512  # width of the reparameterisation MLP (sec. 4.3); 512 is the reference
    # code's mid_dim (XiangLi1999/PrefixTuning)

    def __post_init__(self):
        self.method = canonical_method(self.method)  # "lora+bitfit" -> "bitfit+lora"; unknown names raise

    def validate(self):
        def allowed(field, value, choices):
            if value not in choices:
                raise ValueError(f"{field} {value!r}: allowed {list(choices)}")
        if self.method != canonical_method(self.method):
            raise ValueError(f"method {self.method!r}: write it {canonical_method(self.method)!r}")
        parts = method_parts(self.method)
        allowed("adapter_placement", self.adapter_placement, ADAPTER_SLOTS)
        allowed("adapter_act", self.adapter_act, ACTIVATIONS)
        if isinstance(self.lora_targets, str) or not self.lora_targets or \
                len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"lora_targets must be a non-empty tuple of distinct names from "
                             f"{list(LORA_TARGETS)}, got {self.lora_targets!r}")
        for t in self.lora_targets:
            allowed("lora target", t, LORA_TARGETS)
        if self.adapter_size < 1 or self.lora_r < 1:
            raise ValueError(f"adapter_size and lora_r must be >= 1, got {self.adapter_size}, {self.lora_r}")
        if self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0 or self.adapter_init_std <= 0:
            raise ValueError("need lora_alpha > 0, 0 <= lora_dropout < 1, adapter_init_std > 0")
        if min(self.prompt_length, self.prefix_length, self.prefix_hidden) < 1:
            raise ValueError(f"prompt_length, prefix_length and prefix_hidden must be >= 1, got "
                             f"{self.prompt_length}, {self.prefix_length}, {self.prefix_hidden}")
        ia3_paths = {path for path, _ in IA3_TARGETS.values()}
        shared = [t for t in self.lora_targets if LORA_TARGETS[t] in ia3_paths]
        if {"lora", "ia3"} <= set(parts) and shared:  # one nn.Linear can become LoRALinear or IA3Linear, not both
            free = [t for t in LORA_TARGETS if LORA_TARGETS[t] not in ia3_paths]
            raise ValueError(f"method {self.method!r}: lora_targets {shared} are layers (IA)^3 rescales; "
                             f"choose lora_targets among {free}")
        return self

    @classmethod
    def from_json(cls, text: str) -> "MethodConfig":
        raw = json.loads(text)
        raw["lora_targets"] = tuple(raw["lora_targets"])  # JSON has no tuples
        return cls(**raw).validate()


def method_problem(method: str):
    """What is wrong with a method name, or None. A hybrid joins distinct parts with '+'."""
    parts = method.split("+")
    if len(parts) == 1 and method not in METHODS:
        return f"allowed {list(METHODS)}, or several joined by '+' (e.g. 'bitfit+lora')"
    for part in parts:
        if part in SOLO and len(parts) > 1:
            return f"{part!r} cannot be part of a hybrid: {SOLO[part]}"
        if part not in METHODS:
            return f"unknown part {part!r}; allowed parts {[m for m in METHODS if m not in SOLO]}"
        if parts.count(part) > 1:
            return f"{part!r} appears twice"
    return None


def method_parts(method: str) -> tuple:
    """"bitfit+lora" -> ("bitfit", "lora"), sorted; a single method -> (method,). Raises ValueError."""
    problem = method_problem(method)
    if problem:
        raise ValueError(f"method {method!r}: {problem}")
    return tuple(sorted(method.split("+")))


def canonical_method(method: str) -> str:
    """The order-insensitive name of a method: "lora+bitfit" -> "bitfit+lora"."""
    return "+".join(method_parts(method))


# ---------------------------------------------------------------------------------- adapters
class Adapter(nn.Module):
    """Bottleneck adapter, x + up(act(down(x))): (B, T, H) -> (B, T, m) -> (B, T, H) (Houlsby et al.,
    2019, sec. 2.1, Fig. 2). Near-identity at init (sec. 2.1): down/up weights are truncated-normal
    with a small std and the biases zero, so the added term is tiny but every weight gets a gradient
    on the first step (with up = 0, down's gradient would be exactly zero)."""

    def __init__(self, hidden_size: int, adapter_size: int, act: str = "gelu", init_std: float = 1e-3):
        super().__init__()
        self.down = nn.Linear(hidden_size, adapter_size)  # H -> m
        self.act = ACTIVATIONS[act]
        self.up = nn.Linear(adapter_size, hidden_size)  # m -> H
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))  # (B, T, H)


def add_adapters(model: nn.Module, cfg: MethodConfig) -> list:
    """Fill the adapter slots that cfg.adapter_placement names, in every layer; returns their names.
    Call after the pretrained weights are loaded; a slot that is already filled is an error."""
    names = []
    for i, layer in enumerate(model.bert.encoder.layer):
        for slot in ADAPTER_SLOTS[cfg.adapter_placement]:
            parent = layer.get_submodule(slot)
            name = f"bert.encoder.layer.{i}.{slot}.adapter"
            if not isinstance(parent.adapter, nn.Identity):
                raise ValueError(f"{name} is already filled; add_adapters was applied twice")
            ref = parent.dense.weight  # the adapter lives on the slot's device, in its dtype
            parent.adapter = Adapter(model.config.hidden_size, cfg.adapter_size, cfg.adapter_act,
                                     cfg.adapter_init_std).to(device=ref.device, dtype=ref.dtype)
            names.append(name)
    return names


# ------------------------------------------------------------------------- the trainable sets
HEAD = (r"^classifier\.", r"^bert\.pooler\.")  # the task head; bert.pooler exists only under "cls"
TRAINABLE = {  # method -> anchored regexes over parameter names; a parameter trains iff one matches
    "full": (r"^.+$",),  # every parameter
    "bitfit": (r"\.bias$",) + HEAD,  # q/k/v/attn-out/FFN/LayerNorm/embedding-LN/pooler biases + head
    "adapter": (r"\.adapter\.(down|up)\.(weight|bias)$", r"\.LayerNorm\.(weight|bias)$") + HEAD,
    "lora": (r"\.lora_[AB]$",) + HEAD,
    "head": HEAD,
    "prompt": (r"^bert\.embeddings\.prompt\.weight$",) + HEAD,  # the V virtual-token vectors
    # while training: the MLP's embedding and two Linears; after merge_prefix: the prefixes `kv`
    "prefix": (r"^bert\.encoder\.prefix\.(embedding\.weight|(hidden|out)\.(weight|bias)|kv)$",) + HEAD,
    "ia3": (r"\.ia3_l$",) + HEAD,  # l_k, l_v, l_ff in every layer
}


def is_trainable(name: str, method: str) -> bool:
    """A hybrid trains the union: a parameter trains iff some part's row matches it. (bitfit's bias
    pattern also claims the biases of modules other parts add; the audit counts those as shared.)"""
    return any(re.search(p, name) for part in method_parts(method) for p in TRAINABLE[part])


def trainable_params(model: nn.Module) -> list:
    """[(name, parameter)] with requires_grad, in model order: what apply_method returned, until a
    surgery that swaps parameters (merge_prefix)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def apply_method(model: nn.Module, cfg: MethodConfig) -> list:
    """Insert the method's modules (each part's, for a hybrid), set requires_grad True/False on every
    parameter, and return the trainable [(name, parameter)]: the one list the optimizer is built from."""
    cfg.validate()
    parts = method_parts(cfg.method)
    if "adapter" in parts:
        add_adapters(model, cfg)
    if "lora" in parts:
        add_lora(model, cfg)
    if "ia3" in parts:
        add_ia3(model)
    if "prompt" in parts:
        add_prompt(model, cfg)
    if "prefix" in parts:
        add_prefix(model, cfg)
    params = list(model.named_parameters())
    trainable, frozen = [], []
    for name, p in params:
        p.requires_grad_(is_trainable(name, cfg.method))
        (trainable if p.requires_grad else frozen).append((name, p))
    t_names, f_names = {n for n, _ in trainable}, {n for n, _ in frozen}
    assert t_names | f_names == {n for n, _ in params}, "partition does not cover every parameter"
    assert not t_names & f_names, f"trainable and frozen overlap: {sorted(t_names & f_names)}"
    if not trainable:
        raise ValueError(f"method {cfg.method!r} selects no parameter of this model")
    return trainable


# ------------------------------------------------------------------------------------- audit
GROUPS = (  # disjoint by construction: every parameter must match exactly one (checked in group_of)
    ("embeddings", r"^bert\.embeddings\.(word|position|token_type)_embeddings\.weight$"),
    ("attention", r"^bert\.encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight$"),
    ("FFN", r"^bert\.encoder\.layer\.\d+\.(intermediate|output)\.dense\.weight$"),
    ("LayerNorm", r"^bert\..*\.LayerNorm\.weight$"),  # gains (gamma); LayerNorm biases are "biases"
    ("biases", r"^bert\.(embeddings|encoder)\.(.+\.)?(query|key|value|dense|LayerNorm)\.bias$"),  # backbone's
    ("adapters", r"\.adapter\.(down|up)\.(weight|bias)$"),  # adapter weights and their own biases
    ("LoRA", r"\.lora_[AB]$"),
    ("prompt", r"^bert\.embeddings\.prompt\.weight$"),
    ("prefix", r"^bert\.encoder\.prefix\."),  # the MLP and its embedding, or the merged prefixes
    ("IA3", r"\.ia3_l$"),
    ("head", r"^(classifier|bert\.pooler)\."),  # classifier and pooler, weights and biases
)


def group_of(name: str) -> str:
    matches = [group for group, pattern in GROUPS if re.search(pattern, name)]
    if len(matches) != 1:
        raise ValueError(f"parameter {name!r} matches audit groups {matches}, not exactly one: fix adapters.GROUPS")
    return matches[0]


@dataclass
class Audit:
    method: str  # "" when not given
    pooling: str  # "cls" or "mean": the pooling in force
    rows: list  # [(group, trainable, total)] in GROUPS order, groups the model lacks left out
    trainable: int
    total: int  # every parameter, the added adapter / LoRA ones included (as PEFT counts)
    trainable_bytes: int  # tensor bytes save_trainable writes (plus a header of a few KB)
    parts: list = ()  # hybrids: [(part, claimed, claimed by no other part)], then ("shared", n, n)

    def line(self) -> str:
        return (f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                f"trainable%: {100 * self.trainable / self.total:.4f}")

    def table(self) -> str:
        out = [f"method {self.method or '?'}, pooling {self.pooling}",
               f"{'group':<11}{'trainable':>13}{'total':>13}{'%':>9}"]
        for group, t, n in self.rows:
            out.append(f"{group:<11}{t:>13,}{n:>13,}{100 * t / n if n else 0:>9.2f}")
        if self.parts:
            out.append(f"{'part':<11}{'claims':>13}{'alone':>13}")
            out += [f"{part:<11}{claimed:>13,}{alone:>13,}" for part, claimed, alone in self.parts]
        out.append(self.line())
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {**asdict(self), "rows": [list(r) for r in self.rows], "parts": [list(r) for r in self.parts],
                "trainable_pct": 100 * self.trainable / self.total}


def audit(model: nn.Module, trainable: list, method: str = "") -> Audit:
    """Count trainable / total parameters per group from the list apply_method returned; asserts
    that list is exactly the parameters with requires_grad."""
    ids = {id(p) for _, p in trainable}
    flagged = {id(p) for p in model.parameters() if p.requires_grad}
    if ids != flagged:
        raise ValueError("the trainable list and requires_grad disagree: was a flag changed after apply_method?")
    counts = {g: [0, 0] for g, _ in GROUPS}
    for name, p in model.named_parameters():
        row = counts[group_of(name)]
        row[0], row[1] = row[0] + (p.numel() if id(p) in ids else 0), row[1] + p.numel()
    rows = [(g, t, n) for g, (t, n) in counts.items() if n]
    return Audit(method, model.config.pooling, rows, sum(r[1] for r in rows), sum(r[2] for r in rows),
                 checkpoint_size_bytes(trainable), hybrid_parts(trainable, method))


def hybrid_parts(trainable: list, method: str) -> list:
    """What each part of a hybrid contributes: [(part, trainable params its row claims, those no other
    part claims)], then ("shared", n, n) for the params several parts claim (the head at least)."""
    if not method or "+" not in method:
        return []
    parts = method_parts(method)
    claims = [(p.numel(), [part for part in parts if is_trainable(n, part)]) for n, p in trainable]
    rows = [(part, sum(k for k, c in claims if part in c), sum(k for k, c in claims if c == [part])) for part in parts]
    shared = sum(k for k, c in claims if len(c) > 1)
    return rows + [("shared", shared, shared)]


def checkpoint_size_bytes(trainable: list) -> int:
    """Bytes of tensor data in a save_trainable checkpoint (the safetensors header adds a few KB)."""
    return sum(p.numel() * p.element_size() for _, p in trainable)


def assert_optimizer_matches(optimizer: torch.optim.Optimizer, trainable: list):
    """The optimizer holds exactly the audited parameters, by identity, each once."""
    held = [p for group in optimizer.param_groups for p in group["params"]]
    held_ids, audited = {id(p) for p in held}, {id(p): n for n, p in trainable}
    missing = [n for i, n in audited.items() if i not in held_ids]
    extra = [tuple(p.shape) for p in held if id(p) not in audited]
    if missing or extra or len(held) != len(held_ids):
        raise ValueError(f"optimizer != audited trainable list: missing {missing}, "
                         f"{len(extra)} extra (shapes {extra[:5]}), {len(held) - len(held_ids)} duplicates")


# ------------------------------------------------------------------- frozen-weights proof
def tensor_digest(t: torch.Tensor) -> str:
    """dtype, shape and sha256 of the raw bytes: equal digests mean bit-identical tensors."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()  # hashed in place, no copy
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}:{hashlib.sha256(raw).hexdigest()}"


def _require_unmerged(model):
    merged = [n for n, m in lora_layers(model) + ia3_layers(model) if m.merged]
    if merged:  # merging writes W + dW (or l * W) into the frozen weight; the proof is about W itself
        raise RuntimeError(f"LoRA / (IA)^3 layers are merged ({merged[0]}, ...): call unmerge_lora(model) / "
                           "unmerge_ia3(model) first")


def fingerprint(model: nn.Module) -> dict:
    """{name: digest} for every frozen parameter and every buffer. Take it after apply_method and
    before training; the model must be unmerged (LoRA merge changes the base weights)."""
    _require_unmerged(model)
    fp = {n: tensor_digest(p) for n, p in model.named_parameters() if not p.requires_grad}
    fp.update({n: tensor_digest(b) for n, b in model.named_buffers()})
    return fp


def verify_frozen(model: nn.Module, fp: dict) -> dict:
    """{"verdict": "passed", "checked": n} or {"verdict": "failed", "checked": n, "moved": [names]}.
    Must run unmerged (LoRA merge/unmerge restores W bit for bit, so after unmerge it passes)."""
    _require_unmerged(model)
    now = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    moved = [n for n, d in fp.items() if n not in now or tensor_digest(now[n]) != d]
    if moved:
        return {"verdict": "failed", "checked": len(fp), "moved": moved}
    return {"verdict": "passed", "checked": len(fp)}


def assert_frozen(model: nn.Module, fp: dict) -> dict:
    """verify_frozen, raising RuntimeError naming the moved tensors: what the training loop calls."""
    result = verify_frozen(model, fp)
    if result["verdict"] != "passed":
        raise RuntimeError(f"frozen tensors moved during training: {result['moved']}")
    return result


# ------------------------------------------------------------------------------- checkpoints
FORMAT = "bertfit-trainable/1"  # safetensors metadata "format" of a save_trainable file


def fingerprint_digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def save_trainable(model: nn.Module, trainable: list, cfg: MethodConfig, path, meta: dict):
    """Write only the trainable tensors (safetensors). The metadata holds what load_trainable needs:
    method, its options (JSON), base model id, task, num_labels, pooling, `meta` (JSON), and a digest
    of the frozen tensors, so a different base checkpoint, or frozen weights that moved, fail to load.
    Prefix tuning saves the MLP while training (what the optimizer and resume need); after
    merge_prefix(model), pass trainable_params(model) and only the prefixes `kv` are written."""
    base = meta.get("base_model") or getattr(model, "name_or_path", None)
    if not base:
        raise ValueError("save_trainable needs the base model id: meta['base_model'], or a load_pretrained model")
    if {(n, id(p)) for n, p in trainable} != {(n, id(p)) for n, p in trainable_params(model)}:
        raise ValueError("the trainable list is not the model's requires_grad parameters "
                         "(after merge_prefix, pass trainable_params(model))")
    prefix = model.bert.encoder.prefix
    header = {"format": FORMAT, "method": cfg.method, "method_config": json.dumps(asdict(cfg)), "base_model": str(base),
              "task": str(meta.get("task", "")), "num_labels": str(model.config.num_labels),
              "pooling": model.config.pooling, "frozen_digest": fingerprint_digest(fingerprint(model)),
              "prefix_merged": str(prefix is not None and prefix.merged), "meta": json.dumps(meta)}
    save_file({n: p.detach().cpu().contiguous() for n, p in trainable}, str(path), metadata=header)


def load_trainable_tensors(model: nn.Module, trainable: list, path):
    """Copy a save_trainable file into the trainable parameters; every key and shape must match."""
    tensors, target = load_file(str(path)), dict(trainable)
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


def load_trainable(path, device="cpu") -> tuple:
    """Rebuild (model, tokenizer, meta) from a save_trainable file: load_pretrained(base, num_labels,
    pooling), apply_method, check the frozen digest, load the trainable tensors."""
    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a save_trainable checkpoint (format {header.get('format')!r})")
    cfg = MethodConfig.from_json(header["method_config"])
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


def export_merged(model: nn.Module, path, tokenizer=None) -> Path:
    """Fold LoRA and (IA)^3 into the base weights and write a plain checkpoint directory that
    model.load_pretrained(path, num_labels=L) reads: model.safetensors (HF key layout, plain
    weight/bias keys, no lora_ / ia3_ keys), config.json, 1_Pooling/config.json (declares the pooling),
    and tokenizer.json when a tokenizer is given. Adapters, soft prompts and prefixes add computation
    a plain BERT does not have, so they cannot be exported. Layers are left merged or not, as found."""
    kinds = {Adapter: "adapters", SoftPrompt: "soft prompts", PrefixEncoder: "prefixes"}
    found = [name for kind, name in kinds.items() if any(isinstance(m, kind) for m in model.modules())]
    if found:
        raise ValueError(f"{' and '.join(found)} cannot be merged into the base weights; use save_trainable")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    layers = [m for _, m in lora_layers(model) + ia3_layers(model)]  # never the same Linear (MethodConfig.validate)
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
    (out / "config.json").write_text(json.dumps(
        {**asdict(c), "model_type": "bert", "architectures": ["BertForSequenceClassification"]}, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": c.hidden_size, "pooling_mode_cls_token": c.pooling == "cls",
         "pooling_mode_mean_tokens": c.pooling == "mean"}, indent=2))
    if tokenizer is not None:
        tokenizer.tok.save(str(out / "tokenizer.json"))
    return out
