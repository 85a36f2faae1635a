"""What a run shows and records while it trains: its training curve and its progress.

  steps.jsonl  one line every LOG_EVERY optimizer steps and at each epoch's end: the step, the epoch
               (fractional), the mean training loss since the previous line, the learning rate, the
               mean gradient norm (before clipping) and the real (non-padding) tokens per second.
               JSON lines, like evals.jsonl: typed values, strict JSON (a non-finite loss is null),
               one reader for both files (study/curves.py draws them), and a line can gain a field
               without breaking a reader; a CSV would need a header kept in step across resumes. The
               lines written so far travel in resume.pt, so a resumed run's file equals an
               uninterrupted one's (only the timing fields, tokens_per_second and seconds, differ
               between any two runs).
  TensorBoard  with --tensorboard, the same scalars (train/loss, train/lr, train/grad_norm,
               train/tokens_per_second) by step, and each evaluation's metrics (val/..., test/...)
               in --out/tensorboard/.
  progress     on a terminal, one bar for the whole run (its ETA is the run's) and a bar per
               evaluated split; otherwise (a pipe, a log file) a plain line every 10% of an epoch
               and at least every PLAIN_SECONDS: step/total, loss, tokens/s, ETA.
"""
import sys
import time
from pathlib import Path

from tqdm import tqdm

from runinfo import strict_json

LOG_EVERY = 10  # optimizer steps between lines of steps.jsonl
PLAIN_SECONDS = 30  # the longest silence of the plain progress lines


class StepLog:
    """Accumulates the steps since the last line of steps.jsonl; `lines` holds every line so far."""

    def __init__(self, out: Path = None, lines=(), tensorboard=None):
        """out None: count, write nothing (ranks other than 0)."""
        self.path, self.lines, self.tensorboard = \
            out and out / "steps.jsonl", list(lines), tensorboard
        if self.path:
            # none after a restart
            self.path.write_text("".join(strict_json(x) + "\n" for x in self.lines))
        self.open()

    def open(self):
        self.losses, self.norms, self.tokens, self.seconds = [], [], 0, 0.0

    def add(self, loss: float, grad_norm, tokens: int, seconds: float):
        """One optimizer step; grad_norm is a tensor, read only when a line is written (a sync
        point)."""
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.tokens += tokens
        self.seconds += seconds

    def write(self, step: int, epoch: float, lr: float):
        """The line for the steps since the last one (none: nothing to write)."""
        if not self.losses:
            return
        line = {"step": step, "epoch": round(epoch, 4), "loss": sum(self.losses) / len(self.losses),
                "lr": lr,
                "grad_norm": float(sum(float(n) for n in self.norms) / len(self.norms)),
                "tokens_per_second": self.tokens / max(self.seconds, 1e-9), "seconds": self.seconds}
        self.lines.append(line)
        if self.path:
            with open(self.path, "a") as f:
                f.write(strict_json(line) + "\n")
        if self.tensorboard is not None:
            for name in ("loss", "lr", "grad_norm", "tokens_per_second"):
                self.tensorboard.add_scalar(f"train/{name}", line[name], step)
        self.open()


def open_tensorboard(out: Path, step: int):
    """A SummaryWriter in --out/tensorboard that drops events logged after `step` by an interrupted
    run (purge_step), or a clear error when the optional tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install "
                           "tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"), purge_step=step or None)


def log_eval(tensorboard, line: dict):
    if tensorboard is not None:
        for split in ("val", "test"):
            for name, value in line[split].items():
                tensorboard.add_scalar(f"{split}/{name}", value, line["step"])
        tensorboard.flush()


class Progress:
    """The run's progress: a bar on a terminal, plain lines elsewhere; silent on ranks other than
    0."""

    def __init__(self, total_steps: int, done: int, enabled: bool, terminal: bool = None):
        self.total, self.enabled = total_steps, enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total_steps, initial=done, leave=False, dynamic_ncols=True,
                        disable=not (enabled and self.terminal))
        self.start_step, self.start_time, self.last_print = \
            done, time.perf_counter(), time.perf_counter()
        self.next_fraction = 0.1

    def epoch(self, epoch: int, epochs: int, steps: int):
        self.bar.set_description(f"epoch {epoch}/{epochs}")
        self.epoch_name, self.epoch_steps, self.next_fraction = \
            f"epoch {epoch}/{epochs}", steps, 0.1

    def step(self, step: int, i: int, loss: float, tokens_per_second: float):
        """After the i-th step (0-based) of the epoch; `step` counts the run's steps."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:.0f}", refresh=False)
        if not self.enabled or self.terminal:
            return
        now, done = time.perf_counter(), (i + 1) / self.epoch_steps
        if done + 1e-9 < self.next_fraction and now - self.last_print < PLAIN_SECONDS:
            return
        while self.next_fraction <= done + 1e-9:
            self.next_fraction += 0.1
        self.last_print = now
        rate = (step - self.start_step) / max(now - self.start_time, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        print(f"  {self.epoch_name} step {step}/{self.total} | loss {loss:.4f} | "
              f"{tokens_per_second:.0f} tok/s | ETA {clock(eta)}", flush=True)

    def evaluating(self, batches, split: str):
        """The batches of an evaluation, with a bar naming the split on a terminal."""
        return tqdm(batches, desc=f"evaluate {split}", leave=False,
                    disable=not (self.enabled and self.terminal))

    def close(self):
        self.bar.close()


def clock(seconds: float) -> str:
    """'1h02m', '3m05s', '42s' ('?' before there is a rate)."""
    if seconds != seconds:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
