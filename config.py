"""A run's configuration: the TrainConfig dataclass, its command line, and per-method defaults.

Every field is a flag (`lora_r` -> `--lora-r`); every bad value is an error before anything loads.
"""
import argparse
import math
import re
import sys
from dataclasses import dataclass, field, fields

import adapters
import glue
from lora import LORA_TARGETS
from model import DEFAULT_MODEL

# Learning rates by method. Full fine-tuning: BERT paper's range (2e-5..5e-5, sec. A.3).
# BitFit: 1e-3 (Ben Zaken et al. 2022, sec. 3.1 searched 1e-4..1e-3). Adapters: 5e-4 (Houlsby et
# al. 2019, sec. 3.1 searched 3e-5..3e-3). LoRA: 5e-4 (Hu et al. 2021, tab. 9, RoBERTa-base GLUE
# 4e-4..5e-4). Head only: 1e-3, a linear probe. See README "Protocol" for the runs behind them.
# Prompt: 3e-3. Lester et al. (2021, sec. 3) use 0.3 with Adafactor on T5, whose embeddings are far
# larger; under AdamW a step moves each element by about lr, and BERT's word embeddings have element
# std ~0.06 (MiniLM, ids 1996..6995), so 3e-3 moves a prompt vector by its own scale in ~20 steps.
# Prefix: 5e-4, as for adapters: the reparameterisation MLP is a small network trained from scratch,
# like an adapter (Li & Liang tune GPT-2/BART with smaller rates and tiny batches). (IA)^3: 3e-3, the
# rate of the T-Few recipe (Liu et al. 2022), which trains only the l vectors. Not yet tuned here.
DEFAULT_LR = {"full": 2e-5, "bitfit": 1e-3, "adapter": 5e-4, "lora": 5e-4, "head": 1e-3,
              "prompt": 3e-3, "prefix": 5e-4, "ia3": 3e-3}


def default_lr(method: str) -> float:
    """DEFAULT_LR of a method; a hybrid takes the smallest of its parts' rates. One optimizer steps
    every part with one rate; the smallest is one every part is known to train stably at, where the
    largest (bitfit's 1e-3 for bitfit+lora) would be twice what LoRA's recipe uses."""
    return min(DEFAULT_LR[part] for part in adapters.method_parts(method))


def method_flag(text: str) -> str:
    """argparse type of --method: the canonical name ("lora+bitfit" -> "bitfit+lora"), or an error
    that lists what is allowed."""
    problem = adapters.method_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} ({problem})")
    return adapters.canonical_method(text)


def opt(default, help: str):
    """A TrainConfig field with its --help text (the flag's default is appended by argparse)."""
    return field(default=default, metadata={"help": help})


METHOD_HELP = (f"one of {', '.join(adapters.METHODS)}, or a hybrid of several joined by '+' "
               "(e.g. bitfit+lora; full and head cannot be parts)")


@dataclass
class TrainConfig:
    task: str = opt("mrpc", "GLUE task")
    method: str = opt("full", METHOD_HELP)
    frac: float = opt(1.0, "fraction of the training pool, in (0, 1]; nested across fractions")
    epochs: int = opt(15, "epochs; the paper's protocol trains 15-20 and watches for overfitting")
    time_budget: float = opt(0.0, "minutes of training time (evaluation excluded); 0 = no budget")
    seed: int = opt(0, "seed of the data fraction, shuffling, init of new weights, dropout")
    model: str = opt(DEFAULT_MODEL, "local checkpoint directory, 'minilm', or a Hugging Face hub id")
    pooling: str = opt("", "cls or mean; '' = what the checkpoint declares")
    data_dir: str = opt("", "GLUE directory; '' = $GLUE_DIR, else ~/.cache/bertfit/glue_data (downloaded on "
                            "first use; an explicit directory is never downloaded into)")
    out: str = opt("", "run directory; '' = runs/{task}-{method}-f{frac}-s{seed}")
    lr: float = opt(0.0, "peak learning rate; 0 = the method's default (config.DEFAULT_LR)")
    batch_size: int = opt(32, "training batch size")
    eval_batch_size: int = opt(128, "evaluation batch size (inference mode affords larger batches)")
    max_length: int = opt(128, "tokens per example after longest-first truncation, [CLS] and [SEP]s included")
    weight_decay: float = opt(0.01, "AdamW decoupled weight decay, not applied to biases and LayerNorm")
    warmup: float = opt(0.06, "fraction of the planned steps (or of --time-budget) for linear warm-up")
    grad_clip: float = opt(1.0, "max global gradient norm")
    amp: str = opt("auto", "autocast precision: auto (bf16 where the hardware has it), bf16, fp16 (CUDA), off")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    eval_every: int = opt(0, "also evaluate every K training steps; 0 = only at epoch ends")
    compile: bool = opt(False, "torch.compile the model")
    audit: bool = opt(False, "print the trainable-parameter table and exit")
    resume: bool = opt(False, "continue the run in --out from its resume.pt (refused if it is another run)")
    overwrite: bool = opt(False, "delete another run's files in --out first (RUN_FILES in rundir.py)")
    debug: bool = opt(False, "show the traceback of an error instead of one 'error:' line")
    # method options (adapters.MethodConfig explains each default)
    adapter_size: int = opt(64, "adapter bottleneck width m")
    adapter_placement: str = opt("houlsby", "houlsby (two adapters per layer) or pfeiffer (one, after the FFN)")
    lora_r: int = opt(8, "LoRA rank r")
    lora_alpha: float = opt(16.0, "LoRA scale: the update is multiplied by alpha / r")
    lora_dropout: float = opt(0.0, "dropout on the LoRA path's input, in [0, 1)")
    lora_targets: str = opt("query,value", f"comma list of the layers LoRA adapts, from {', '.join(LORA_TARGETS)}")
    prompt_length: int = opt(20, "virtual tokens of prompt tuning; they take positions: "
                                 "prompt length + --max-length <= the model's positions")
    prefix_length: int = opt(20, "prefix positions per layer of prefix tuning (keys/values only, no positions)")
    prefix_hidden: int = opt(512, "width of prefix tuning's reparameterisation MLP")

    def method_config(self) -> "adapters.MethodConfig":
        return adapters.MethodConfig(
            method=self.method, adapter_size=self.adapter_size, adapter_placement=self.adapter_placement,
            lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            lora_targets=tuple(t for t in self.lora_targets.split(",") if t), prompt_length=self.prompt_length,
            prefix_length=self.prefix_length, prefix_hidden=self.prefix_hidden)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


MIN_MAX_LENGTH = 8  # [CLS] A [SEP] B [SEP] is 3 special tokens: 8 leaves a pair 5 real tokens, 2-3 per sentence

# The allowed values of every numeric or free-text field: name -> (test, what is allowed). One function
# applies them (check_values); sweep.py and bench.py apply the same entries to the flags they share.
# Fields with a fixed list of values (task, amp, pooling, adapter_placement) are argparse choices
# (CHOICES); method and lora_targets are checked by adapters (method_flag, MethodConfig.validate).
CHECKS = {
    "frac": (lambda x: finite(x) and 0 < x <= 1, "in (0, 1]"),
    "epochs": (lambda x: x >= 1, ">= 1"),
    "time_budget": (lambda x: finite(x) and x >= 0, "finite minutes >= 0 (0 = no budget)"),
    "seed": (lambda x: 0 <= x <= 2**32 - 1, "in 0..2**32-1 (numpy's seed range)"),
    "model": (lambda x: x.strip() != "", "a directory, 'minilm' or a hub id, not empty"),
    "lr": (lambda x: finite(x) and x >= 0, "finite and > 0 (0 = the method's default)"),
    "batch_size": (lambda x: x >= 1, ">= 1"),
    "eval_batch_size": (lambda x: x >= 1, ">= 1"),
    "max_length": (lambda x: MIN_MAX_LENGTH <= x <= 512,
                   f"in {MIN_MAX_LENGTH}..512 (below {MIN_MAX_LENGTH} a sentence pair keeps almost no real tokens)"),
    "weight_decay": (lambda x: finite(x) and x >= 0, "finite and >= 0"),
    # 1 would leave no decay phase and divide by zero in lr_factor under --time-budget
    "warmup": (lambda x: finite(x) and 0 <= x < 1, "in [0, 1)"),
    "grad_clip": (lambda x: finite(x) and x > 0, "finite and > 0 (0 would zero every gradient, < 0 flip it)"),
    "device": (lambda x: re.fullmatch(r"auto|cpu|cuda(:\d+)?", x) is not None, "auto, cpu, cuda or cuda:N"),
    "eval_every": (lambda x: x >= 0, ">= 0 (0 = only at epoch ends)"),
    "adapter_size": (lambda x: x >= 1, ">= 1"),
    "lora_r": (lambda x: x >= 1, ">= 1"),
    "lora_alpha": (lambda x: finite(x) and x > 0, "finite and > 0"),
    "lora_dropout": (lambda x: finite(x) and 0 <= x < 1, "in [0, 1)"),
    "prompt_length": (lambda x: 1 <= x <= 512 - MIN_MAX_LENGTH, f"in 1..{512 - MIN_MAX_LENGTH}"),
    "prefix_length": (lambda x: x >= 1, ">= 1"),
    "prefix_hidden": (lambda x: x >= 1, ">= 1"),
}
CHOICES = {"task": sorted(glue.TASKS), "amp": ["auto", "bf16", "fp16", "off"], "pooling": ["cls", "mean"],
           "adapter_placement": list(adapters.ADAPTER_SLOTS)}


def value_problem(name: str, value, flag: str = None):
    """'--grad-clip must be finite and > 0 (...), got 0.0', or None when CHECKS[name] allows `value`."""
    test, allowed = CHECKS[name]
    if test(value):
        return None
    return f"{flag or '--' + name.replace('_', '-')} must be {allowed}, got {value!r}"


def check_values(cfg: TrainConfig) -> list:
    """Every problem with cfg's values, one line each naming the flag and what it allows; [] if none."""
    problems = [value_problem(f.name, getattr(cfg, f.name)) for f in fields(cfg) if f.name in CHECKS]
    problems = [p for p in problems if p]
    if cfg.resume and cfg.overwrite:
        problems.append("--resume and --overwrite contradict each other: continue the run, or delete it")
    if not problems:
        try:
            cfg.method_config().validate()
        except ValueError as e:
            problems.append(str(e))
    return problems


def check_positions(cfg: TrainConfig, max_positions: int):
    """Raise ValueError unless the longest sequence fits the model's position table: --max-length,
    plus the virtual tokens of prompt tuning (prefixes take no positions). Needs the model's config."""
    prompt = cfg.prompt_length if "prompt" in adapters.method_parts(cfg.method) else 0
    if cfg.max_length + prompt > max_positions:
        what = f"--max-length {cfg.max_length} + --prompt-length {prompt}" if prompt else f"--max-length {cfg.max_length}"
        raise ValueError(f"{what} > the {max_positions} positions of --model {cfg.model}: "
                         f"shorten {'--max-length or --prompt-length' if prompt else '--max-length'}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: X)' to every flag's help, except where the help already says what '' means
    and for on/off switches."""

    def _get_help_string(self, action):
        return action.help if action.default is False or action.default in ("", None) else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field (`lora_r` -> `--lora-r`), its help from the field."""
    p = argparse.ArgumentParser(prog="train.py", description="Fine-tune BERT on one GLUE task with one method.",
                                formatter_class=HelpFormatter)
    types = {"method": method_flag}  # hybrids: not a fixed list of choices
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            p.add_argument(flag, type=types.get(f.name, type(f.default)), default=f.default,
                           choices=CHOICES.get(f.name), help=f.metadata["help"])
    return p


def parse_args(argv=None) -> TrainConfig:
    """CLI -> TrainConfig; every bad value is an error before anything loads."""
    p = build_parser()
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    for problem in check_values(cfg)[:1]:
        p.error(problem)
    cfg.lr = cfg.lr or default_lr(cfg.method)
    cfg.out = cfg.out or f"runs/{cfg.task}-{cfg.method}-f{cfg.frac:g}-s{cfg.seed}"
    return cfg


ANTICIPATED = (OSError, ValueError, RuntimeError, FloatingPointError)  # failures a user can act on


def run_cli(main, argv=None):
    """Call main(argv); an anticipated failure (a missing or corrupt file, a model not found offline,
    a refused directory, a diverged run) prints one line `error: ...` and exits 1, without a traceback
    unless --debug is given. Other exceptions are bugs and keep their traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except ANTICIPATED as e:
        if "--debug" in argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
