"""A run's configuration: the TrainConfig dataclass, its command line, and per-method defaults.

One declaration per option: a field of TrainConfig or of adapters.MethodConfig, declared with
flags.option (its help, --help group, choices), is a flag (`lora_r` -> `--lora-r`); its range is one
plain `if` in its class's problems(). A new option is one field and, if its values are limited, one
if.
"""
import argparse
import re
import sys
from dataclasses import dataclass, field, fields

import adapters
import glue
from adapters import MIN_MAX_LENGTH
from checkpoint import DEFAULT_MODEL
from optim import default_lr
from flags import CONTROL, GROUPS, HOW, WHAT, Parser, add_flags, bad, finite, option
from precision import AMP_CHOICES

@dataclass
class TrainConfig:
    """One training run's settings; with the method's (`options`, adapters.MethodConfig), every flag
    of train.py. Each field is its flag (flags.option); `problems()` checks the values."""
    task: str = option("mrpc", "GLUE task", WHAT, choices=sorted(glue.TASKS))
    model: str = option(DEFAULT_MODEL, 'local directory, "minilm", or Hugging Face hub id', WHAT)
    pooling: str = option("", "cls or mean; default: what the checkpoint declares", WHAT,
                          choices=("cls", "mean"))
    frac: float = option(1.0, "fraction of the training pool, in (0, 1]; nested across fractions",
                         WHAT)
    seed: int = option(0, "data fraction, shuffling, init of new weights, dropout", WHAT)
    lr: float = option(0.0, "peak learning rate; 0 = the method's default (default_lr)", HOW)
    epochs: int = option(15, "the paper's protocol trains 15-20 epochs and watches for overfitting",
                         HOW)
    time_budget: float = option(0.0, "minutes of training time (evaluation excluded); 0 = no "
                                     "budget", HOW)
    batch_size: int = option(32, "training examples per step", HOW)
    max_length: int = option(128, "tokens per example after longest-first truncation, [CLS] and "
                                  "[SEP]s included", HOW)
    weight_decay: float = option(0.01, "AdamW decoupled decay, not applied to biases and LayerNorm",
                                 HOW)
    warmup: float = option(0.06, "fraction of planned steps (or of --time-budget) for linear "
                                 "warm-up (RoBERTa/LoRA recipe)", HOW)
    grad_clip: float = option(1.0, "max global gradient norm", HOW)
    amp: str = option("auto", "autocast precision; auto = bf16 where the hardware has it", HOW,
                      choices=AMP_CHOICES)
    device: str = option("auto", "auto, cpu, cuda, cuda:N", HOW)
    dropout_masks: str = option("auto", "how dropout draws its masks: fast (several decisions per "
                                        "random integer, CPU), torch (torch's own, every run "
                                        "before this option); auto: fast on a CPU, torch on CUDA, "
                                        "or what a resumed run recorded",
                                HOW, choices=("auto", "torch", "fast"))
    compile: bool = option(False, "torch.compile the model", HOW)
    eval_batch_size: int = option(128, "evaluation runs in inference mode, so it affords larger "
                                       "batches", CONTROL)
    eval_every: int = option(0, "also evaluate every K training steps; 0 = only at epoch ends",
                             CONTROL)
    data_dir: str = option("", "GLUE directory; default: $GLUE_DIR, else "
                               "~/.cache/bertfit/glue_data (the only one downloaded into)", CONTROL)
    out: str = option("", "run directory; default: runs/{task}-{method}-f{frac}-s{seed}", CONTROL)
    resume: bool = option(False, "continue the run in --out from its resume.pt (refused if "
                                 "resume.pt is another run's)", CONTROL)
    overwrite: bool = option(False, "delete another run's files in --out first (rundir.RUN_FILES)",
                             CONTROL)
    tensorboard: bool = option(False, "also write the training curve and evaluations for "
                                      "TensorBoard in --out/tensorboard (needs: pip install "
                                      "tensorboard)", CONTROL)
    audit: bool = option(False, "print the trainable-parameter table and exit", CONTROL)
    debug: bool = option(False, 'show the traceback of an error instead of one "error:" line',
                         CONTROL)
    # the method, its options
    options: adapters.MethodConfig = field(default_factory=adapters.MethodConfig)

    @property
    def method(self) -> str:
        return self.options.method

    def record(self) -> dict:
        """results.json's "config": every flag's value, the method's options flattened beside the
        run's (a tuple as the comma list the flag takes); task and method first."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        method = {f.name: getattr(self.options, f.name) for f in fields(self.options)}
        flat = {**own, **{k: ",".join(v) if isinstance(v, tuple) else v for k, v in method.items()}}
        return {"task": flat.pop("task"), "method": flat.pop("method"), **flat}

    def problems(self) -> list:
        """Every bad value, one line each naming the flag and what it allows; [] if none. Choices
        (task, amp, pooling) are argparse's to check; the method's options are MethodConfig's."""
        p = []
        if not (finite(self.frac) and 0 < self.frac <= 1):
            p.append(bad("--frac", "in (0, 1]", self.frac))
        if self.epochs < 1:
            p.append(bad("--epochs", ">= 1", self.epochs))
        if not (finite(self.time_budget) and self.time_budget >= 0):
            p.append(bad("--time-budget", "finite minutes >= 0 (0 = no budget)", self.time_budget))
        if not 0 <= self.seed <= 2**32 - 1:
            p.append(bad("--seed", "in 0..2**32-1 (numpy's seed range)", self.seed))
        if not self.model.strip():
            p.append(bad("--model", "a directory, 'minilm' or a hub id, not empty", self.model))
        if not (finite(self.lr) and self.lr >= 0):
            p.append(bad("--lr", "finite and >= 0 (0 = the method's default)", self.lr))
        if self.batch_size < 1:
            p.append(bad("--batch-size", ">= 1", self.batch_size))
        if self.eval_batch_size < 1:
            p.append(bad("--eval-batch-size", ">= 1", self.eval_batch_size))
        if not MIN_MAX_LENGTH <= self.max_length <= 512:
            p.append(bad("--max-length", f"in {MIN_MAX_LENGTH}..512 (below {MIN_MAX_LENGTH} a "
                                         "sentence pair keeps almost no real tokens)",
                         self.max_length))
        if not (finite(self.weight_decay) and self.weight_decay >= 0):
            p.append(bad("--weight-decay", "finite and >= 0", self.weight_decay))
        # 1 leaves no decay phase: lr_factor / 0
        if not (finite(self.warmup) and 0 <= self.warmup < 1):
            p.append(bad("--warmup", "in [0, 1)", self.warmup))
        if not (finite(self.grad_clip) and self.grad_clip > 0):
            p.append(bad("--grad-clip", "finite and > 0 (0 would zero every gradient, < 0 flip it)",
                         self.grad_clip))
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            p.append(bad("--device", "auto, cpu, cuda or cuda:N", self.device))
        if self.eval_every < 0:
            p.append(bad("--eval-every", ">= 0 (0 = only at epoch ends)", self.eval_every))
        # the flags' choices, for a TrainConfig made without the command line
        for f in fields(self):
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed and value not in (*allowed, f.default):
                p.append(bad("--" + f.name.replace("_", "-"), f"one of {', '.join(allowed)}",
                             value))
        if self.resume and self.overwrite:
            p.append("--resume and --overwrite contradict each other: continue the run, or "
                     "delete it")
        return p + (self.options.problems() if not p else [])


# The fields that do not define a run: where things are, how evaluation is batched and how often,
# compile, and the switches. They change neither the data, the updates nor the scores, so a run may
# be resumed with other values; every other field of record() is compared (rundir.run_fields).
NOT_RUN_FIELDS = ("data_dir", "out", "device", "eval_batch_size", "eval_every", "compile",
                  "tensorboard", "audit", "resume", "overwrite", "debug")


def value_problems(name: str, value, flag: str = "") -> list:
    """TrainConfig's problems() with one field set to `value`, named by the caller's `flag` where it
    has its own (--seeds for --seed): how study/sweep.py, study/bench.py and predict.py apply
    train.py's checks to the values they share with it."""
    lines = TrainConfig(**{name: value}).problems()
    return [flag + line[line.index(" "):] if flag else line for line in lines]


def check_positions(cfg: TrainConfig, max_positions: int):
    """Raise ValueError unless the longest sequence fits the model's position table: --max-length,
    plus the virtual tokens of prompt tuning (prefixes take no positions). Needs the model's
    config."""
    prompt = cfg.options.prompt_length if "prompt" in adapters.method_parts(cfg.method) else 0
    if cfg.max_length + prompt > max_positions:
        what = f"--max-length {cfg.max_length}" + (f" + --prompt-length {prompt}" if prompt else "")
        raise ValueError(f"{what} > the {max_positions} positions of --model {cfg.model}: shorten "
                         f"{'--max-length or --prompt-length' if prompt else '--max-length'}")


def build_parser(argv=None) -> argparse.ArgumentParser:
    """train.py's command line: a flag per field of TrainConfig and of adapters.MethodConfig, in
    --help's groups; --lr's default is shown as the rate the given --method and --model will use."""
    p = Parser(prog="train.py",
               usage="%(prog)s [--task T] [--method M] [--model M] [--frac F] [...]",
               description="Fine-tune BERT on one GLUE task with one method. Every flag:")
    given = Parser(add_help=False)  # what --help needs to show --lr's real default
    given.add_argument("--method", type=adapters.method_flag, default="full")
    given.add_argument("--model", default=DEFAULT_MODEL)
    try:
        pre = given.parse_known_args(argv)[0]
    except SystemExit:  # a bad --method: the full parser says so
        pre = given.parse_known_args([])[0]
    rate = f"{default_lr(pre.method, pre.model):g} for --method {pre.method} --model {pre.model}"
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    add_flags(groups, TrainConfig, skip=("options",), shown={"lr": rate})
    add_flags(groups, adapters.MethodConfig)
    return p


def parse_args(argv=None) -> TrainConfig:
    """CLI -> TrainConfig; every bad value is an error before anything loads."""
    p = build_parser(argv)
    args = vars(p.parse_args(argv))
    options = {f.name: args.pop(f.name) for f in fields(adapters.MethodConfig)}
    cfg = TrainConfig(**args, options=adapters.MethodConfig(**options))
    for problem in cfg.problems()[:1]:
        p.error(problem)
    cfg.lr = cfg.lr or default_lr(cfg.method, cfg.model)
    cfg.out = cfg.out or f"runs/{cfg.task}-{cfg.method}-f{cfg.frac:g}-s{cfg.seed}"
    return cfg


ANTICIPATED = (OSError, ValueError, RuntimeError, FloatingPointError)  # failures a user can act on


def run_cli(main, argv=None):
    """Call main(argv); an anticipated failure (a missing or corrupt file, a model not found
    offline, a refused directory, a diverged run) prints one line `error: ...` and exits 1, without
    a traceback unless --debug is given. Other exceptions are bugs and keep their traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except ANTICIPATED as e:
        if "--debug" in argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
