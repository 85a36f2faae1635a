"""A run's configuration: the TrainConfig dataclass, its command line, and per-method defaults.

Every field is a flag (`lora_r` -> `--lora-r`); every bad value is an error before anything loads.
"""
import argparse
from dataclasses import dataclass, fields

import adapters
import glue
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


@dataclass
class TrainConfig:
    task: str = "mrpc"  # GLUE task: one of glue.TASKS
    method: str = "full"  # one of adapters.METHODS, or a hybrid of several joined by "+" ("bitfit+lora")
    frac: float = 1.0  # fraction of the training pool, in (0, 1]; nested across fractions
    epochs: int = 15  # the paper's protocol trains 15-20 epochs and watches for overfitting
    time_budget: float = 0.0  # minutes of training time (evaluation excluded); 0 = no budget
    seed: int = 0  # data fraction, shuffling, init of new weights, dropout
    model: str = DEFAULT_MODEL  # local dir, "minilm", or hub id
    pooling: str = ""  # "cls" or "mean"; "" = what the checkpoint declares
    data_dir: str = ""  # GLUE directory; "" = $GLUE_DIR, else data.resolve_data_dir's default
    out: str = ""  # run directory; "" = runs/{task}-{method}-f{frac}-s{seed}
    lr: float = 0.0  # 0 = default_lr(method)
    batch_size: int = 32
    eval_batch_size: int = 128  # evaluation runs in inference mode, so it affords larger batches
    max_length: int = 128  # tokens per example after longest-first truncation
    weight_decay: float = 0.01  # AdamW decoupled decay, not applied to biases and LayerNorm
    warmup: float = 0.06  # fraction of planned steps for linear warm-up (RoBERTa/LoRA recipe)
    grad_clip: float = 1.0  # max global gradient norm
    amp: str = "auto"  # auto, bf16, fp16, off
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    eval_every: int = 0  # also evaluate every K training steps; 0 = only at epoch ends
    compile: bool = False  # torch.compile the model
    audit: bool = False  # print the trainable-parameter table and exit
    resume: bool = False  # continue from resume.pt in --out
    # method options (adapters.MethodConfig)
    adapter_size: int = 64
    adapter_placement: str = "houlsby"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0  # the LoRA reference GLUE scripts (microsoft/LoRA examples/NLU) set none
    lora_targets: str = "query,value"
    prompt_length: int = 20  # virtual tokens of prompt tuning (MethodConfig explains the defaults)
    prefix_length: int = 20  # prefix positions per layer of prefix tuning
    prefix_hidden: int = 512  # width of prefix tuning's reparameterisation MLP
    train_pooler: bool = False  # also train BERT's pretrained pooler ([CLS] pooling); frozen by default

    def method_config(self) -> "adapters.MethodConfig":
        return adapters.MethodConfig(
            method=self.method, adapter_size=self.adapter_size, adapter_placement=self.adapter_placement,
            lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            lora_targets=tuple(t for t in self.lora_targets.split(",") if t), prompt_length=self.prompt_length,
            prefix_length=self.prefix_length, prefix_hidden=self.prefix_hidden, train_pooler=self.train_pooler)


def parse_args(argv=None) -> TrainConfig:
    """CLI -> TrainConfig; every bad value is an error before anything loads."""
    p = argparse.ArgumentParser(prog="train.py", description="Fine-tune BERT on one GLUE task with one method.")
    choices = {"task": sorted(glue.TASKS), "amp": ["auto", "bf16", "fp16", "off"],
               "pooling": ["cls", "mean"], "adapter_placement": ["houlsby", "pfeiffer"]}
    types = {"method": method_flag}  # hybrids: not a fixed list of choices
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, type=types.get(f.name, type(f.default)), default=f.default,
                           choices=choices.get(f.name))
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    checks = [(0 < cfg.frac <= 1, f"--frac must be in (0, 1], got {cfg.frac}"),
              (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
              (cfg.time_budget >= 0, f"--time-budget must be positive minutes (0 = none), got {cfg.time_budget}"),
              (cfg.lr >= 0, f"--lr must be positive, got {cfg.lr}"),
              (cfg.batch_size >= 1 and cfg.eval_batch_size >= 1, "batch sizes must be >= 1"),
              (2 < cfg.max_length <= 512, f"--max-length must be in 3..512, got {cfg.max_length}"),
              (cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda"),
               f"--device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:
        cfg.method_config().validate()
    except ValueError as e:
        p.error(str(e))
    cfg.lr = cfg.lr or default_lr(cfg.method)
    cfg.out = cfg.out or f"runs/{cfg.task}-{cfg.method}-f{cfg.frac:g}-s{cfg.seed}"
    return cfg
