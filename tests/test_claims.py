"""claims.py: the intervals around each method's difference to full fine-tuning."""
import math

import numpy as np
import pytest

from study import claims
import metrics


def test_t_interval_by_hand():
    mean, low, high = claims.t_interval([1.0, 2.0, 3.0])  # sd 1, n 3, t(0.975, 2) = 4.303
    assert mean == 2.0 and math.isclose(high - mean, 4.303 / math.sqrt(3)) and math.isclose(mean - low, high - mean)
    assert claims.t_interval([5.0]) == (5.0, None, None)
    assert claims.t_interval([]) == (None, None, None)
    assert claims.T975[0] == 12.706 and claims.T975[29] == 2.042  # df 1 and df 30 of the table


@pytest.mark.parametrize("metric, reference", [("f1", metrics.f1), ("matthews", metrics.matthews),
                                               ("pearson", metrics.pearson)])
def test_row_metrics_equal_metrics_py(metric, reference):
    rng = np.random.default_rng(0)
    if metric == "pearson":
        preds, labels = rng.normal(size=(40, 30)), rng.normal(size=(40, 30))
        preds[0] = 1.5  # a constant row: r is undefined, 0 by definition
    else:
        preds, labels = rng.integers(0, 2, size=(40, 30)), rng.integers(0, 2, size=(40, 30))
        preds[0], preds[1], labels[2] = 0, 1, 0  # no positive predicted; all positive; no positive label
    rows = claims.ROW_METRICS[metric](preds, labels)
    expected = [reference(p, g) for p, g in zip(preds, labels)]
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-12)


def test_paired_bootstrap():
    labels = np.array([0, 1] * 50)
    same = claims.paired_bootstrap([(labels, labels)], labels, "f1")
    assert same == (0.0, 0.0)  # identical predictions: every resample gives a difference of exactly 0
    wrong = 1 - labels
    low, high = claims.paired_bootstrap([(labels, wrong), (labels, wrong)], labels, "matthews")
    assert low == high == 200.0  # Matthews +1 against -1, x 100, on every draw
    noisy = labels.copy()
    noisy[:10] = 1 - noisy[:10]  # 10 errors in 100
    low, high = claims.paired_bootstrap([(labels, noisy)], labels, "f1")
    assert 0 < low < 100 * (1 - metrics.f1(noisy, labels)) < high


def run(task, method, frac, seed, score, preds=None, labels=None, epochs=6):
    metric = {"mrpc": "f1", "stsb": "pearson"}[task]
    best = {"metric": metric, "test": {metric: score}, "val": {metric: score}, "epoch": 1}
    if preds is not None:
        best["test_predictions"] = list(preds)
    return {"task": task, "method": method, "frac": frac, "seed": seed, "best": best, "test_labels": labels,
            "model": "minilm", "pooling": "mean", "config": {"epochs": epochs, "time_budget": 0.0, "batch_size": 32}}


def test_cell_differences_pair_seeds_and_give_verdicts():
    labels = [0, 1] * 100
    good, bad = labels, [1 - x for x in labels[:40]] + labels[40:]  # bad: 40 errors
    runs = [run("mrpc", "full", 1.0, s, metrics.f1(bad, labels), bad, labels) for s in (0, 1, 2)]
    runs += [run("mrpc", "lora", 1.0, s, metrics.f1(good, labels) - 0.001 * s, good, labels) for s in (0, 1, 2, 3)]
    runs += [run("mrpc", "bitfit", 1.0, s, metrics.f1(bad, labels) + d) for s, d in ((0, 0.01), (1, -0.01))]
    diffs = {d["method"]: d for d in claims.cell_differences(runs)}
    assert set(diffs) == {"lora", "bitfit"}  # full is the reference, not a row
    lora = diffs["lora"]
    assert lora["seeds"] == [0, 1, 2]  # seed 3 has no full run to pair with
    assert lora["boot"][0] > 0 and lora["t_low"] > 0 and lora["verdict"] == "better"
    bitfit = diffs["bitfit"]
    assert bitfit["boot"] is None  # no saved predictions: no bootstrap, the seed interval alone
    assert math.isclose(bitfit["mean"], 0.0, abs_tol=1e-9) and bitfit["verdict"] == "not distinguishable"
    other = run("mrpc", "lora", 1.0, 1, 0.8, good[:-1], labels[:-1])  # another test set: refused, named
    other["dir"] = "mrpc-lora-f1-s1"
    with pytest.raises(ValueError, match="mrpc 1 lora: .* predictions of mrpc-lora-f1-s1 differ"):
        claims.cell_differences([r for r in runs if (r["method"], r["seed"]) != ("lora", 1)] + [other])
    assert claims.verdict(-3.0, -1.0, (-2.0, 0.5)) == "not distinguishable"  # the bootstrap spans zero
    assert claims.verdict(-3.0, -1.0, (-2.0, -0.5)) == "worse"
    assert claims.verdict(None, None, None) == "too few seeds"


def test_only_runs_of_one_protocol_are_paired():
    # a 3-epoch method beside 6-epoch full fine-tuning (the families preset once ran at 3 epochs into the
    # CPU study's folder): the difference would be one of protocols, so the cell is left out and named
    runs = [run("mrpc", "full", 1.0, s, 0.85 + 0.01 * s) for s in (0, 1, 2)]
    runs += [run("mrpc", "prompt", 1.0, s, 0.70 + 0.01 * s, epochs=3) for s in (0, 1, 2)]
    runs += [run("mrpc", "bitfit", 1.0, s, 0.84 + 0.01 * s) for s in (0, 1, 2)]
    runs += [run("mrpc", "lora", 0.5, s, 0.80) for s in (0, 1)]  # no full run at 0.5
    assert [d["method"] for d in claims.cell_differences(runs)] == ["bitfit"]
    assert claims.unpaired(runs) == [("mrpc", 0.5, "lora"), ("mrpc", 1.0, "prompt")]
    assert [r["method"] for r in claims.spread_ratios(runs)] == ["bitfit", "bitfit"]  # mrpc, all
    more = [run("mrpc", "full", 1.0, s, 0.60, epochs=3) for s in (0, 1, 2)]  # full at 3 epochs too: now it pairs
    prompt = [d for d in claims.cell_differences(runs + more) if d["method"] == "prompt"]
    assert len(prompt) == 1 and math.isclose(prompt[0]["mean"], 11.0)  # against the 3-epoch full runs
    assert claims.unpaired(runs + more) == [("mrpc", 0.5, "lora")]


def test_spread_ratios_compare_variances_over_the_same_seeds():
    def cell(task, frac, method, scores):
        return [run(task, method, frac, s, x / 100) for s, x in enumerate(scores)]
    runs = []
    for frac in (0.3, 0.5, 1.0):
        runs += cell("mrpc", frac, "full", [80, 82, 84])  # variance 4
        runs += cell("mrpc", frac, "bitfit", [80, 84, 88])  # variance 16: ln(16 / 4) in every cell
    runs += cell("mrpc", 0.3, "lora", [80, 84, 88]) + cell("mrpc", 0.5, "lora", [81, 82, 83])  # ln 4, ln 1/4
    runs += cell("mrpc", 1.0, "lora", [80, 82, 84, 99])  # seed 3 has no full run: variance 4 over seeds 0-2
    runs += cell("stsb", 1.0, "full", [50, 50, 50]) + cell("stsb", 1.0, "bitfit", [40, 50, 60])  # full constant
    runs += cell("stsb", 0.5, "full", [60, 70, 80]) + cell("stsb", 0.5, "bitfit", [65, 70, 75])  # variance 100, 25
    found = {(r["method"], r["task"]): r for r in claims.spread_ratios(runs)}
    bitfit = found[("bitfit", "mrpc")]
    assert bitfit["cells"] == 3 and math.isclose(bitfit["ratio"], 2.0)  # standard deviations 4 against 2
    assert bitfit["range"] == (2.0, 2.0) and bitfit["verdict"] is None  # a task's row: no verdict
    stsb = found[("bitfit", "stsb")]
    assert stsb["cells"] == 1 and stsb["skipped"] == {"full": 1, "method": 0, "both": 0}
    assert math.isclose(stsb["ratio"], 0.5)
    # over the tasks: the mean of ln 4 (mrpc) and ln 1/4 (stsb) is 0, their sd ln 4 * sqrt 2, t(0.975, 1) = 12.706
    everything = found[("bitfit", "all")]
    assert everything["tasks"] == 2 and everything["cells"] == 4 and math.isclose(everything["ratio"], 1.0)
    assert math.isclose(everything["high"], math.exp(12.706 * math.log(4) / 2))
    assert everything["verdict"] == "not distinguishable" and everything["skipped"]["full"] == 1
    lora = found[("lora", "mrpc")]
    assert lora["cells"] == 3 and math.isclose(lora["ratio"], 1.0)  # ln 4 - ln 4 + 0 = 0
    assert lora["range"] == (0.5, 2.0)
    assert found[("lora", "all")]["verdict"] == "too few tasks"  # one task: no interval
    assert ("full", "mrpc") not in found
    assert claims.spread_verdict(0.1, 0.5) == "more variable" and claims.spread_verdict(-0.5, -0.1) == "less variable"
    assert claims.spread_verdict(-0.5, 0.1) == "not distinguishable"
