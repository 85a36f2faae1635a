"""GLUE's metrics for MRPC (accuracy, F1), CoLA (Matthews correlation) and STS-B (Pearson, Spearman).

The definitions are GLUE's (Wang et al., 2019, sec. 3 and Table 1), which GLUE computes with
scikit-learn and scipy; these are numpy re-implementations with the same values. Degenerate
inputs, which small fine-tuning runs do produce (a model that predicts one class, a regressor
that outputs a constant), give 0.0 instead of NaN so that a results file never holds a NaN.
Every function takes predictions first and gold labels second.
"""
import numpy as np


def _pair(a, b, name: str):
    """Two equal-length, non-empty 1-D arrays, or a ValueError that says what is wrong."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"{name}: need two non-empty arrays of equal length, got {a.size} and {b.size}")
    return a, b


def accuracy(preds, labels) -> float:
    """Fraction of predictions equal to the label."""
    preds, labels = _pair(preds, labels, "accuracy")
    return float(np.mean(preds == labels))


def f1(preds, labels) -> float:
    """Binary F1 of the positive class 1: 2TP / (2TP + FP + FN); 0.0 when there is no positive at all
    (scikit-learn's f1_score with zero_division=0)."""
    preds, labels = _pair(preds, labels, "f1")
    tp = np.sum((preds == 1) & (labels == 1))
    fp = np.sum((preds == 1) & (labels != 1))
    fn = np.sum((preds != 1) & (labels == 1))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews(preds, labels) -> float:
    """Matthews correlation coefficient (Matthews, 1975), in the K-class form of Gorodkin (2004) that
    scikit-learn uses; for two classes it is (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    A constant prediction (or constant labels) makes the denominator 0 and gives 0.0."""
    preds, labels = _pair(preds, labels, "matthews")
    classes, encoded = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    true_idx, pred_idx = encoded[:labels.size], encoded[labels.size:]
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)  # rows: true, columns: predicted
    np.add.at(confusion, (true_idx, pred_idx), 1)
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)  # true and predicted count per class
    correct, n = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((n * n - p @ p) * (n * n - t @ t))
    return float((correct * n - t @ p) / denominator) if denominator else 0.0


def _real_pair(x, y, name: str):
    x, y = _pair(x, y, name)
    x, y = x.astype(np.float64), y.astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{name}: inputs contain NaN or inf")
    return x, y


def pearson(x, y) -> float:
    """Pearson's r. 0.0 when either input is constant (r is undefined there; scipy returns NaN)."""
    x, y = _real_pair(x, y, "pearson")
    if np.all(x == x[0]) or np.all(y == y[0]):  # exact test: a float mean can leave tiny nonzero residues
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    r = (xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc))
    return float(np.clip(r, -1.0, 1.0))


def average_ranks(x) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (scipy.stats.rankdata 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts_group = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(starts_group) - 1  # group id of each sorted position
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], x.size)  # exclusive
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = ((starts + ends - 1) / 2 + 1)[group]
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's r of the average ranks. 0.0 when either input is constant."""
    x, y = _real_pair(x, y, "spearman")
    return pearson(average_ranks(x), average_ranks(y))
