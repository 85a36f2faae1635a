"""report.py's tables (and runs.py's summaries) checked against numbers worked out by hand on
synthetic results files."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from study import report, runs


def fake_results(task, method, frac, seed, val, test, status="complete", budget=0.0, trainable=1000):
    """A schema-complete results.json; val and test are the headline metric per epoch (0..1)."""
    metric = {"mrpc": "f1", "cola": "matthews", "stsb": "pearson"}[task]
    scores = lambda x: {"loss": 0.5, metric: x, "accuracy": x}  # noqa: E731
    best = max(range(len(val)), key=lambda i: val[i])
    epochs = [{"epoch": i + 1, "steps": 10, "train_seconds": 10.0, "examples_per_second": 32.0,
               "tokens_per_second": 1000.0 * (i + 1),
               "step_seconds": {"median": 0.1 * (i + 1), "mean": 0.1, "p90": 0.2},
               "padding_fraction": 0.1, "val": scores(v), "test": scores(t), "completed": True}
              for i, (v, t) in enumerate(zip(val, test))]
    return {"task": task, "method": method, "frac": frac, "seed": seed, "model": "minilm", "pooling": "mean",
            "status": status, "params": {"total": 100_000, "trainable": trainable}, "freeze_audit": "passed",
            "data": {"train_examples": 100, "val_examples": 10, "test_examples": 10, "padding_fraction": 0.1},
            "epochs": epochs,
            "evals": [{"epoch": i + 1, "step": 10 * (i + 1), "train_seconds": 10.0 * (i + 1), "val": e["val"],
                       "test": e["test"]} for i, e in enumerate(epochs)],
            "best": {"epoch": best + 1, "metric": metric, "val": epochs[best]["val"], "test": epochs[best]["test"]},
            "time": {"train_seconds": 10.0 * len(val), "eval_seconds": 1.0, "peak_memory_bytes": 512 * 2 ** 20},
            "nonfinite_steps": 0,
            "environment": {"torch": "2.13.0", "python": "3.11", "device": "cpu", "device_name": "Test CPU (2 cores)",
                            "dtype": "float32", "threads": 2, "world_size": 1},
            "config": {"task": task, "method": method, "frac": frac, "epochs": 20 if budget else len(val),
                       "time_budget": budget, "seed": seed, "model": "minilm", "lr": {"full": 2e-5}.get(method, 1e-3),
                       "batch_size": 32, "max_length": 128, "warmup": 0.06, "weight_decay": 0.01, "amp": "off",
                       "adapter_size": 64, "adapter_placement": "houlsby", "lora_r": 8, "lora_alpha": 16.0,
                       "lora_targets": "query,value"}}


def write(root: Path, r, name=None):
    name = name or f"{r['task']}-{r['method']}-" + (f"budget{r['config']['time_budget']:g}" if r["config"]["time_budget"]
                                                     else f"f{r['frac']:g}") + f"-s{r['seed']}"
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(r))


@pytest.fixture
def synthetic(tmp_path):
    # mrpc bitfit, frac 1: the best validation epoch is 2; test there 0.80, 0.84, 0.82 -> 82.00 ± 2.00;
    # last-epoch test 0.70, 0.72, 0.74 -> 72.00 ± 2.00; t95: 95% of 0.9 = 0.855, first reached at 20 s
    for seed, (t, last) in enumerate([(0.80, 0.70), (0.84, 0.72), (0.82, 0.74)]):
        write(tmp_path, fake_results("mrpc", "bitfit", 1.0, seed, [0.5, 0.9, 0.8], [0.6, t, last], trainable=1000))
    # mrpc full, frac 1: test @best 0.85, 0.87, 0.86 -> 86.00 ± 1.00; bitfit - full = -4.00
    for seed, t in enumerate([0.85, 0.87, 0.86]):
        write(tmp_path, fake_results("mrpc", "full", 1.0, seed, [0.7, 0.8, 0.9], [0.5, 0.6, t], trainable=100_000))
    # mrpc bitfit, frac 0.3, one seed: no std
    low = fake_results("mrpc", "bitfit", 0.3, 0, [0.6, 0.7], [0.61, 0.65])
    low["baseline"] = {"name": "majority", "prediction": 1, "val": {"f1": 0.66}, "test": {"f1": 0.66}}
    write(tmp_path, low)
    for lr, val in ((2e-4, 0.7), (2e-3, 0.9)):  # the tuning stage's runs, under tune/
        tuned = fake_results("mrpc", "lora", 1.0, 0, [val], [0.5])
        tuned["config"]["lr"] = lr
        write(tmp_path / "tune", tuned, f"mrpc-lora-f1-s0-lr{lr:g}")
    (tmp_path / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"lora": 2e-3}}}))
    # cola lora with a budget; and one interrupted run that must be ignored
    write(tmp_path, fake_results("cola", "lora", 1.0, 0, [0.2, 0.4, 0.3], [0.25, 0.45, 0.35], budget=10.0))
    write(tmp_path, fake_results("stsb", "adapter", 0.5, 0, [0.1], [0.1], status="interrupted"))
    (tmp_path / "ANALYSIS.md").write_text("BitFit trails full fine-tuning by 4 points on MRPC.\n")
    return tmp_path


def test_report_tables_match_hand_computation(synthetic):
    text = report.report(synthetic).read_text()
    # method, frac, seeds, @best, @last, baseline, runs not above it, best epoch, trainable, %, train time, t95, peak memory
    assert "| bitfit | 1 | 3 | 82.00 ± 2.00 | 72.00 ± 2.00 | – | – | 2.0 | 1,000 | 1.000 | 30.0 | 20.0 | 512 |" in text
    assert "| full | 1 | 3 | 86.00 ± 1.00 |" in text
    assert "| bitfit | 0.3 | 1 | 65.00 † | 65.00 | 66.00 | 1 of 1 | 2.0 |" in text  # the baseline scores 66: not beaten
    # cost at the largest fraction: step-time medians 100, 200, 300 ms over the epochs -> 200
    assert "| mrpc | bitfit | 1 | 3 | 1.000 | 200 | 2000 | 512 |" in text
    # method-vs-full: bitfit's paired differences -5, -3, -4: mean -4, sd 1, t(0.975, 2) = 4.303 -> ±2.48;
    # no saved predictions, so no bootstrap, and the seed interval alone leaves out zero
    assert "| mrpc | 1 | bitfit | 3 | -4.00 | [-6.48, -1.52] | – | worse |" in text
    # the tuning stage's runs make their own table and stay out of the grid: 2e-3 scores best on validation
    assert "| mrpc | lora | 0.0002: 70.00 (1); **0.002: 90.00 (1)** | 0.002 |" in text
    assert "| lora | 1 |" not in text
    # levelling: full's validation 70, 80, 90 in every seed: its best (90) is reached at epoch 3, +20 over two epochs
    assert "| mrpc | 3 | 70.00 → 80.00 → 90.00 | 3.0 | +20.00 |" in text
    # stability: bitfit's std is 2.00 at frac 1 (frac 0.3 has one seed); full's 1.00
    assert "| bitfit | 2.00 | 2.00 |" in text and "| full | 1.00 | 1.00 |" in text
    # spread against full, one cell (mrpc, 1): variances 4 and 1 -> ratio of standard deviations 2, no interval
    assert "| bitfit | mrpc | 1 | 0 / 0 / 0 | 2.00 | 2.00 – 2.00 |  |" in text
    assert "| bitfit | all | 1 | 0 / 0 / 0 | 2.00 | – | too few tasks |" in text
    # budget run: best validation 0.4 at epoch 2 -> test 45.00; 95% of 0.4 = 0.38 first at 20 s
    assert "| cola | lora | matthews | 10 | epoch cap | 1 | 3.0 | 30 | 45.00 | 35.00 | 30.0 | 20.0 | 2000 |" in text
    assert "ignored 1 runs (unfinished, failed, duplicates, not results files): stsb-adapter-f0.5-s0 (interrupted)" in text
    # compute: 8 grid runs, 23 epochs of 10 s of training, plus 1 s of evaluation each = 238 s
    assert "- compute: 0.1 hours of training and evaluation" in text and "2 finished tuning runs, 0.0 hours" in text
    assert report.compute_hours([{"time": {"train_seconds": 3000.0, "eval_seconds": 600.0}}] * 2) == 2.0
    copy = {"time": {"train_seconds": 3000.0, "eval_seconds": 600.0}, "copied_from": "tune/x"}
    assert report.compute_hours([copy]) == 0.0  # counted with the tuning runs
    assert "Test CPU (2 cores)" in text and "learning rates: full 2e-05; bitfit 0.001" in text
    assert text.endswith("## Analysis\n\nBitFit trails full fine-tuning by 4 points on MRPC.\n")
    for png in ("metric_vs_fraction.png", "metric_vs_epoch.png", "metric_vs_time.png", "cost.png"):
        assert (synthetic / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{png}]({png})" in text


def test_a_study_made_with_another_studys_rates_says_so(synthetic):
    assert "rates taken from" not in report.report(synthetic).read_text()
    (synthetic / "rates.json").write_text(json.dumps({"from": "results/a/tuned.json", "chosen": {}}))
    text = report.report(synthetic).read_text()
    line = "- rates taken from `results/a/tuned.json` (relative to this folder; sweep --rates), not tuned here\n"
    assert line + "\n## Learning rates" in text  # the header's last line, before the tuning table


def test_runs_of_another_protocol_are_named_not_compared(synthetic):
    line = "Not compared, for want of a full fine-tuning run of the same task, fraction, seed and protocol " \
           "(epochs, batch size, ... claims.PROTOCOL): mrpc 0.3 bitfit"
    assert line + ".\n" in report.report(synthetic).read_text()  # no full fine-tuning at 0.3
    for seed in (0, 1, 2):  # two epochs where full fine-tuning had three
        write(synthetic, fake_results("mrpc", "head", 1.0, seed, [0.5, 0.9], [0.6, 0.7]))
    text = report.report(synthetic).read_text()
    assert line + ", mrpc 1 head.\n" in text
    assert "| mrpc | 1 | head |" not in text and "| mrpc | 1 | bitfit | 3 | -4.00 |" in text


def test_rates_tuned_per_task_are_listed_per_task():
    cfg = lambda task, lr: {"task": task, "method": "full", "lr": lr}  # noqa: E731
    assert report.rates([cfg("mrpc", 2e-4), cfg("cola", 1e-4), cfg("mrpc", 2e-4)], "full") == "mrpc 0.0002, cola 0.0001"
    assert report.rates([cfg("cola", 1e-4), cfg("stsb", 1e-4)], "full") == "0.0001"  # one rate for every task
    assert report.rates([cfg("mrpc", 2e-4), cfg("mrpc", 1e-4)], "full") == "0.0001, 0.0002 (mixed!)"
    assert report.rates([cfg("mrpc", 2e-4), cfg("mrpc", 1e-4), cfg("cola", 1e-4)], "full") == \
        "mrpc 0.0001/0.0002 (mixed!), cola 0.0001"


def test_levelling_finds_the_epoch_within_one_point_of_the_best():
    # seed 0 reaches 85.5, within 1 point of its best 86, at epoch 2; seed 1 reaches its best 90 at epoch 4
    rs = [fake_results("stsb", "full", 1.0, 0, [0.80, 0.855, 0.86, 0.86], [0.5] * 4),
          fake_results("stsb", "full", 1.0, 1, [0.70, 0.80, 0.85, 0.90], [0.5] * 4),
          fake_results("stsb", "bitfit", 1.0, 0, [0.1] * 4, [0.1] * 4), fake_results("stsb", "full", 0.5, 0, [0.1], [0.1])]
    # mean curve 75, 82.75, 85.5, 88: +5.25 over the last two epochs; levelled by (2 + 4) / 2 = 3.0
    assert "| stsb | 2 | 75.00 → 82.75 → 85.50 → 88.00 | 3.0 | +5.25 |" in report.levelling(rs)
    assert report.levelling(rs[2:3]) == []  # no full fine-tuning on all the data: no table


def test_time_to_95_percent():
    r = fake_results("stsb", "full", 1.0, 0, [0.2, 0.5, 0.96, 1.0], [0.1, 0.2, 0.3, 0.4])
    assert runs.summarize(r)["t95"] == 30.0  # 0.96 >= 0.95 * 1.0 at the third evaluation
    r = fake_results("cola", "full", 1.0, 0, [-0.1, 0.0], [0.0, 0.0])
    assert runs.summarize(r)["t95"] is None  # a best of 0 or below has no meaningful 95%


def test_report_without_finished_runs_is_an_error(tmp_path):
    write(tmp_path, fake_results("mrpc", "full", 1.0, 0, [0.1], [0.1], status="running"))
    with pytest.raises(SystemExit, match="no finished results.json"):
        report.report(tmp_path)
    tuned = fake_results("mrpc", "lora", 1.0, 0, [0.7], [0.5])  # a finished tuning run: its table alone
    tuned["config"]["lr"] = 2e-4
    write(tmp_path / "tune", tuned, "mrpc-lora-f1-s0-lr0.0002")
    text = report.report(tmp_path).read_text()
    assert "No run of the grid has finished yet" in text and "| mrpc | lora | 0.0002: 70.00 (1) | – |" in text


def test_budget_runs_are_compared_with_full_by_the_test_bootstrap(tmp_path):
    labels = [1] * 60 + [0] * 40
    full = [1] * 40 + [0] * 60  # 40 of 60 positives found: F1 80/100 = 0.80; on a resample, about 0.80 ± 0.04
    worse = [1] * 30 + [0] * 70  # 30 of 60 found: F1 60/90 = 0.667, below full's 0.80 on every resample
    for method, predictions, test in (("full", full, 0.8), ("bitfit", labels, 1.0), ("lora", full, 0.8),
                                      ("ia3", worse, 0.667)):
        r = fake_results("mrpc", method, 1.0, 0, [0.5, 0.9], [0.5, test], budget=10.0)
        r["best"]["test_predictions"], r["test_labels"] = predictions, labels
        write(tmp_path, r)
    write(tmp_path, fake_results("mrpc", "adapter", 1.0, 0, [0.9], [0.7], budget=10.0))  # no predictions saved
    for seed, (f, b) in enumerate([(0.85, 0.80), (0.87, 0.84), (0.86, 0.82)]):  # fixed epochs: -5, -3, -4
        write(tmp_path, fake_results("mrpc", "full", 1.0, seed, [0.9], [f]))
        write(tmp_path, fake_results("mrpc", "bitfit", 1.0, seed, [0.9], [b]))
        # at frac 0.5: +5, not the budget's peer (read after frac 1, so it would win a lookup that ignored frac)
        write(tmp_path, fake_results("mrpc", "full", 0.5, seed, [0.9], [f]), f"z-full-f0.5-s{seed}")
        write(tmp_path, fake_results("mrpc", "bitfit", 0.5, seed, [0.9], [f + 0.05]), f"z-bitfit-f0.5-s{seed}")
    text = report.report(tmp_path).read_text()
    section = text.split("### Against full fine-tuning, under the budget")[1]
    # bitfit is right wherever full is: every resample scores it higher (1 - 0.80 ± 0.04, x 100)
    low, high = map(float, re.search(r"\| mrpc \| bitfit \| \+20\.00 \| \[\+(\S+), \+(\S+)\] \| better \| "
                                     r"-4\.00 \| worse \|", section).groups())
    assert 10 < low < 20 < high < 30
    assert "| mrpc | lora | +0.00 | [+0.00, +0.00] | not distinguishable | – | – |" in section
    assert "| mrpc | adapter | -10.00 | – | no predictions saved | – | – |" in section
    assert re.search(r"\| mrpc \| ia3 \| -13\.30 \| \[-\S+, -\S+\] \| worse \| – \| – \|", section)


def test_the_command_line_says_its_usage_and_names_a_missing_folder(tmp_path):
    def report_cli(*argv):
        return subprocess.run([sys.executable, "-m", "study.report", *argv], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True)
    shown = report_cli("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m study.report RESULTS_DIR")
    assert report_cli().returncode == 2 and report_cli("a", "b").stderr.startswith("usage:")
    missing = report_cli(str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stderr == f"error: {tmp_path / 'nope'}: no such study folder\n"
    assert not (tmp_path / "nope").exists()


def test_runs_not_above_baseline_are_counted_where_the_mean_beats_it(tmp_path):
    # test @best 0.80, 0.66, 0.60 against a majority class scoring 0.66: mean 68.67 beats 66.00 (no †),
    # but two of the three runs do not (0.66 ties it)
    for seed, t in enumerate([0.80, 0.66, 0.60]):
        r = fake_results("mrpc", "adapter", 0.7, seed, [0.5, 0.9], [0.5, t])
        r["baseline"] = {"name": "majority", "prediction": 1, "val": {"f1": 0.66}, "test": {"f1": 0.66}}
        write(tmp_path, r)
    text = report.report(tmp_path).read_text()
    assert "| adapter | 0.7 | 3 | 68.67 ± 10.26 | 68.67 ± 10.26 | 66.00 | 2 of 3 | 2.0 |" in text


def test_runs_it_cannot_read_are_skipped_and_named_and_the_report_is_still_written(tmp_path, capsys):
    """Issue 27: a finished run with a null metric, no evaluations, no epochs, a results.json that is a list,
    one without an environment field, or one filed under another run's name: each is named, none counted,
    and RESULTS.md is written from the others."""
    for seed in (0, 1):
        write(tmp_path, fake_results("mrpc", "bitfit", 1.0, seed, [0.5, 0.9], [0.6, 0.8]))
    null = fake_results("mrpc", "bitfit", 1.0, 2, [0.5, 0.9], [0.6, 0.8])
    null["best"]["test"]["f1"] = None
    no_evals = {**fake_results("mrpc", "bitfit", 1.0, 3, [0.5], [0.6]), "evals": []}
    no_epochs = {**fake_results("mrpc", "bitfit", 1.0, 4, [0.5], [0.6]), "epochs": []}
    true_score = fake_results("mrpc", "bitfit", 1.0, 5, [0.5], [0.6])
    true_score["evals"][0]["val"] = {**true_score["evals"][0]["val"], "f1": True}  # JSON's true
    no_device = fake_results("mrpc", "bitfit", 1.0, 6, [0.5], [0.6])
    del no_device["environment"]["device"]
    for r in (null, no_evals, no_epochs, true_score, no_device):
        write(tmp_path, r)
    write(tmp_path, fake_results("cola", "bitfit", 1.0, 0, [0.5], [0.6]), "mrpc-bitfit-f0.5-s0")  # moved by hand
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "results.json").write_text("[1, 2]")
    text = report.report(tmp_path).read_text()
    assert "| bitfit | 1 | 2 | 80.00 ± 0.00 |" in text  # the two good runs, nothing else
    expected = {"mrpc-bitfit-f1-s2": "unreadable: best.test.f1 is None, not a number",
                "mrpc-bitfit-f1-s3": "unreadable: no eval recorded",
                "mrpc-bitfit-f1-s4": "unreadable: no epoch recorded",
                "mrpc-bitfit-f1-s5": "unreadable: evals.0.val.f1 is True, not a number",
                "mrpc-bitfit-f1-s6": "unreadable: no environment.device",
                "mrpc-bitfit-f0.5-s0": "its directory is named for another run: task cola (the name says mrpc), "
                                       "frac 1 (the name says 0.5)",
                "listed": "not a results file (no task, method, frac)"}
    out = capsys.readouterr().out
    assert f"skipped {len(expected)} runs it cannot read" in out
    for name, why in expected.items():
        assert f"{name} ({why})" in text and f"{name} ({why})" in out


def test_a_malformed_tuned_json_is_named_and_the_report_still_made(synthetic):
    (synthetic / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"lora": True}}}))
    text = report.report(synthetic).read_text()
    assert f"The chosen rates are not marked: {synthetic / 'tuned.json'}: chosen.mrpc.lora = true: a rate is " \
           "a finite positive number." in text
    assert "| mrpc | lora | 0.0002: 70.00 (1); 0.002: 90.00 (1) | – |" in text
    (synthetic / "tuned.json").write_text("{")
    assert "tuned.json is not valid JSON (JSONDecodeError)" in report.report(synthetic).read_text()


def test_one_runs_directory_gets_its_curves_not_a_report(tmp_path):
    """Issue 28: `study.report RUN_DIR` draws the run's curves (study/curves.py), not a RESULTS.md of one run."""
    write(tmp_path, fake_results("mrpc", "bitfit", 1.0, 0, [0.5, 0.9], [0.6, 0.8]))
    run = tmp_path / "mrpc-bitfit-f1-s0"
    done = subprocess.run([sys.executable, "-m", "study.report", str(run)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{run} is one run's directory: drawing its curves (python -m study.curves)")
    assert f"wrote {run / 'curves.png'}" in done.stdout and not (run / "RESULTS.md").exists()
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_failed_seed_does_not_take_over_a_panel(tmp_path, monkeypatch):
    """Issue 28: the y-limits come from the bulk of the scores; a failed seed (test 0.05 among 0.84-0.87) is
    drawn at the edge and counted in the title, each seed has its own marker, and the baseline is drawn."""
    from study import plots
    for seed, t in enumerate([0.86, 0.85, 0.05]):  # seed 2 learned nothing
        r = fake_results("stsb", "lora", 0.3, seed, [0.5, 0.9], [0.6, t])
        r["baseline"] = {"name": "constant", "prediction": 2.7, "val": {"pearson": 0.0}, "test": {"pearson": 0.0}}
        write(tmp_path, r)
        write(tmp_path, fake_results("stsb", "full", 0.3, seed, [0.5, 0.9], [0.6, 0.87 - 0.01 * seed]))
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path, legend=False: figures.append(fig))
    rs, _ = runs.load(tmp_path)
    plots.plot_fractions(rs, tmp_path / "f.png")
    ax = figures[0].axes[0]
    low, high = ax.get_ylim()
    assert 84 < low < 85 and 87 < high < 88, (low, high)  # not 0 to 90
    assert ax.get_title() == "stsb (2 clipped)"  # the seed at 5 and the cell's mean, 58.67
    assert "5.0, 58.7" in [t.get_text() for t in ax.texts]
    assert "constant 0.0, below the axis" in [t.get_text() for t in ax.get_legend().get_texts()]
    from matplotlib.collections import PathCollection
    markers = {c.get_paths()[0].vertices.tobytes() for c in ax.collections if isinstance(c, PathCollection)}
    assert len(markers) == 3
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert legend[:3] == ["seed 0", "seed 1", "seed 2"] and "constant prediction (test)" in legend


def test_limits_clip_only_beyond_an_empty_gap():
    from study import plots
    bulk = [84.0, 84.5, 85.0, 85.5, 86.0, 86.5, 87.0]
    low, high = plots.limits(bulk + [5.5])
    assert 80 < low < 84 and 87 < high < 89  # the failed seed is beyond the gap
    low, high = plots.limits(bulk + [44.0, 52.0, 60.0, 68.0, 76.0, 80.0])  # a learning curve's climb: kept
    assert low < 44
    low, high = plots.limits(bulk, extra=[83.0, 88.0, 150.0])  # error bar ends near the data widen it; far ones not
    assert 82 < low < 83 and 88 < high < 90


def test_a_copy_with_other_numbers_is_a_conflict_not_the_cell(tmp_path, capsys):
    """SR3b: backup/<cell>/ (sorted first) won and the real cell was called its duplicate. A run nested deeper
    than <cell>/ is ignored with a note; beside the cell, a copy with other numbers is a conflicting copy, one
    with the same numbers a duplicate; with no run in the cell's own directory, differing ones are all left out."""
    real = fake_results("mrpc", "bitfit", 1.0, 0, [0.5, 0.9], [0.6, 0.8])
    write(tmp_path, real)
    write(tmp_path / "backup", fake_results("mrpc", "bitfit", 1.0, 0, [0.5, 0.9], [0.6, 0.5]))
    write(tmp_path, fake_results("mrpc", "bitfit", 1.0, 0, [0.5, 0.9], [0.6, 0.7]), "a-copy")
    write(tmp_path, real, "b-copy")
    for name, t in (("x", 0.6), ("y", 0.7)):  # seed 1, in two directories not named for it
        write(tmp_path, fake_results("mrpc", "bitfit", 1.0, 1, [0.5, 0.9], [0.6, t]), name)
    rs, ignored = runs.load(tmp_path)
    assert [r["dir"] for r in rs] == ["mrpc-bitfit-f1-s0"] and runs.summarize(rs[0])["best"] == 80.0
    status = {r["dir"]: r["status"] for r in ignored}
    assert status == {"backup/mrpc-bitfit-f1-s0": runs.NESTED,
                      "a-copy": "conflicting copy of mrpc-bitfit-f1-s0: its numbers differ",
                      "b-copy": "duplicate of mrpc-bitfit-f1-s0",
                      "x": "conflicting: x, y ran one configuration with different numbers, and none sits in the "
                           "directory named for it",
                      "y": status["x"]}
    text = report.report(tmp_path).read_text()
    assert "| bitfit | 1 | 1 | 80.00 |" in text and "backup/mrpc-bitfit-f1-s0 (nested deeper than" in text
    assert "skipped 4 runs it cannot read or trust" in capsys.readouterr().out


def test_results_md_that_is_a_directory_is_one_error_line(tmp_path):
    """SR8: IsADirectoryError with a traceback, after every plot was drawn."""
    write(tmp_path, fake_results("mrpc", "bitfit", 1.0, 0, [0.5, 0.9], [0.6, 0.8]))
    (tmp_path / "RESULTS.md").mkdir()
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'RESULTS.md'}: exists and is not a file"):
        report.main([str(tmp_path)])
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("argv, said", [
    (["--out", "DIR"], "unrecognized arguments: --out; python -m study.report takes one study folder, no options"),
    (["--hlep"], "unrecognized arguments: --hlep; did you mean --help?"),
])
def test_an_option_report_does_not_take_is_named(argv, said, capsys):
    """F14: `study.report --out DIR` printed only its usage."""
    with pytest.raises(SystemExit) as e:
        report.main(argv)
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(said)
