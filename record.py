"""results.json: what one run records about itself, field by field, and the few steps that fill it
in.

train.py starts a Results (Results.start), adds each evaluation and each epoch, keeps the best
epoch, and saves it atomically after every evaluation, so an interrupted run leaves a valid file;
the study tools (study/) read it back. Fields are only ever added, never renamed: the committed
studies under results/ stay readable.
"""
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from runinfo import portable, write_json


@dataclass
class Results:
    task: str  # GLUE task
    method: str  # canonical method name (bitfit+lora)
    frac: float  # fraction of the training pool
    seed: int
    model: str  # --model as given
    pooling: str  # "cls" or "mean": the pooling in force
    status: str  # running, complete, time_budget, interrupted or failed
    params: dict  # {"total", "trainable", "by_group": {group: {"trainable", "total"}}}: audit.Audit
    data: dict  # train/val/test example counts, and the last epoch's padding_fraction
    baseline: dict  # {"name", "prediction", "val": scores, "test": scores}: the constant prediction
    test_labels: list  # GLUE dev's labels in file order: a paired bootstrap needs no data files
    environment: dict  # runinfo.environment: torch, device, dtype, threads
    config: dict  # every flag's value (config.TrainConfig.record)
    freeze_audit: object = "not run"  # "passed", or audit.verify_frozen's verdict naming what moved
    # one record per epoch: speed, steps, scores (add_epoch)
    epochs: list = field(default_factory=list)
    # one line per evaluation, also in evals.jsonl (add_eval)
    evals: list = field(default_factory=list)
    best: dict = None  # the best validation epoch: scores and test predictions (keep_if_best)
    time: dict = field(default_factory=lambda: {"train_seconds": 0.0, "eval_seconds": 0.0,
                                                "peak_memory_bytes": 0})
    nonfinite_steps: int = 0  # steps skipped for a NaN or infinite loss
    checkpoint_bytes: int = None  # size of best.safetensors, once written
    failure: str = None  # why a failed run failed (rundir.failure_reason)
    memory: dict = None  # one training step's memory bill, line by line (memory.account)

    @classmethod
    def start(cls, cfg, task, task_data, pooling: str, report, env: dict,
              memory: dict = None) -> "Results":
        """The record at the start of a run: what it is, what trains (report: audit.Audit), the
        data, the baseline to beat."""
        return cls(cfg.task, cfg.method, cfg.frac, cfg.seed, portable(cfg.model), pooling,
                   "running",
                   {"total": report.total, "trainable": report.trainable,
                    "by_group": {g: {"trainable": t, "total": n} for g, t, n in report.rows}},
                   {"train_examples": len(task_data.train), "val_examples": len(task_data.val),
                    "test_examples": len(task_data.test)},
                   baseline_scores(task, task_data),
                   prediction_list(task_data.test.labels, task.is_regression), env,
                   portable_record(cfg.record()), memory=memory)

    @classmethod
    def from_dict(cls, raw: dict) -> "Results":
        """Read back what to_dict wrote (a resume state's copy); fields added since are left at
        their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def to_dict(self) -> dict:
        """results.json's content: every field, the two that appear only once set left out until
        then."""
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in ("checkpoint_bytes", "failure", "memory")}

    def save(self, path, status: str):
        self.status = status
        write_json(path, self.to_dict())

    def add_eval(self, line: dict, seconds: float):
        self.evals.append(line)
        self.time["eval_seconds"] += seconds

    def add_epoch(self, epoch: int, stats: dict, line: dict, completed: bool):
        """An epoch's record from train.train_epoch's stats (tokens and examples summed over ranks)
        and its evaluation line; `completed` is False for an epoch a time budget cut short."""
        seconds, times = stats["seconds"], stats["step_times"]
        self.epochs.append({
            "epoch": epoch, "steps": stats["steps"],
            "train_loss": stats["loss"] / max(stats["steps"], 1),
            "train_seconds": seconds, "examples_per_second": stats["examples"] / max(seconds, 1e-9),
            "tokens_per_second": stats["tokens"] / max(seconds, 1e-9),
            "step_seconds": {"median": float(np.median(times)) if times else None,
                             "mean": float(np.mean(times)) if times else None,
                             "p90": float(np.percentile(times, 90)) if times else None},
            "padding_fraction": stats["padding_fraction"], "val": line["val"], "test": line["test"],
            "completed": completed, "nonfinite_steps": stats["nonfinite"]})
        self.data["padding_fraction"] = stats["padding_fraction"]

    def keep_if_best(self, epoch: int, line: dict, headline: str, test_predictions,
                     regression: bool) -> bool:
        """Make this epoch `best` if its validation score beats every earlier one; -> whether it
        did."""
        if self.best is not None and line["val"][headline] <= self.best["val"][headline]:
            return False
        self.best = {"epoch": epoch, "metric": headline, "val": line["val"], "test": line["test"],
                     "test_predictions": prediction_list(test_predictions, regression)}
        return True

    def vs_baseline(self, line: dict, metric: str) -> str:
        """'val f1 0.8400 (majority 0.8122) | test f1 0.8307 (majority 0.8122)': a score always
        beside the floor it must beat."""
        b = self.baseline
        return " | ".join(f"{split} {metric} {line[split][metric]:.4f} "
                          f"({b['name']} {b[split][metric]:.4f})"
                          for split in ("val", "test"))


def portable_record(record: dict) -> dict:
    """The config record with its paths relative to the repository (runinfo.portable)."""
    return {k: portable(v) if k in PATHS else v for k, v in record.items()}


PATHS = ("model", "data_dir", "out")  # the config entries that can be a path of this machine


def baseline_scores(task, task_data) -> dict:
    """The scores of task.constant_prediction (the training labels' majority class, or their mean
    score) on val and test: what a run that learned nothing from the text gets."""
    constant = task.constant_prediction(task_data.train.labels)
    return {"name": task.baseline_name, "prediction": constant,
            **{name: task.compute_metrics(np.full(len(split), constant), split.labels)
               for name, split in (("val", task_data.val), ("test", task_data.test))}}


def prediction_list(preds: np.ndarray, regression: bool) -> list:
    """JSON-ready predictions: class ids as ints, scores rounded to 5 decimals (far below a score's
    noise)."""
    return [round(float(x), 5) for x in preds] if regression else [int(x) for x in preds]
