"""The optimizer and the learning rate of a run (train.py): each method's default peak rate, AdamW
over exactly the audited trainable list, linear warm-up then linear decay to zero."""
import math

import torch

import adapters


DEFAULT_LR = {"full": 2e-5, "bitfit": 1e-3, "adapter": 5e-4, "lora": 5e-4, "head": 1e-3,
              "prompt": 3e-3, "prefix": 5e-4, "ia3": 3e-3, "qlora": 5e-4}
# where one rate cannot serve both models (default_lr says why)
MODEL_LR = {"minilm": {"full": 1e-4}}


def default_lr(method: str, model: str = "") -> float:
    """DEFAULT_LR of a method; a hybrid takes the smallest of its parts' rates. One optimizer steps
    every part with one rate; the smallest is one every part is known to train stably at, where the
    largest (bitfit's 1e-3 for bitfit+lora) would be twice what LoRA's recipe uses.

    Where the rates come from (results/README.md, "Default learning rates", has the runs):
      full 2e-5: the BERT paper's range (2e-5..5e-5, sec. A.3).
      bitfit 1e-3: Ben Zaken et al. (2022) sec. 3.1 searched 1e-4..1e-3.
      adapter 5e-4: Houlsby et al. (2019) sec. 3.1 searched 3e-5..3e-3.
      lora 5e-4: Hu et al. (2021) Table 9, RoBERTa-base GLUE 4e-4..5e-4.
      head 1e-3: a linear probe.
      prompt 3e-3: Lester et al. (2021) sec. 3 use 0.3 with Adafactor on T5, whose embeddings are
          far larger; under AdamW a step moves each element by about lr, and BERT's word embeddings
          have element std ~0.06 (MiniLM, ids 1996..6995), so 3e-3 moves a prompt vector by its own
          scale in ~20 steps.
      prefix 5e-4: as for adapters: the reparameterisation MLP is a small network trained from
          scratch, like an adapter (Li & Liang tune GPT-2/BART with smaller rates and tiny batches).
      ia3 3e-3: the T-Few recipe's rate (Liu et al. 2022), which trains only the l vectors.
      qlora 5e-4: LoRA's; the 4-bit base changes what the update is added to, not how it trains.
    MODEL_LR overrides them for one model: full fine-tuning of --model minilm (6 layers, hidden 384)
    under-trains at BERT-base's 2e-5 (MRPC, 3 epochs, seed 0: test F1 82.45) and trains at 1e-4
    (86.33); results/README.md, "Default learning rates". These are a single run's defaults; the
    study takes its rates from its tuning stage (study/presets.py TUNE_LRS, tuned.json)."""
    rates = {**DEFAULT_LR, **MODEL_LR.get(model, {})}
    return min(rates[part] for part in adapters.method_parts(method))


def build_optimizer(trainable, cfg, device):
    """AdamW over exactly the audited list; no decay on biases and LayerNorm (BERT's recipe)."""
    decay = [p for n, p in trainable if p.ndim >= 2]
    no_decay = [p for n, p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                             fused=device.type in ("cuda", "cpu"))


def lr_factor(step: int, total_steps: int, warmup: float, budget_progress=None) -> float:
    """Linear warm-up then linear decay to zero, over the planned steps; under --time-budget, over
    the budget's training time instead (`budget_progress`: the fraction expected to be spent by the
    end of this step), so that the epoch cap does not stretch the schedule."""
    if budget_progress is not None:
        p = min(1.0, budget_progress)
        return p / warmup if p < warmup else max(0.0, (1 - p) / (1 - warmup))
    warmup_steps = math.ceil(warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def budget_progress(train_seconds: float, steps: int, budget_minutes: float):
    """Under a time budget, the fraction of it expected to be spent by the end of the next step (the
    mean step time so far added); None without one."""
    if not budget_minutes:
        return None
    mean_step = train_seconds / steps if steps else 0.0
    return (train_seconds + mean_step) / (budget_minutes * 60)
