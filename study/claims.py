"""Each method against full fine-tuning, with the noise around every difference (numpy only).

A difference between two methods in one cell (task x data fraction) has two sources of noise, and
each gets its interval:
  - seeds: d_s = score(method, seed s) - score(full, seed s). Runs of one seed share the training
    subset and the data order, so the seeds pair naturally. The interval is the 95% Student t
    interval of the mean of d_s (n - 1 degrees of freedom): mean ± t(0.975, n-1) * sd / sqrt(n).
  - test examples: GLUE dev has 408 (MRPC) to 1,500 (STS-B) examples; a different sample of the
    same size would move every score. The paired bootstrap (Efron & Tibshirani 1993, ch. 16;
    Koehn 2004 for its use on evaluation sets) draws the test examples with replacement B times,
    scores both methods' best-epoch predictions on the same draw, averages the difference over
    the seeds, and takes the 2.5th and 97.5th percentiles.
A difference is called distinguishable only when both intervals leave out zero; otherwise the
table says "not distinguishable". Scores are x 100, like every table of the report.

Spread over seeds ("adapters are unstable") is tested on the same pairs: in each cell the log of the
ratio of the two methods' sample variances over the same seeds, averaged within each task, with the
95% t interval over tasks, shown as a ratio of standard deviations (spread_ratios).
"""
import math
from collections import defaultdict

import numpy as np

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # one fixed stream of draws: the report is the same every time it is made

# Two-sided 95% quantiles t(0.975, df) of Student's t distribution, df = 1..30 (any statistics
# table; e.g. scipy.stats.t.ppf(0.975, df)); above 30 the normal 1.96 is within 4%.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t_interval(diffs) -> tuple:
    """(mean, low, high) of the 95% t interval of the mean; low = high = None for fewer than 2 values."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return None, None, None
    mean = float(d.mean())
    if d.size < 2:
        return mean, None, None
    t = T975[d.size - 2] if d.size - 1 <= len(T975) else 1.96
    half = t * float(d.std(ddof=1)) / math.sqrt(d.size)
    return mean, mean - half, mean + half


# The headline metrics on many resamples at once: rows of `preds` and `labels` (R, N) are samples.
def f1_rows(preds, labels) -> np.ndarray:
    """metrics.f1 of each row (the positive class is 1; 0 where a row has no positive at all)."""
    tp = np.sum((preds == 1) & (labels == 1), axis=1)
    wrong = np.sum(preds != labels, axis=1)  # FP + FN
    denominator = 2 * tp + wrong
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def matthews_rows(preds, labels) -> np.ndarray:
    """metrics.matthews of each row, for two classes {0, 1} (0 where the denominator is 0)."""
    tp = np.sum((preds == 1) & (labels == 1), axis=1).astype(np.float64)
    tn = np.sum((preds == 0) & (labels == 0), axis=1).astype(np.float64)
    fp = np.sum((preds == 1) & (labels == 0), axis=1).astype(np.float64)
    fn = np.sum((preds == 0) & (labels == 1), axis=1).astype(np.float64)
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), 0.0)


def pearson_rows(x, y) -> np.ndarray:
    """metrics.pearson of each row (0 where a row is constant)."""
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt(np.sum(xc * xc, axis=1) * np.sum(yc * yc, axis=1))
    r = np.sum(xc * yc, axis=1) / np.where(denominator > 0, denominator, 1)
    return np.clip(np.where(denominator > 0, r, 0.0), -1.0, 1.0)


ROW_METRICS = {"f1": f1_rows, "matthews": matthews_rows, "pearson": pearson_rows}


def paired_bootstrap(pairs, labels, metric: str, samples=BOOTSTRAP_SAMPLES, seed=BOOTSTRAP_SEED) -> tuple:
    """(low, high) of the 95% percentile interval of score(a) - score(b), x 100, averaged over the
    seeds. pairs: [(predictions of a, predictions of b)] one per seed, on the same test examples in
    the same order as `labels`; every seed is scored on the same resampled examples."""
    labels = np.asarray(labels)
    draws = np.random.default_rng(seed).integers(0, labels.size, size=(samples, labels.size))  # (R, N)
    score = ROW_METRICS[metric]
    gold = labels[draws]
    diffs = np.mean([score(np.asarray(a)[draws], gold) - score(np.asarray(b)[draws], gold) for a, b in pairs], axis=0)
    low, high = np.percentile(100 * diffs, [2.5, 97.5])
    return float(low), float(high)


# What every run of one comparison shares besides task and fraction: the config fields that change a
# score and are not the method's own (its rate, adapter size, ...). Runs that differ in one are not
# paired: a 3-epoch method against 6-epoch full fine-tuning would compare protocols, not methods.
PROTOCOL = ("epochs", "time_budget", "batch_size", "max_length", "warmup", "weight_decay", "grad_clip", "amp")


def protocol(r) -> tuple:
    """The run's protocol, with the model and the pooling it resolved to (results "model", "pooling")."""
    return (r.get("model"), r.get("pooling")) + tuple(r["config"].get(k) for k in PROTOCOL)


def cells_by_seed(runs: list) -> dict:
    """(task, frac, method, protocol) -> seed -> run: the cells whose runs can be paired."""
    cells = defaultdict(dict)
    for r in runs:
        cells[(r["task"], r["frac"], r["method"], protocol(r))][r["seed"]] = r
    return cells


def unpaired(runs: list) -> list:
    """[(task, frac, method)] of the cells no comparison holds: no full fine-tuning run of the same
    task, fraction and protocol, or none with a seed in common."""
    cells = cells_by_seed(runs)
    return sorted({(task, frac, method) for (task, frac, method, proto), by_seed in cells.items()
                   if method != "full" and not set(by_seed) & set(cells.get((task, frac, "full", proto), {}))})


def cell_differences(fixed: list) -> list:
    """One dict per (task, frac, method other than full) with paired seeds: the seed differences,
    their t interval, the bootstrap interval (when every paired run saved its test predictions) and
    the verdict. Only runs of one protocol are paired (unpaired() lists the cells left out)."""
    cells = cells_by_seed(fixed)
    out = []
    for (task, frac, method, proto), by_seed in cells.items():
        full = cells.get((task, frac, "full", proto))
        if method == "full" or not full:
            continue
        seeds = sorted(set(by_seed) & set(full))
        if not seeds:
            continue
        metric = full[seeds[0]]["best"]["metric"]
        diffs = [100 * (by_seed[s]["best"]["test"][metric] - full[s]["best"]["test"][metric]) for s in seeds]
        mean, low, high = t_interval(diffs)
        runs = [(by_seed[s], full[s]) for s in seeds]
        boot = None
        if all("test_predictions" in r["best"] for pair in runs for r in pair):
            check_one_test_set(runs, f"{task} {frac:g} {method}")
            boot = paired_bootstrap([(a["best"]["test_predictions"], b["best"]["test_predictions"]) for a, b in runs],
                                    runs[0][1]["test_labels"], metric)
        out.append({"task": task, "frac": frac, "method": method, "metric": metric, "seeds": seeds, "diffs": diffs,
                    "mean": mean, "t_low": low, "t_high": high, "boot": boot, "verdict": verdict(low, high, boot)})
    return out


def check_one_test_set(pairs, cell: str):
    """The bootstrap scores every run against one list of gold labels: refuse runs whose test labels
    or number of predictions differ from it (results of another version of the data, say)."""
    labels = pairs[0][1]["test_labels"]
    odd = [r.get("dir", f"{r['method']} seed {r['seed']}") for pair in pairs for r in pair
           if r["test_labels"] != labels or len(r["best"]["test_predictions"]) != len(labels)]
    if odd:
        raise ValueError(f"{cell}: the paired runs were not tested on one test set: the labels or the number of "
                         f"predictions of {', '.join(odd)} differ from those of {pairs[0][1].get('dir', 'full')}")


def verdict(t_low, t_high, boot) -> str:
    """'better' or 'worse' than full fine-tuning when both intervals leave out zero, else 'not distinguishable'."""
    intervals = [(t_low, t_high)] + ([boot] if boot else [])
    if t_low is None:
        return "too few seeds"
    if all(low > 0 for low, _ in intervals):
        return "better"
    if all(high < 0 for _, high in intervals):
        return "worse"
    return "not distinguishable"


def bootstrap_verdict(boot) -> str:
    """A one-seed comparison (the time-budget runs): the verdict of the test-example bootstrap alone,
    which knows nothing of how much another seed would move either run."""
    if boot is None:
        return "no predictions saved"
    return "better" if boot[0] > 0 else "worse" if boot[1] < 0 else "not distinguishable"


def interval(low, high) -> str:
    return "–" if low is None else f"[{low:+.2f}, {high:+.2f}]"


def spread_ratios(fixed: list) -> list:
    """Each method's spread over seeds against full fine-tuning's: one dict per method and task, and
    one per method over all tasks ("all"), the only one with an interval and a verdict.

    In each cell (task x fraction) with >= 2 seeds run by both: l = ln(var_method / var_full), the
    sample variances of the test scores over those seeds. Both variances have the same degrees of
    freedom, so for scores of one shape (roughly normal) the bias of the log cancels and equal spreads
    give l = 0 on average; a method that sometimes collapses to the majority class breaks that shape.
    A task's cells are not independent samples: they share the seeds, and one seed's subsets are
    nested (30% inside 50% ...), so one bad seed moves every cell of a task. A task's l is the mean
    over its cells (shown as a ratio of standard deviations exp(l / 2), with the range over cells);
    the verdict takes the tasks as the units: the 95% t interval of the mean of the tasks' l. A cell
    where a method scored the same with every seed has no ratio; it is counted by which side was
    constant (full alone constant is a sign the method spreads more)."""
    cells = {key: {seed: 100 * r["best"]["test"][r["best"]["metric"]] for seed, r in by_seed.items()}
             for key, by_seed in cells_by_seed(fixed).items()}  # (task, frac, method, protocol) -> seed -> score
    logs = defaultdict(list)  # (method, task) -> l of each cell
    skipped = defaultdict(lambda: {"full": 0, "method": 0, "both": 0})  # (method, task) -> constant side
    for (task, frac, method, proto), by_seed in cells.items():
        full = cells.get((task, frac, "full", proto))
        seeds = sorted(set(by_seed) & set(full or {}))
        if method == "full" or len(seeds) < 2:
            continue
        var_m = float(np.var([by_seed[s] for s in seeds], ddof=1))
        var_f = float(np.var([full[s] for s in seeds], ddof=1))
        if var_m > 0 and var_f > 0:
            logs[(method, task)].append(math.log(var_m / var_f))
        else:
            skipped[(method, task)]["both" if var_m == var_f == 0 else "full" if var_f == 0 else "method"] += 1
    out = []
    for method in sorted({m for m, _ in set(logs) | set(skipped)}):
        tasks = sorted(t for m, t in set(logs) | set(skipped) if m == method)
        task_means = []
        for task in tasks:
            ls = logs[(method, task)]
            mean = float(np.mean(ls)) if ls else None
            task_means += [mean] if ls else []
            out.append({"method": method, "task": task, "cells": len(ls), "skipped": skipped[(method, task)],
                        "ratio": std_ratio(mean), "range": (std_ratio(min(ls)), std_ratio(max(ls))) if ls else None,
                        "low": None, "high": None, "verdict": None})
        mean, low, high = t_interval(task_means)
        total = {side: sum(skipped[(method, t)][side] for t in tasks) for side in ("full", "method", "both")}
        out.append({"method": method, "task": "all", "cells": sum(len(logs[(method, t)]) for t in tasks),
                    "tasks": len(task_means), "skipped": total, "ratio": std_ratio(mean), "range": None,
                    "low": std_ratio(low), "high": std_ratio(high), "verdict": spread_verdict(low, high)})
    return out


def std_ratio(log_variance_ratio):
    """exp(l / 2): a mean log variance ratio as a ratio of standard deviations (None stays None)."""
    return None if log_variance_ratio is None else math.exp(log_variance_ratio / 2)


def spread_verdict(low, high) -> str:
    """On the log variance ratio's interval: 'more variable' or 'less variable' than full
    fine-tuning only when it leaves out 0 (a ratio of 1)."""
    if low is None:
        return "too few tasks"
    return "more variable" if low > 0 else "less variable" if high < 0 else "not distinguishable"
