"""Fine-tune BERT on one GLUE task with one method: `python train.py --method adapter --frac 0.5`.

The loop is written out so that every efficiency figure is transparent:
  - AdamW over the audited trainable list only (fused kernel on CUDA and CPU), linear warm-up then decay,
    gradient clipping; frozen tensors get no gradient and no optimizer state.
  - One precision path: autocast (bf16, or fp16 with a GradScaler) or nullcontext; the
    trainable master weights stay fp32.
  - SyncTimer synchronizes the device before it reads the clock. Training time excludes
    evaluation; --time-budget counts training time only. The other sync point per step is
    `loss.item()` (for the non-finite check and the log line).
  - After training, every frozen tensor is compared bit for bit with its fingerprint taken
    before training; the verdict goes into results.json and a violation is an error.
Outputs in --out: audit.txt, evals.jsonl (one line per evaluation), results.json (rewritten
atomically after every evaluation, so an interrupted run leaves valid results), best.safetensors
(the best epoch's trainable tensors) and resume.pt (state at the last finished epoch).
"""
import json
import math
import signal
import sys
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import adapters
import audit
import data
import distributed as dist
import glue
import rundir
import saving
from config import check_positions, parse_args, run_cli
from model import load_pretrained
from runinfo import SyncTimer, cpu_has_bf16, environment, peak_memory_bytes, reset_peak_memory, strict_json, write_json

WARMUP_STEPS_EXCLUDED = 3  # steps left out of step-time statistics (allocator, kernels warm up)
MAX_NONFINITE = 20  # consecutive non-finite losses before the run aborts


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here (use --device cpu)")
    return torch.device(name)


def pick_amp(amp: str, device: torch.device):
    """-> (autocast dtype or None, GradScaler or None). auto: bf16 where the hardware has it."""
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "bf16" if cpu_has_bf16() else "off"
    if amp == "fp16" and device.type != "cuda":
        raise SystemExit("--amp fp16 needs CUDA (a GradScaler on CPU is not supported); use bf16 or off")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return dtype, scaler


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def loss_fn(logits, labels, regression: bool):
    logits = logits.float()  # the loss in fp32 whatever autocast produced
    return F.mse_loss(logits.squeeze(-1), labels) if regression else F.cross_entropy(logits, labels)


def evaluate(model, split, cfg, task, device, autocast) -> tuple:
    """(metrics and mean loss, predictions in the split's order) over a labelled split, in
    inference mode, batches sorted by length. Predictions are class ids, or scores for regression."""
    model.eval()
    preds, labels, index, losses = [], [], [], []
    eval_batches = data.batches(split, cfg.eval_batch_size, shuffle=False, rank=dist.rank(), world_size=dist.world_size())
    with torch.inference_mode(), autocast():
        for batch in tqdm(eval_batches, desc="evaluate", leave=False, disable=quiet_bars()):
            b = to_device(batch, device)
            logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).float()
            losses.append(loss_fn(logits, b["labels"], task.is_regression) * len(logits))
            preds.append((logits[:, 0] if task.is_regression else logits.argmax(-1)).cpu())
            labels.append(batch["labels"])
            index.append(batch["index"])
    model.train()
    preds, labels, index = dist.gather_cat([torch.cat(preds), torch.cat(labels), torch.cat(index)])
    loss = dist.all_sum(torch.stack(losses).sum()).item() / len(index)
    assert sorted(index.tolist()) == list(range(len(split))), "evaluation must see every example once"
    return {"loss": loss, **task.compute_metrics(preds.numpy(), labels.numpy())}, preds[torch.argsort(index)].numpy()


def baseline_scores(task, task_data) -> dict:
    """The scores of task.constant_prediction (the training labels' majority class, or their mean
    score) on val and test: what a run that learned nothing from the text gets."""
    constant = task.constant_prediction(task_data.train.labels)
    return {"name": task.baseline_name, "prediction": constant,
            **{name: task.compute_metrics(np.full(len(split), constant), split.labels)
               for name, split in (("val", task_data.val), ("test", task_data.test))}}


def prediction_list(preds: np.ndarray, regression: bool) -> list:
    """JSON-ready predictions: class ids as ints, scores rounded to 5 decimals (far below a score's noise)."""
    return [round(float(x), 5) for x in preds] if regression else [int(x) for x in preds]


def quiet_bars() -> bool:
    """Progress bars only on rank 0 and only on a terminal (a log file gets the epoch lines)."""
    return not dist.is_main() or not sys.stderr.isatty()


def build_optimizer(trainable, cfg, device):
    """AdamW over exactly the audited list; no decay on biases and LayerNorm (BERT's recipe)."""
    decay = [p for n, p in trainable if p.ndim >= 2]
    no_decay = [p for n, p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=device.type in ("cuda", "cpu"))


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


def scores_vs_baseline(line: dict, baseline: dict, metric: str) -> str:
    """'val f1 0.8400 | test f1 0.8307 (majority 0.8122)': a score always beside the floor it must beat."""
    return " | ".join(f"{split} {metric} {line[split][metric]:.4f} ({baseline['name']} {baseline[split][metric]:.4f})"
                      for split in ("val", "test"))


def nonfinite_note(skipped: int) -> str:
    """' | 3 non-finite steps skipped' for the epoch line; '' when there were none."""
    return f" | {skipped} non-finite steps skipped (loss NaN or inf: no update)" if skipped else ""


class Stop(Exception):
    """Raised by SIGTERM so that it unwinds like Ctrl-C and the finished epochs are kept."""


def raise_stop(signum, frame):
    raise Stop()


def main(argv=None):
    cfg = parse_args(argv)
    dist.init()
    task = glue.get_task(cfg.task)
    device = pick_device(cfg.device)
    resume_state = None if cfg.audit else rundir.claim_out_dir(cfg, dist.is_main())  # before the model loads
    data_dir = None if cfg.audit else data.check_task_files(cfg.task, cfg.data_dir or None)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_pretrained(cfg.model, num_labels=task.num_labels, pooling=cfg.pooling or None,
                                       verbose=dist.is_main())
    check_positions(cfg, model.config.max_position_embeddings)
    method = cfg.method_config()
    trainable = adapters.apply_method(model, method)
    report = audit.audit(model, trainable, cfg.method)
    if dist.is_main():
        print(report.table())
    if cfg.audit:
        return report
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.txt").write_text(report.table() + "\n")
    model.to(device)
    amp_dtype, scaler = pick_amp(cfg.amp, device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext

    task_data = data.load_task_data(cfg.task, tokenizer, data_dir,
                                    max_length=cfg.max_length, frac=cfg.frac, seed=cfg.seed)
    steps_per_epoch = len(data.batches(task_data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=0,
                                       rank=dist.rank(), world_size=dist.world_size()))
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = build_optimizer(trainable, cfg, device)
    audit.assert_optimizer_matches(optimizer, trainable)
    frozen_fingerprint = audit.fingerprint(model)
    train_model = dist.wrap(torch.compile(model) if cfg.compile else model, device)

    results = {"task": cfg.task, "method": cfg.method, "frac": cfg.frac, "seed": cfg.seed, "model": cfg.model,
               "pooling": model.config.pooling, "status": "running",
               "params": {"total": report.total, "trainable": report.trainable,
                          "by_group": {g: {"trainable": t, "total": n} for g, t, n in report.rows}},
               "freeze_audit": "not run",
               "data": {"train_examples": len(task_data.train), "val_examples": len(task_data.val),
                        "test_examples": len(task_data.test)},
               "baseline": baseline_scores(task, task_data),
               # GLUE dev's labels in file order, beside best.test_predictions: a paired bootstrap
               # over test examples (report.py) needs both and no data files
               "test_labels": prediction_list(task_data.test.labels, task.is_regression),
               "epochs": [], "evals": [], "best": None,
               "time": {"train_seconds": 0.0, "eval_seconds": 0.0, "peak_memory_bytes": 0},
               "nonfinite_steps": 0, "environment": environment(device, amp_dtype, dist.world_size()),
               "config": asdict(cfg)}
    start_epoch, step = 0, 0
    if resume_state:
        state = resume_state  # read, verified and matched to this run by rundir.claim_out_dir
        start_epoch, step, results = state["epoch"], state["step"], json.loads(state["results"])
        saving.copy_named(dict(trainable), state["trainable"], out / "resume.pt")
        optimizer.load_state_dict(state["optimizer"])
        if scaler:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        print(f"resumed from {out / 'resume.pt'} after epoch {start_epoch}")
    elif cfg.resume:
        print(f"--resume: no {out / 'resume.pt'}, starting fresh")
    if dist.is_main():  # evals.jsonl holds exactly the evaluations in results (none after a restart)
        (out / "evals.jsonl").write_text("".join(strict_json(e) + "\n" for e in results["evals"]))

    def record_eval(epoch, train_seconds):
        timer = SyncTimer(device)
        val, _ = evaluate(model, task_data.val, cfg, task, device, autocast)
        test, test_predictions = evaluate(model, task_data.test, cfg, task, device, autocast)
        line = {"epoch": epoch, "step": step, "train_seconds": train_seconds, "val": val, "test": test}
        results["time"]["eval_seconds"] += timer.elapsed()
        results["evals"].append(line)
        if dist.is_main():
            with open(out / "evals.jsonl", "a") as f:
                f.write(strict_json(line) + "\n")
        return line, test_predictions

    def save_results(status):
        results["status"] = status
        results["time"]["peak_memory_bytes"] = max(results["time"]["peak_memory_bytes"], peak_memory_bytes(device))
        if dist.is_main():
            write_json(out / "results.json", results)

    signal.signal(signal.SIGTERM, raise_stop)
    budget_seconds = cfg.time_budget * 60 or math.inf
    quiet = quiet_bars()
    headline = task.headline
    reset_peak_memory(device)
    status = "complete"
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if results["time"]["train_seconds"] >= budget_seconds:
                status = "time_budget"
                break
            model.train()
            train_batches = data.batches(task_data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                                         rank=dist.rank(), world_size=dist.world_size())
            step_times, real_tokens, examples, nonfinite_run = [], 0, 0, 0
            skipped_before = results["nonfinite_steps"]
            epoch_seconds, epoch_steps = 0.0, 0
            bar = tqdm(train_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=quiet)
            for i, batch in enumerate(bar):
                timer = SyncTimer(device)
                b = to_device(batch, device)
                with autocast():
                    logits = train_model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                loss = loss_fn(logits, b["labels"], task.is_regression)
                loss_value = loss.item()  # sync point: the non-finite check needs the value
                if not math.isfinite(loss_value):
                    results["nonfinite_steps"] += 1
                    nonfinite_run += 1
                    optimizer.zero_grad(set_to_none=True)
                    if nonfinite_run >= MAX_NONFINITE:
                        raise FloatingPointError(f"{MAX_NONFINITE} consecutive non-finite losses at step {step}: "
                                                 f"lower --lr (now {cfg.lr:g}) or use --amp bf16/off")
                    continue
                nonfinite_run = 0
                mean_step = results["time"]["train_seconds"] / step if step else 0.0
                lr = cfg.lr * lr_factor(step, total_steps, cfg.warmup, (results["time"]["train_seconds"] + mean_step)
                                        / budget_seconds if cfg.time_budget else None)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if scaler:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], cfg.grad_clip)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                epoch_steps += 1
                seconds = timer.elapsed()
                epoch_seconds += seconds
                results["time"]["train_seconds"] += seconds
                if i >= WARMUP_STEPS_EXCLUDED:
                    step_times.append(seconds)
                real_tokens += int(batch["attention_mask"].sum())
                examples += len(batch["labels"])
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if cfg.eval_every and step % cfg.eval_every == 0:
                    record_eval(epoch + (i + 1) / len(train_batches), results["time"]["train_seconds"])
                    save_results("running")
                if results["time"]["train_seconds"] >= budget_seconds:
                    status = "time_budget"
                    break
            line, test_predictions = record_eval(epoch + 1, results["time"]["train_seconds"])
            tokens = dist.all_sum(torch.tensor(float(real_tokens))).item()
            examples = int(dist.all_sum(torch.tensor(float(examples))).item())
            results["epochs"].append({
                "epoch": epoch + 1, "steps": epoch_steps,
                "train_seconds": epoch_seconds, "examples_per_second": examples / max(epoch_seconds, 1e-9),
                "tokens_per_second": tokens / max(epoch_seconds, 1e-9),
                "step_seconds": {"median": float(np.median(step_times)) if step_times else None,
                                 "mean": float(np.mean(step_times)) if step_times else None,
                                 "p90": float(np.percentile(step_times, 90)) if step_times else None},
                "padding_fraction": data.padding_fraction(train_batches),
                "val": line["val"], "test": line["test"], "completed": status != "time_budget",
                "nonfinite_steps": results["nonfinite_steps"] - skipped_before})
            results["data"]["padding_fraction"] = results["epochs"][-1]["padding_fraction"]
            best = results["best"]
            if best is None or line["val"][headline] > best["val"][headline]:
                results["best"] = {"epoch": epoch + 1, "metric": headline, "val": line["val"], "test": line["test"],
                                   "test_predictions": prediction_list(test_predictions, task.is_regression)}
                if dist.is_main():
                    saving.save_trainable(model, trainable, method, out / "best.safetensors",
                                            {"base_model": cfg.model, "task": cfg.task, "num_labels": task.num_labels,
                                             "pooling": model.config.pooling, "epoch": epoch + 1})
                    results["checkpoint_bytes"] = (out / "best.safetensors").stat().st_size
            if dist.is_main():
                print(f"epoch {epoch + 1:3d} | train {epoch_seconds:7.1f}s | "
                      f"{results['epochs'][-1]['tokens_per_second']:8.0f} tok/s | "
                      f"{scores_vs_baseline(line, results['baseline'], headline)}"
                      + nonfinite_note(results["epochs"][-1]["nonfinite_steps"]))
                saving.write_resume(out / "resume.pt", {
                    "epoch": epoch + 1, "step": step, "results": json.dumps(results),
                    "trainable": {n: p.detach().cpu() for n, p in trainable}, "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler else {}, "rng": torch.get_rng_state()})
            save_results("running")
            if status == "time_budget":
                break
    except (KeyboardInterrupt, Stop):
        save_results("interrupted")
        print(f"interrupted: {out / 'results.json'} holds the {len(results['epochs'])} finished epochs", file=sys.stderr)
        raise SystemExit(130)
    except Exception as e:  # a diverged run or a crash: results.json says so, never "running"
        results["failure"] = rundir.failure_reason(e)
        save_results("failed")
        raise

    verdict = audit.verify_frozen(model, frozen_fingerprint)
    results["freeze_audit"] = "passed" if verdict["verdict"] == "passed" else verdict
    if verdict["verdict"] != "passed":
        results["failure"] = f"frozen tensors moved during training: {verdict['moved']}"
    save_results(status if verdict["verdict"] == "passed" else "failed")
    dist.cleanup()
    if verdict["verdict"] != "passed":
        raise RuntimeError(f"frozen tensors moved during training: {verdict['moved']}")
    if dist.is_main():
        best, baseline = results["best"], results["baseline"]
        print(f"best epoch {best['epoch']}: {scores_vs_baseline(best, baseline, headline)}; "
              f"frozen-weights audit passed; results in {out}")
        if best["test"][headline] <= baseline["test"][headline]:
            print(f"warning: test {headline} does not beat the {baseline['name']} baseline: the model learned "
                  f"nothing visible (try more --epochs, another --lr, or more data)")
    return results


if __name__ == "__main__":
    run_cli(main)
