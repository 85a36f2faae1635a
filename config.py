"""A run's configuration: the TrainConfig dataclass, its command line, and per-method defaults.

One declaration per option: every field of TrainConfig and of adapters.MethodConfig is a flag
(`lora_r` -> `--lora-r`), its type the annotation's and its --help the comment on its line; a new
field becomes a flag with no other edit. Every bad value is an error before anything loads.
"""
import argparse
import inspect
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field, fields

import adapters
import glue
from checkpoint import DEFAULT_MODEL
from model import ACTIVATIONS
from precision import AMP_CHOICES

DEFAULT_LR = {"full": 2e-5, "bitfit": 1e-3, "adapter": 5e-4, "lora": 5e-4, "head": 1e-3,
              "prompt": 3e-3, "prefix": 5e-4, "ia3": 3e-3}
MODEL_LR = {"minilm": {"full": 1e-4}}  # where one rate cannot serve both models (default_lr says why)


def default_lr(method: str, model: str = "") -> float:
    """DEFAULT_LR of a method; a hybrid takes the smallest of its parts' rates. One optimizer steps
    every part with one rate; the smallest is one every part is known to train stably at, where the
    largest (bitfit's 1e-3 for bitfit+lora) would be twice what LoRA's recipe uses.

    Where the rates come from (README "Default learning rates" has the runs behind them):
      full 2e-5: the BERT paper's range (2e-5..5e-5, sec. A.3).
      bitfit 1e-3: Ben Zaken et al. (2022) sec. 3.1 searched 1e-4..1e-3.
      adapter 5e-4: Houlsby et al. (2019) sec. 3.1 searched 3e-5..3e-3.
      lora 5e-4: Hu et al. (2021) Table 9, RoBERTa-base GLUE 4e-4..5e-4.
      head 1e-3: a linear probe.
      prompt 3e-3: Lester et al. (2021) sec. 3 use 0.3 with Adafactor on T5, whose embeddings are far
          larger; under AdamW a step moves each element by about lr, and BERT's word embeddings have
          element std ~0.06 (MiniLM, ids 1996..6995), so 3e-3 moves a prompt vector by its own scale
          in ~20 steps.
      prefix 5e-4: as for adapters: the reparameterisation MLP is a small network trained from
          scratch, like an adapter (Li & Liang tune GPT-2/BART with smaller rates and tiny batches).
      ia3 3e-3: the T-Few recipe's rate (Liu et al. 2022), which trains only the l vectors.
    MODEL_LR overrides them for one model: full fine-tuning of --model minilm (6 layers, hidden 384)
    under-trains at BERT-base's 2e-5 (MRPC, 3 epochs, seed 0: test F1 82.45) and trains at 1e-4
    (86.33); README "Default learning rates". These are a single run's defaults; the study takes its
    rates from its tuning stage (study/presets.py TUNE_LRS, tuned.json)."""
    rates = {**DEFAULT_LR, **MODEL_LR.get(model, {})}
    return min(rates[part] for part in adapters.method_parts(method))


METHOD_HELP = (f"one of {', '.join(adapters.METHODS)}, or a hybrid of several joined by '+' "
               "(e.g. bitfit+lora; full and head cannot be parts)")


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


@dataclass
class TrainConfig:
    """One training run's settings; with the method's (`options`), every flag of train.py."""
    task: str = "mrpc"  # GLUE task
    frac: float = 1.0  # fraction of the training pool, in (0, 1]; nested across fractions
    epochs: int = 15  # the paper's protocol trains 15-20 epochs and watches for overfitting
    time_budget: float = 0.0  # minutes of training time (evaluation excluded); 0 = no budget
    seed: int = 0  # data fraction, shuffling, init of new weights, dropout
    model: str = DEFAULT_MODEL  # local directory, "minilm", or Hugging Face hub id
    pooling: str = ""  # "" = what the checkpoint declares
    data_dir: str = ""  # GLUE directory; "" = $GLUE_DIR, else ~/.cache/bertfit/glue_data (the only one downloaded into)
    out: str = ""  # run directory; "" = runs/{task}-{method}-f{frac}-s{seed}
    lr: float = 0.0  # peak learning rate; 0 = default_lr(method, model)
    batch_size: int = 32  # training examples per step
    eval_batch_size: int = 128  # evaluation runs in inference mode, so it affords larger batches
    max_length: int = 128  # tokens per example after longest-first truncation, [CLS] and [SEP]s included
    weight_decay: float = 0.01  # AdamW decoupled decay, not applied to biases and LayerNorm
    warmup: float = 0.06  # fraction of planned steps (or of --time-budget) for linear warm-up (RoBERTa/LoRA recipe)
    grad_clip: float = 1.0  # max global gradient norm
    amp: str = "auto"  # autocast precision; auto = bf16 where the hardware has it
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    eval_every: int = 0  # also evaluate every K training steps; 0 = only at epoch ends
    compile: bool = False  # torch.compile the model
    audit: bool = False  # print the trainable-parameter table and exit
    resume: bool = False  # continue the run in --out from its resume.pt (refused if resume.pt is another run's)
    overwrite: bool = False  # delete another run's files in --out first (rundir.RUN_FILES)
    debug: bool = False  # show the traceback of an error instead of one "error:" line
    options: adapters.MethodConfig = field(default_factory=adapters.MethodConfig)  # the method and its options

    @property
    def method(self) -> str:
        return self.options.method

    def record(self) -> dict:
        """results.json's "config": every flag's value, the method's options flattened beside the
        run's (a tuple as the comma list the flag takes)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        method = {f.name: getattr(self.options, f.name) for f in fields(self.options)}
        return {**own, **{k: ",".join(v) if isinstance(v, tuple) else v for k, v in method.items()}}


CHOICES = {"task": sorted(glue.TASKS), "amp": AMP_CHOICES, "pooling": ("cls", "mean"),
           "adapter_placement": tuple(adapters.ADAPTER_SLOTS), "adapter_act": tuple(ACTIVATIONS)}
TYPES = {"method": method_flag}  # hybrids: not a fixed list of choices


def comma_list(text: str) -> tuple:
    return tuple(t for t in text.split(",") if t)


def field_help(cls) -> dict:
    """{field: the comment on its line} from the dataclass's source: a field's comment is its --help."""
    return dict(re.findall(r"^    (\w+): [^#\n]+#\s*(.+)$", textwrap.dedent(inspect.getsource(cls)), flags=re.M))


def add_flags(parser: argparse.ArgumentParser, cls, skip=()):
    """One flag per field of the dataclass `cls`, of the field's type: bools switch on and off
    (--compile, --no-compile), tuples take a comma list."""
    helps = field_help(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name not in helps:
            raise TypeError(f"{cls.__name__}.{f.name} needs a comment on its line: it is the flag's --help")
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helps[f.name])
            continue
        kind = TYPES.get(f.name) or (comma_list if f.type is tuple else f.type)
        shown = ",".join(default) if f.type is tuple else default
        parser.add_argument(flag, type=kind, default=default, choices=CHOICES.get(f.name),
                            help=f"{helps[f.name]} (default: {shown!s})")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


MIN_MAX_LENGTH = 8  # [CLS] A [SEP] B [SEP] is 3 special tokens: 8 leaves a pair 5 real tokens, 2-3 per sentence

# The allowed values of every numeric or free-text field: name -> (test, what is allowed). One function
# applies them (check_values); study/sweep.py and study/bench.py apply the same entries to the flags they share.
# Fields with a fixed list of values (task, amp, pooling, adapter_placement, adapter_act) are argparse choices
# (CHOICES); method and lora_targets are checked by adapters (method_flag, MethodConfig.validate).
CHECKS = {
    "frac": (lambda x: finite(x) and 0 < x <= 1, "in (0, 1]"),
    "epochs": (lambda x: x >= 1, ">= 1"),
    "time_budget": (lambda x: finite(x) and x >= 0, "finite minutes >= 0 (0 = no budget)"),
    "seed": (lambda x: 0 <= x <= 2**32 - 1, "in 0..2**32-1 (numpy's seed range)"),
    "model": (lambda x: x.strip() != "", "a directory, 'minilm' or a hub id, not empty"),
    "lr": (lambda x: finite(x) and x >= 0, "finite and >= 0 (0 = the method's default)"),
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
    "adapter_init_std": (lambda x: finite(x) and x > 0, "finite and > 0"),
    "lora_r": (lambda x: x >= 1, ">= 1"),
    "lora_alpha": (lambda x: finite(x) and x > 0, "finite and > 0"),
    "lora_dropout": (lambda x: finite(x) and 0 <= x < 1, "in [0, 1)"),
    "prompt_length": (lambda x: 1 <= x <= 512 - MIN_MAX_LENGTH, f"in 1..{512 - MIN_MAX_LENGTH}"),
    "prefix_length": (lambda x: x >= 1, ">= 1"),
    "prefix_hidden": (lambda x: x >= 1, ">= 1"),
}


def value_problem(name: str, value, flag: str = None):
    """'--grad-clip must be finite and > 0 (...), got 0.0', or None when CHECKS[name] allows `value`."""
    test, allowed = CHECKS[name]
    if test(value):
        return None
    return f"{flag or '--' + name.replace('_', '-')} must be {allowed}, got {value!r}"


def check_values(cfg: TrainConfig) -> list:
    """Every problem with cfg's values, one line each naming the flag and what it allows; [] if none."""
    values = cfg.record()  # the method's options beside the run's fields
    problems = [value_problem(name, value) for name, value in values.items() if name in CHECKS]
    problems = [p for p in problems if p]
    if cfg.resume and cfg.overwrite:
        problems.append("--resume and --overwrite contradict each other: continue the run, or delete it")
    if not problems:
        try:
            cfg.options.validate()
        except ValueError as e:
            problems.append(str(e))
    return problems


def check_positions(cfg: TrainConfig, max_positions: int):
    """Raise ValueError unless the longest sequence fits the model's position table: --max-length,
    plus the virtual tokens of prompt tuning (prefixes take no positions). Needs the model's config."""
    prompt = cfg.options.prompt_length if "prompt" in adapters.method_parts(cfg.method) else 0
    if cfg.max_length + prompt > max_positions:
        what = f"--max-length {cfg.max_length}" + (f" + --prompt-length {prompt}" if prompt else "")
        raise ValueError(f"{what} > the {max_positions} positions of --model {cfg.model}: "
                         f"shorten {'--max-length or --prompt-length' if prompt else '--max-length'}")


def build_parser() -> argparse.ArgumentParser:
    """train.py's command line: a flag per field of TrainConfig and of adapters.MethodConfig."""
    p = argparse.ArgumentParser(prog="train.py", description="Fine-tune BERT on one GLUE task with one method.")
    add_flags(p, TrainConfig, skip=("options",))
    add_flags(p, adapters.MethodConfig)
    return p


def parse_args(argv=None) -> TrainConfig:
    """CLI -> TrainConfig; every bad value is an error before anything loads."""
    p = build_parser()
    args = vars(p.parse_args(argv))
    options = {f.name: args.pop(f.name) for f in fields(adapters.MethodConfig)}
    cfg = TrainConfig(**args, options=adapters.MethodConfig(**options))
    for problem in check_values(cfg)[:1]:
        p.error(problem)
    cfg.lr = cfg.lr or default_lr(cfg.method, cfg.model)
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
