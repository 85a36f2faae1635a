"""What a GLUE task is: its files, how to read each one, and how it is scored.

One small module per task (glue/mrpc.py, glue/cola.py, glue/stsb.py) fills in a `Task`, the way
google-research/bert has one small processor per task. Every file carries the size, sha256 and
example count of GLUE's own copy (as listed in the data's SOURCES.md), so glue/download.py can
check a download byte for byte and data.py can name the exact file it reads.
"""
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "dev", "test")  # GLUE's file names; data.py explains how they are used


@dataclass(frozen=True)
class TaskFile:
    name: str  # file name inside the task directory, e.g. "train.tsv"
    header: bool  # the first line is a header row, not an example
    num_columns: int  # tab-separated fields on every line, header included
    text_a: int  # column of the first sentence
    text_b: int | None  # column of the second sentence; None for single-sentence tasks
    label: int | None  # column of the label or score; None in GLUE's unlabeled test files
    examples: int  # data rows, header not counted
    size: int  # bytes of GLUE's copy
    sha256: str  # of GLUE's copy


@dataclass(frozen=True)
class Task:
    name: str  # our name, as typed on the command line: "mrpc"
    dir_name: str  # GLUE's directory name: "MRPC"
    files: dict  # split ("train", "dev", "test") -> TaskFile
    num_labels: int  # number of classes; 1 means regression
    metrics: tuple  # (name, function of (preds, labels)) pairs from metrics.py, all reported
    headline: str  # the metric a run is judged by (GLUE's first metric for the task)
    archive: str | None  # GLUE's zip holding the files; None for MRPC, built from SentEval's files
    score_range: tuple | None = None  # (low, high) of a regression score; None for classification
    label_names: tuple = ()  # class id -> name, as Hugging Face's GLUE dataset names them; () for regression

    def __post_init__(self):
        names = [name for name, _ in self.metrics]
        if self.headline not in names:
            raise ValueError(f"task {self.name}: headline {self.headline!r} is not among its metrics {names}")
        if sorted(self.files) != sorted(SPLITS):
            raise ValueError(f"task {self.name}: files must be given for {SPLITS}, got {sorted(self.files)}")
        if (self.score_range is not None) != self.is_regression:
            raise ValueError(f"task {self.name}: score_range is required exactly when num_labels == 1")
        if len(self.label_names) != (0 if self.is_regression else self.num_labels):
            raise ValueError(f"task {self.name}: label_names must name each of the {self.num_labels} classes "
                             "(none for regression)")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def baseline_name(self) -> str:
        """What constant_prediction is called on the console and in results.json."""
        return "constant" if self.is_regression else "majority"

    def constant_prediction(self, train_labels) -> float:
        """The prediction of a model that learned nothing from the text: the most frequent class of
        the training labels (ties: the lower class id), or their mean score for a regression task.
        Scored like a model (compute_metrics), it is the floor a run has to beat: MRPC's majority
        class scores F1 0.81 on GLUE dev; a constant score has Pearson and Spearman 0 (metrics.py
        defines a correlation with a constant as 0)."""
        train_labels = np.asarray(train_labels)
        if self.is_regression:
            return float(train_labels.mean())
        return int(np.bincount(train_labels.astype(np.int64), minlength=self.num_labels).argmax())

    def compute_metrics(self, preds, labels) -> dict:
        """Every metric of the task, by name. preds: class ids (N,) or logits (N, num_labels) for
        classification, scores (N,) or (N, 1) for regression; labels: (N,)."""
        preds = np.asarray(preds)
        if not self.is_regression and preds.ndim == 2:
            preds = preds.argmax(axis=-1)
        preds = preds.reshape(-1)
        return {name: fn(preds, np.asarray(labels).reshape(-1)) for name, fn in self.metrics}
