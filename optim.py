"""The optimizer and the learning-rate schedule of a run (train.py): AdamW over exactly the audited
trainable list, linear warm-up then linear decay to zero."""
import math

import torch


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
