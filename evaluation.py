"""Scoring a model on a labelled split (train.py evaluates on validation and test after every
epoch): metrics and mean loss in inference mode, under the run's autocast, every example seen
once."""
import torch
import torch.nn.functional as F

import data
import distributed as dist
from precision import autocast


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def loss_fn(logits, labels, regression: bool):
    logits = logits.float()  # the loss in fp32 whatever autocast produced
    return F.mse_loss(logits.squeeze(-1), labels) if regression else F.cross_entropy(logits, labels)


def evaluate(model, task, split, batch_size: int, device, amp_dtype,
             show=lambda batches: batches) -> tuple:
    """(metrics and mean loss, predictions in the split's order) over a labelled split, in inference
    mode, batches sorted by length, every example once over all ranks. Predictions are class ids, or
    scores for regression. `show` wraps the batches (a progress bar)."""
    model.eval()
    preds, labels, index, losses = [], [], [], []
    eval_batches = data.batches(split, batch_size, shuffle=False, rank=dist.rank(),
                                world_size=dist.world_size())
    with torch.inference_mode(), autocast(device, amp_dtype):
        for batch in show(eval_batches):
            b = to_device(batch, device)
            logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).float()
            losses.append(loss_fn(logits, b["labels"], task.is_regression) * len(logits))
            preds.append((logits[:, 0] if task.is_regression else logits.argmax(-1)).cpu())
            labels.append(batch["labels"])
            index.append(batch["index"])
    model.train()
    preds, labels, index = dist.gather_cat([torch.cat(preds), torch.cat(labels), torch.cat(index)])
    loss = dist.all_sum(torch.stack(losses).sum()).item() / len(index)
    assert sorted(index.tolist()) == list(range(len(split))), \
        "evaluation must see every example once"
    return {"loss": loss, **task.compute_metrics(preds.numpy(), labels.numpy())}, \
        preds[torch.argsort(index)].numpy()
