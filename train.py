"""Fine-tune BERT on one GLUE task with one method: `python train.py --method adapter --frac 0.5`.

The loop is written out so that every efficiency figure is transparent:
  - AdamW over the audited trainable list only (fused kernel on CUDA and CPU), linear warm-up then
    decay, gradient clipping; frozen tensors get no gradient and no optimizer state.
  - One precision path: autocast (bf16, or fp16 with a GradScaler) or nullcontext; the
    trainable master weights stay fp32.
  - SyncTimer synchronizes the device before it reads the clock. Training time excludes
    evaluation; --time-budget counts training time only. The other sync points: `loss.item()`
    every step (the non-finite check), the gradient norm every 10 steps (steps.jsonl).
  - After training, every frozen tensor is compared bit for bit with its fingerprint taken
    before training; the verdict goes into results.json and a violation is an error.
Outputs in --out: audit.txt, evals.jsonl (one line per evaluation), steps.jsonl (the training
curve, progress.py), results.json (record.py; rewritten atomically after every evaluation, so an
interrupted run leaves valid results), best.safetensors (the best epoch's trainable tensors) and
resume.pt (resume.py: the state at the last finished epoch).
"""
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

import adapters
import audit
import data
import distributed as dist
import dropout
import glue
import memory
import progress
import rundir
import saving
from checkpoint import load_pretrained
from evaluation import evaluate, loss_fn, to_device
from optim import budget_progress, build_optimizer, lr_factor
from config import TrainConfig, check_positions, parse_args, run_cli
from precision import autocast, grad_scaler, keep_frozen_in_compute_dtype, pick_amp, pick_device
from record import Results
from resume import load_resume, save_resume
from runinfo import SyncTimer, environment, peak_memory_bytes, reset_peak_memory, strict_json

WARMUP_STEPS_EXCLUDED = 3  # steps left out of step-time statistics (allocator, kernels warm up)
MAX_NONFINITE = 20  # consecutive non-finite losses before the run aborts


def main(argv=None):
    cfg = parse_args(argv)
    # a line at a time through a pipe (| tee log), not in blocks
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    dist.init()
    task, device = glue.get_task(cfg.task), pick_device(cfg.device)  # the Task, looked up once
    cfg.dropout_masks = dropout.resolve(cfg.dropout_masks, device,
                                        rundir.read_results(Path(cfg.out))
                                        if cfg.resume and not cfg.audit else None)
    try:
        resume_state, files = check_before_loading(cfg, task)
    except rundir.Finished as done:  # --resume of a finished run: say so, touch nothing
        print(done)
        return rundir.read_results(Path(cfg.out))
    try:
        return train(cfg, task, device, resume_state, files)
    finally:  # the lock rundir.claim_out_dir took, on every exit
        if not cfg.audit and dist.is_main():
            rundir.release(Path(cfg.out))


def train(cfg: TrainConfig, task: glue.Task, device, resume_state, files):
    """Load, apply the method, audit, then train epoch by epoch: evaluate, keep the best, save the
    resume state and results.json after each. -> results.json's content (the audit under
    --audit)."""
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_pretrained(cfg.model, num_labels=task.num_labels,
                                       pooling=cfg.pooling or None, verbose=dist.is_main())
    check_positions(cfg, model.config.max_position_embeddings)
    trainable = adapters.apply_method(model, cfg.options)
    report = audit.audit(model, trainable, cfg.method, cfg.options.train_pooler)
    if dist.is_main():
        print(report.table())
    if cfg.audit:
        return report
    out = Path(cfg.out)
    (out / "audit.txt").write_text(report.table() + "\n")
    model.to(device)
    amp_dtype = pick_amp(cfg.amp, device)
    # after apply_method: LoRA's dropouts too
    dropout.set_masks(model, cfg.dropout_masks, seed=cfg.seed)
    # bf16 only; before the fingerprint, which covers the dtype
    keep_frozen_in_compute_dtype(model, amp_dtype)
    task_data = data.load_task_data(files, tokenizer, max_length=cfg.max_length, frac=cfg.frac,
                                    seed=cfg.seed)
    optimizer = build_optimizer(trainable, cfg, device)
    audit.assert_optimizer_matches(optimizer, trainable)
    frozen_fingerprint = audit.fingerprint(model)
    train_model = dist.wrap(torch.compile(model) if cfg.compile else model, device)
    results = Results.start(cfg, task, task_data, model.config.pooling, report,
                            environment(device, amp_dtype, dist.world_size()),
                            measure_memory(cfg, model, trainable, amp_dtype))
    total_steps = cfg.epochs * len(train_batches(cfg, task_data, epoch=0))
    run = Run(cfg, task, task_data, model, train_model, trainable, optimizer,
              grad_scaler(device, amp_dtype), device, amp_dtype, out, results, total_steps)
    start_epoch = load_resume(run, resume_state) if cfg.resume else 0
    open_logs(run, (resume_state or {}).get("steps", []) if start_epoch else [])
    # unwinds like Ctrl-C: finished epochs are kept
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    reset_peak_memory(device)
    status = "complete"
    try:
        # from the first step on, a results.json says how the run stands
        save_results(run, "running")
        for epoch in range(start_epoch, cfg.epochs):
            if run.over_budget():
                status = "time_budget"
                break
            stats = train_epoch(run, epoch)
            status = "time_budget" if run.over_budget() else status
            line, test_predictions = record_eval(run, epoch + 1)
            record_epoch(run, epoch + 1, stats, line, completed=status != "time_budget")
            save_best(run, epoch + 1, line, test_predictions)
            if dist.is_main():
                print(epoch_line(run, epoch + 1, line))
                save_resume(run, epoch + 1)
            save_results(run, "running")
            if status == "time_budget":
                break
    except KeyboardInterrupt:
        close_logs(run)
        save_results(run, "interrupted")
        print(f"interrupted: {out / 'results.json'} keeps {len(run.results.epochs)} epochs",
              file=sys.stderr)
        raise SystemExit(130)
    # a diverged run, a crash, a full disk: results.json says so, never "running"
    except Exception as e:
        close_logs(run)
        raise fail(run, e)
    close_logs(run)
    return finish(run, status, frozen_fingerprint)


def measure_memory(cfg: TrainConfig, model, trainable, amp_dtype) -> dict:
    """One training step's memory bill (memory.account: weights, gradients, AdamW state, saved
    activations) at --batch-size x --max-length, measured without disturbing any random stream."""
    state = dropout.get_state(model)
    bill = memory.account(model, trainable, cfg.batch_size, cfg.max_length, cfg.method,
                          amp_dtype=amp_dtype)
    dropout.set_state(model, state)
    return bill.record()


def check_before_loading(cfg: TrainConfig, task: glue.Task) -> tuple:
    """What needs no model, before it loads: --out is this run's (rundir.claim_out_dir; with
    --resume, the verified resume state) and the data files are there and parse. -> (resume state or
    None, data.TaskFiles); (None, None) under --audit, which writes and reads nothing."""
    if cfg.audit:
        return None, None
    return rundir.claim_out_dir(cfg, dist.is_main()), \
        data.read_task_files(task, cfg.data_dir or None)


@dataclass
class Run:
    """What one training run holds: main() builds it, the named steps below read and update it."""
    cfg: TrainConfig
    task: glue.Task
    task_data: data.TaskData
    model: nn.Module  # evaluation, checkpoints and the frozen-weights proof use the model itself
    train_model: nn.Module  # what a training step calls: the model, compiled and/or DDP-wrapped
    # [(name, parameter)] from adapters.apply_method: exactly what the optimizer holds
    trainable: list
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only (precision.grad_scaler): one code path
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None = fp32
    out: Path  # the run directory
    results: Results  # results.json as it stands
    total_steps: int  # planned optimizer steps: the length of the learning-rate schedule
    step: int = 0  # optimizer steps taken
    steps: progress.StepLog = None  # the training curve, steps.jsonl (open_logs)
    display: progress.Progress = None  # the bar or plain progress lines
    tensorboard: object = None  # a SummaryWriter under --tensorboard

    @property
    def train_seconds(self) -> float:
        return self.results.time["train_seconds"]

    def over_budget(self) -> bool:
        return self.cfg.time_budget > 0 and self.train_seconds >= self.cfg.time_budget * 60


def open_logs(run: Run, steps: list):
    """evals.jsonl and steps.jsonl as the results and the resume state hold them (none after a
    restart), TensorBoard when asked, and the progress display from the step the run is at."""
    if dist.is_main():
        (run.out / "evals.jsonl").write_text("".join(strict_json(e) + "\n"
                                                     for e in run.results.evals))
        run.tensorboard = progress.open_tensorboard(run.out, run.step) \
            if run.cfg.tensorboard else None
    run.steps = progress.StepLog(run.out if dist.is_main() else None, steps, run.tensorboard)
    run.display = progress.Progress(run.total_steps, run.step, dist.is_main())


def close_logs(run: Run):
    run.display.close()
    if run.tensorboard is not None:
        run.tensorboard.close()


def train_batches(cfg: TrainConfig, task_data, epoch: int) -> list:
    """This rank's training batches of one epoch (data.batches: shuffled by seed and epoch,
    length-bucketed)."""
    return data.batches(task_data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                        rank=dist.rank(), world_size=dist.world_size())


def train_epoch(run: Run, epoch: int) -> dict:
    """Train one epoch, or until the time budget is spent; returns what the epoch's record needs."""
    batches = train_batches(run.cfg, run.task_data, epoch)
    stats = {"steps": 0, "seconds": 0.0, "step_times": [], "tokens": 0, "examples": 0,
             "nonfinite": 0, "loss": 0.0}
    nonfinite_run = 0
    run.model.train()
    run.display.epoch(epoch + 1, run.cfg.epochs, len(batches))
    for i, batch in enumerate(batches):
        timer = SyncTimer(run.device)
        loss, lr, grad_norm = train_step(run, batch)
        if loss is None:  # non-finite: no step was taken
            nonfinite_run += 1
            stats["nonfinite"] += 1
            if nonfinite_run >= MAX_NONFINITE:
                raise FloatingPointError(f"{MAX_NONFINITE} consecutive non-finite losses at step "
                                         f"{run.step}: lower --lr (now {run.cfg.lr:g}) or use "
                                         f"--amp bf16/off")
            continue
        nonfinite_run = 0
        seconds = timer.elapsed()
        run.results.time["train_seconds"] += seconds
        stats["steps"] += 1
        stats["seconds"] += seconds
        if i >= WARMUP_STEPS_EXCLUDED:
            stats["step_times"].append(seconds)
        tokens = int(batch["attention_mask"].sum())
        stats["tokens"] += tokens
        stats["examples"] += len(batch["labels"])
        stats["loss"] += loss
        run.steps.add(loss, grad_norm, tokens, seconds)
        if run.step % progress.LOG_EVERY == 0:
            run.steps.write(run.step, epoch + (i + 1) / len(batches), lr)
        run.display.step(run.step, i, loss, tokens / max(seconds, 1e-9))
        if run.cfg.eval_every and run.step % run.cfg.eval_every == 0:
            record_eval(run, epoch + (i + 1) / len(batches))
            save_results(run, "running")
        if run.over_budget():
            break
    run.steps.write(run.step, epoch + (i + 1) / len(batches), lr)  # the epoch's last steps
    stats["padding_fraction"] = data.padding_fraction(batches)
    return stats


def train_step(run: Run, batch: dict) -> tuple:
    """Forward under autocast, the loss in fp32, backward through the scaler, clip, step: returns
    (loss, learning rate, gradient norm before clipping as a tensor), or (None, None, None) for a
    non-finite loss, which takes no step."""
    b = to_device(batch, run.device)
    with autocast(run.device, run.amp_dtype):
        logits = run.train_model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    loss = loss_fn(logits, b["labels"], run.task.is_regression)
    loss_value = loss.item()  # sync point: the non-finite check needs the value
    if not math.isfinite(loss_value):
        run.results.nonfinite_steps += 1
        run.optimizer.zero_grad(set_to_none=True)
        return None, None, None
    lr = run.cfg.lr * lr_factor(run.step, run.total_steps, run.cfg.warmup,
                                budget_progress(run.train_seconds, run.step, run.cfg.time_budget))
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in run.trainable], run.cfg.grad_clip)
    run.scaler.step(run.optimizer)  # under fp16, skipped when a gradient overflowed
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return loss_value, lr, grad_norm.detach()


def record_eval(run: Run, epoch: float) -> tuple:
    """Evaluate on val and test; add the line to the results and to evals.jsonl. Returns (line,
    test predictions)."""
    timer = SyncTimer(run.device)
    val, _ = evaluate(run.model, run.task, run.task_data.val, run.cfg.eval_batch_size, run.device,
                      run.amp_dtype, lambda batches: run.display.evaluating(batches, "val"))
    test, test_predictions = evaluate(run.model, run.task, run.task_data.test,
                                      run.cfg.eval_batch_size, run.device, run.amp_dtype,
                                      lambda batches: run.display.evaluating(batches, "test"))
    seconds = timer.elapsed()
    line = {"epoch": epoch, "step": run.step, "train_seconds": run.train_seconds, "val": val,
            "test": test, "eval_seconds": seconds}
    run.results.add_eval(line, seconds)
    if dist.is_main():
        with open(run.out / "evals.jsonl", "a") as f:
            f.write(strict_json(line) + "\n")
        progress.log_eval(run.tensorboard, line)
    return line, test_predictions


def record_epoch(run: Run, epoch: int, stats: dict, line: dict, completed: bool):
    """Add the epoch's record (speed over all ranks, loss, step times, padding, scores) to the
    results."""
    tokens = dist.all_sum(torch.tensor(float(stats["tokens"]))).item()
    examples = int(dist.all_sum(torch.tensor(float(stats["examples"]))).item())
    run.results.add_epoch(epoch, {**stats, "tokens": tokens, "examples": examples}, line, completed)


def save_best(run: Run, epoch: int, line: dict, test_predictions):
    """If this epoch has the best validation score so far: its scores and test predictions become
    the results' best, and its trainable tensors best.safetensors."""
    if not run.results.keep_if_best(epoch, line, run.task.headline, test_predictions,
                                    run.task.is_regression):
        return
    if dist.is_main():
        saving.save_trainable(
            run.model, run.trainable, run.cfg.options, run.out / "best.safetensors",
            {"base_model": run.cfg.model, "task": run.cfg.task, "num_labels": run.task.num_labels,
             "pooling": run.model.config.pooling, "epoch": epoch})
        run.results.checkpoint_bytes = (run.out / "best.safetensors").stat().st_size


def epoch_line(run: Run, epoch: int, line: dict) -> str:
    """The one log line per epoch: time, speed, and the scores beside the baseline's."""
    record = run.results.epochs[-1]
    return (f"epoch {epoch:3d} | loss {record['train_loss']:.4f} | "
            f"train {record['train_seconds']:7.1f}s | eval {line['eval_seconds']:5.1f}s | "
            f"{record['tokens_per_second']:7.0f} tok/s | "
            f"{run.results.vs_baseline(line, run.task.headline)}"
            + (f" | {record['nonfinite_steps']} non-finite steps skipped (loss NaN or inf: "
               "no update)" if record["nonfinite_steps"] else ""))


def fail(run: Run, error: BaseException) -> BaseException:
    """results.json says "failed" and why (rundir.failure_reason), so a stopped run never stays
    "running" (on a full disk too: rundir.save_even_when_full); returns the error for main to raise,
    a full disk's as one line naming the disk, the directory and what to do (rundir.disk_full)."""
    run.results.failure = rundir.failure_reason(error)
    save_results(run, "failed")
    return rundir.disk_full(run.out, error) if rundir.is_disk_full(error) else error


def save_results(run: Run, status: str):
    timing = run.results.time
    timing["peak_memory_bytes"] = max(timing["peak_memory_bytes"], peak_memory_bytes(run.device))
    run.results.status = status
    if dist.is_main():
        rundir.save_even_when_full(lambda: run.results.save(run.out / "results.json", status),
                                   run.out)


def finish(run: Run, status: str, frozen_fingerprint: dict) -> dict:
    """The frozen-weights proof, the final results.json, the summary line; a moved tensor is an
    error."""
    verdict = audit.verify_frozen(run.model, frozen_fingerprint)
    run.results.freeze_audit = "passed" if verdict["verdict"] == "passed" else verdict
    if verdict["verdict"] != "passed":
        run.results.failure = f"frozen tensors moved during training: {verdict['moved']}"
    save_results(run, status if verdict["verdict"] == "passed" else "failed")
    dist.cleanup()
    if verdict["verdict"] != "passed":
        raise RuntimeError(f"frozen tensors moved during training: {verdict['moved']}")
    if dist.is_main():
        best, baseline, headline = run.results.best, run.results.baseline, run.task.headline
        print(f"best epoch {best['epoch']}: {run.results.vs_baseline(best, headline)}; "
              f"frozen-weights audit passed; results in {run.out}")
        if best["test"][headline] <= baseline["test"][headline]:
            print(f"warning: test {headline} does not beat the {baseline['name']} baseline: the "
                  f"model learned nothing visible (try more --epochs, another --lr, or more data)")
    return run.results.to_dict()


if __name__ == "__main__":
    run_cli(main)
