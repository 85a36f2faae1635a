"""Efficient fine-tuning methods: which parameters train, the modules some methods add, and the
proof that everything else stayed frozen.

  full    every parameter trains.
  bitfit  every bias term (the pooler's included) plus the task head (Ben Zaken et al., 2022,
          "BitFit", sec. 3).
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
  qlora   LoRA on layers whose frozen weight is stored in 4-bit NormalFloat, plus the task head
          (Dettmers et al., 2023; qlora.py, nf4.py).
Hybrids combine methods by name, `bitfit+lora`: the parts' modules are all inserted and the
trainable set is the union of their rows of TRAINABLE (the "hybrid" family of Xu et al.'s PEFT
survey, 2023, arXiv 2312.12148). The name is canonical with its parts sorted; `full` and `head`
stand alone.

The task head is the new `classifier` alone. BERT's pretrained pooler (`bert.pooler.dense`, [CLS]
pooling only) is backbone, as each method's paper and reference code treat it: frozen for every
method but `full`, and BitFit trains its bias as it trains every bias. (BitFit, sec. 3: the biases
and the classifier; adapter-bert keeps the pooler frozen; PEFT's LoRA for sequence classification
saves only the classifier.) `MethodConfig.train_pooler` adds the pooler's weight and bias to any
method (POOLER).

The whole trainable set of a method is one row of TRAINABLE (plus POOLER when asked): anchored
regexes over parameter names. `apply_method` is the one function that sets requires_grad, on every
parameter, and returns the (name, parameter) list that the optimizer, the audit (audit.py) and the
trainable-only checkpoints (saving.py) are all built from. It raises when a pattern in force claims
no parameter (a typo would otherwise train nothing silently) and when a parameter the method
inserted stays frozen.
"""
import argparse
import json
import re
from dataclasses import dataclass, fields

import torch.nn as nn

from flags import METHOD, WHAT, bad, finite, option
from ia3 import IA3_PARAMS, IA3_TARGETS, IA3Linear, add_ia3
from lora import LORA_PARAMS, LORA_TARGETS, LoRALinear, add_lora
from model import ACTIVATIONS
from prompts import PREFIX_PARAMS, PROMPT_PARAMS, add_prefix, add_prompt
from qlora import NF4_PARAMS, add_qlora

METHODS = ("full", "bitfit", "adapter", "lora", "head", "prompt", "prefix", "ia3", "qlora")
SOLO = {"full": "it already trains every parameter",
        "head": "every method already trains the task head"}
# placement -> slots (module paths inside bert.encoder.layer.N) that get an Adapter. houlsby: two
# per layer (Houlsby et al., 2019, Fig. 2). pfeiffer: one per layer, in the FFN slot, the position
# Pfeiffer et al. (2021, AdapterFusion) chose; their adapter's own LayerNorm/residual wiring is not
# reproduced.
ADAPTER_SLOTS = {"houlsby": ("attention.output", "output"), "pfeiffer": ("output",)}


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
    """"bitfit+lora" -> ("bitfit", "lora"), sorted; a single method -> (method,). Raises
    ValueError."""
    problem = method_problem(method)
    if problem:
        raise ValueError(f"method {method!r}: {problem}")
    return tuple(sorted(method.split("+")))


def canonical_method(method: str) -> str:
    """The order-insensitive name of a method: "lora+bitfit" -> "bitfit+lora"."""
    return "+".join(method_parts(method))




def method_flag(text: str) -> str:
    """argparse type of --method: the canonical name ("lora+bitfit" -> "bitfit+lora"), or an error
    that lists what is allowed."""
    problem = method_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} ({problem})")
    return canonical_method(text)


METHOD_HELP = (f"one of {', '.join(METHODS)}, or a hybrid of several joined by '+' "
               "(e.g. bitfit+lora; full and head cannot be parts)")
# [CLS] A [SEP] B [SEP] is 3 special tokens: 8 leaves a pair 5 real tokens, 2-3 per sentence
MIN_MAX_LENGTH = 8  # the shortest --max-length (config.TrainConfig); bounds --prompt-length too


@dataclass
class MethodConfig:
    """A method and its options; each field is also a train.py flag (flags.option).

    Where the defaults come from:
      adapter_size 64: Houlsby et al. (2019) sec. 3.1 sweep m in {8, 64, 256}.
      adapter_act gelu, adapter_init_std 1e-3: adapter-bert's nonlinearity and init_scale; Houlsby
          sec. 3.6 finds results robust for std below 1e-2.
      lora_r 8: Hu et al. (2021) sec. 7.2 find r = 1..8 enough; 8 as in their RoBERTa GLUE runs
          (Table 9).
      lora_alpha 16: the microsoft/LoRA examples/NLU scripts.
      lora_dropout 0.0: the RoBERTa/DeBERTa GLUE code (microsoft/LoRA examples/NLU) builds
          lora.Linear without lora_dropout (loralib's default 0.0); the paper's 0.1 is for GPT-2 on
          E2E (Table 11).
      lora_targets query, value: W_q, W_v, the paper's GLUE setting (sec. 5.1; sec. 7.1 compares
          others).
      prompt_length 20: Lester et al. (2021) sec. 3.2 (Fig. 3a) find gains marginal beyond 20 tokens
          (they used 100 for T5); each token lengthens every sequence, 128 -> 148 here.
      prefix_length 20: Li & Liang (2021) sec. 7.1 find 200 best for summarisation, 10 for
          table-to-text; 20 is PEFT's usual num_virtual_tokens.
      prefix_hidden 512: the reparameterisation MLP's width (sec. 4.3), the reference code's mid_dim
          (XiangLi1999/PrefixTuning).
      train_pooler False: the methods' papers keep BERT's pretrained pooler frozen (the module
          docstring).
    """
    method: str = option("full", METHOD_HELP, WHAT, kind=method_flag)
    adapter_size: int = option(64, "m, the adapters' bottleneck width", METHOD)
    adapter_placement: str = option("houlsby", "which adapter slots are filled (ADAPTER_SLOTS)",
                                    METHOD, choices=tuple(ADAPTER_SLOTS))
    adapter_act: str = option("gelu", "the bottleneck's nonlinearity (model.ACTIVATIONS)", METHOD,
                              choices=tuple(ACTIVATIONS))
    adapter_init_std: float = option(1e-3, "std of the adapters' truncated-normal (+-2 std) "
                                           "down/up weights", METHOD)
    lora_r: int = option(8, "LoRA's rank r", METHOD)
    lora_alpha: float = option(16.0, "LoRA's update is scaled by alpha / r", METHOD)
    lora_dropout: float = option(0.0, "dropout on the LoRA path's input", METHOD)
    lora_targets: tuple = option(("query", "value"), f"the Linear layers LoRA adapts, a comma list "
                                 f"of {', '.join(LORA_TARGETS)}", METHOD)
    prompt_length: int = option(20, "V, prompt tuning's virtual tokens", METHOD)
    prefix_length: int = option(20, "P, prefix tuning's positions per layer", METHOD)
    prefix_hidden: int = option(512, "width of prefix tuning's reparameterisation MLP", METHOD)
    qlora_double_quant: bool = option(True, "QLoRA: also quantize the 4-bit blocks' scales "
                                            "(Dettmers et al. sec. 3)", METHOD)
    train_pooler: bool = option(False, "also train BERT's pretrained pooler ([CLS] pooling only; "
                                       "`full` trains it anyway)", METHOD)

    def __post_init__(self):
        # "lora+bitfit" -> "bitfit+lora"; unknown names raise
        self.method = canonical_method(self.method)

    def problems(self) -> list:
        """Every bad option, one line each naming it and what it allows; [] if none. The one check
        of the method's options, for the command line (config.TrainConfig.problems) and the API."""
        p = []
        if self.method != canonical_method(self.method):
            p.append(f"method {self.method!r}: write it {canonical_method(self.method)!r}")
        if self.adapter_placement not in ADAPTER_SLOTS:
            p.append(f"adapter_placement {self.adapter_placement!r}: allowed {list(ADAPTER_SLOTS)}")
        if self.adapter_act not in ACTIVATIONS:
            p.append(f"adapter_act {self.adapter_act!r}: allowed {list(ACTIVATIONS)}")
        if self.adapter_size < 1:
            p.append(bad("--adapter-size", ">= 1", self.adapter_size))
        if not (finite(self.adapter_init_std) and self.adapter_init_std > 0):
            p.append(bad("--adapter-init-std", "finite and > 0", self.adapter_init_std))
        if self.lora_r < 1:
            p.append(bad("--lora-r", ">= 1", self.lora_r))
        if not (finite(self.lora_alpha) and self.lora_alpha > 0):
            p.append(bad("--lora-alpha", "finite and > 0", self.lora_alpha))
        if not (finite(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            p.append(bad("--lora-dropout", "in [0, 1)", self.lora_dropout))
        p += lora_target_problems(self.method, self.lora_targets)
        if not 1 <= self.prompt_length <= 512 - MIN_MAX_LENGTH:
            p.append(bad("--prompt-length", f"in 1..{512 - MIN_MAX_LENGTH}", self.prompt_length))
        if self.prefix_length < 1:
            p.append(bad("--prefix-length", ">= 1", self.prefix_length))
        if self.prefix_hidden < 1:
            p.append(bad("--prefix-hidden", ">= 1", self.prefix_hidden))
        return p

    def validate(self) -> "MethodConfig":
        """self, or ValueError with the first of problems()."""
        for problem in self.problems()[:1]:
            raise ValueError(problem)
        return self

    @classmethod
    def from_json(cls, text: str) -> "MethodConfig":
        raw = json.loads(text)
        tuples = {f.name for f in fields(cls) if isinstance(f.default, tuple)}  # JSON has no tuples
        return cls(**{k: tuple(v) if k in tuples else v for k, v in raw.items()}).validate()


def lora_target_problems(method: str, targets) -> list:
    """What is wrong with --lora-targets: names, repeats, and layers (IA)^3 rescales when a hybrid
    has both (one nn.Linear can become LoRALinear or IA3Linear, not both); lora with qlora."""
    if isinstance(targets, str) or not targets or len(set(targets)) != len(targets):
        return [f"lora_targets must be a non-empty tuple of distinct names from "
                f"{list(LORA_TARGETS)}, got {targets!r}"]
    unknown = [f"lora target {t!r}: allowed {list(LORA_TARGETS)}" for t in targets
               if t not in LORA_TARGETS]
    parts = set(method.split("+"))
    if {"lora", "qlora"} <= parts:  # one nn.Linear becomes LoRALinear or QLoRALinear
        return [f"method {method!r}: lora and qlora adapt the same layers; choose one"]
    ia3_paths = {path for path, _ in IA3_TARGETS.values()}
    shared = [t for t in targets if LORA_TARGETS.get(t) in ia3_paths]
    if not unknown and "ia3" in parts and parts & {"lora", "qlora"} and shared:
        free = [t for t in LORA_TARGETS if LORA_TARGETS[t] not in ia3_paths]
        return [f"method {method!r}: lora_targets {shared} are layers (IA)^3 rescales; "
                f"choose lora_targets among {free}"]
    return unknown


# ---------------------------------------------------------------------------------- adapters
# The names of what add_adapters inserts, as a pattern over parameter names: the one place they are
# spelled (TRAINABLE below and audit.GROUPS read it from here).
ADAPTER_PARAMS = r"\.adapter\.(down|up)\.(weight|bias)$"


class Adapter(nn.Module):
    """Bottleneck adapter, x + up(act(down(x))): (B, T, H) -> (B, T, m) -> (B, T, H) (Houlsby et
    al., 2019, sec. 2.1, Fig. 2). Near-identity at init (sec. 2.1): down/up weights are
    truncated-normal with a small std and the biases zero, so the added term is tiny but every
    weight gets a gradient on the first step (with up = 0, down's gradient would be exactly
    zero)."""

    def __init__(self, hidden_size: int, adapter_size: int, act: str = "gelu",
                 init_std: float = 1e-3):
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
HEAD = (r"^classifier\.",)  # the task head: the new classifier's weight and bias
# pretrained backbone; trains only with train_pooler (or full)
POOLER = (r"^bert\.pooler\.dense\.(weight|bias)$",)
TRAINABLE = {  # method -> anchored regexes over parameter names; a parameter trains iff one matches
    "full": (r"^.+$",),  # every parameter, the pooler's included
    # q/k/v/attn-out/FFN/LayerNorm/embedding-LN/pooler biases + head
    "bitfit": (r"\.bias$",) + HEAD,
    "adapter": (ADAPTER_PARAMS, r"\.LayerNorm\.(weight|bias)$") + HEAD,
    "lora": (LORA_PARAMS,) + HEAD,
    "head": HEAD,
    "prompt": (PROMPT_PARAMS,) + HEAD,
    "prefix": (PREFIX_PARAMS,) + HEAD,
    "ia3": (IA3_PARAMS,) + HEAD,  # l_k, l_v, l_ff in every layer
    # LoRA's A and B; the 4-bit weights (qlora.NF4_PARAMS) stay frozen
    "qlora": (LORA_PARAMS,) + HEAD,
}


def method_patterns(method: str, train_pooler: bool = False) -> list:
    """[(part, pattern)] in force: each part's row of TRAINABLE, then ("pooler", POOLER) if
    asked."""
    return [(part, p) for part in method_parts(method) for p in TRAINABLE[part]] + \
        [("pooler", p) for p in (POOLER if train_pooler else ())]


# ------------------------------------------------------------------ merging into the weights
MERGEABLE = (LoRALinear, IA3Linear)  # layers whose update folds into the frozen weight, and back


def mergeable_layers(model: nn.Module) -> list:
    """(name, layer) for every LoRA and (IA)^3 layer in the model."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MERGEABLE)]


def merge(model: nn.Module) -> int:
    """merge() every LoRA and (IA)^3 layer; returns how many there are. Idempotent, and only ever an
    explicit call (never .eval()). Prefixes merge one way only: prompts.merge_prefix."""
    layers = mergeable_layers(model)
    for _, m in layers:
        m.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """unmerge() every LoRA and (IA)^3 layer, restoring the stored weights bit for bit; returns how
    many there are. Idempotent."""
    layers = mergeable_layers(model)
    for _, m in layers:
        m.unmerge()
    return len(layers)


def trainable_params(model: nn.Module) -> list:
    """[(name, parameter)] with requires_grad, in model order: what apply_method returned, until a
    surgery that swaps parameters (merge_prefix)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def apply_method(model: nn.Module, cfg: MethodConfig) -> list:
    """Insert the method's modules (each part's, for a hybrid), set requires_grad True/False on
    every parameter, and return the trainable [(name, parameter)]: the one list the optimizer is
    built from. Raises, before any flag is set, if a pattern in force claims no parameter of the
    model, or if a parameter the method inserted would stay frozen."""
    cfg.validate()
    parts = method_parts(cfg.method)
    before = {n for n, _ in model.named_parameters()}
    if "adapter" in parts:
        add_adapters(model, cfg)
    if "lora" in parts:
        add_lora(model, cfg)
    if "qlora" in parts:
        add_qlora(model, cfg)
    if "ia3" in parts:
        add_ia3(model)
    if "prompt" in parts:
        add_prompt(model, cfg)
    if "prefix" in parts:
        add_prefix(model, cfg)
    params = list(model.named_parameters())
    patterns = method_patterns(cfg.method, cfg.train_pooler)
    # Every pattern in force must claim a parameter. No row holds a pattern that may rightly match
    # nothing: each part's patterns name what that part always has (its inserted modules, the
    # classifier, biases, LayerNorms), the pooler's pattern is in force only when train_pooler asks
    # for it (so asking for it under mean pooling, which has no pooler, is an error), and in a
    # hybrid each part's row is checked against the whole model, so claims shared with another part
    # count.
    for part, pattern in patterns:
        if not any(re.search(pattern, n) for n, _ in params):
            fix = "this model has no pooler (pooling 'mean'): drop train_pooler or use " \
                "[CLS] pooling" if part == "pooler" and model.config.pooling != "cls" \
                else "fix adapters.TRAINABLE or the options"
            raise ValueError(f"method {cfg.method!r}: pattern r'{pattern}' of {part!r} claims no "
                             f"parameter of this model; {fix}")
    trains = {n: any(re.search(p, n) for _, p in patterns) for n, _ in params}
    # Independent of the patterns: what the method inserted exists only to be trained, but for
    # QLoRA's 4-bit form of a pretrained weight, which replaces that weight, frozen as it was.
    frozen_new = [n for n, _ in params
                  if n not in before and not trains[n] and not re.search(NF4_PARAMS, n)]
    if frozen_new:
        raise ValueError(f"method {cfg.method!r}: parameters it inserted match no pattern of its "
                         f"row and would stay frozen: "
                         f"{frozen_new[:4]}{' ...' if len(frozen_new) > 4 else ''}")
    for name, p in params:
        p.requires_grad_(trains[name])
    return [(n, p) for n, p in params if trains[n]]
