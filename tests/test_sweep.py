"""sweep.py's grid, shards, skip/resume/failure bookkeeping and Ctrl-C; report.py's tables checked
against numbers worked out by hand on synthetic results files; and the whole pipeline end to end
(sweep --grid smoke, a second sweep that runs nothing, report) on the real data and MiniLM."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from study import report
from study import presets, runs, sweep

ROOT = Path(__file__).resolve().parents[1]


# --- the grid --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, fixed, budget", [("paper", 4 * 3 * 4 * 5, 4 * 3), ("cpu", 4 * 3 * 4 * 3, 4 * 3),
                                                 ("smoke", 2 * 1 * 2 * 1, 2 * 1),
                                                 ("families", 5 * 3 * 2 * 2, 5 * 3)])
def test_preset_sizes(name, fixed, budget):
    runs = presets.grid(presets.PRESETS[name])
    assert sum(not r.budget_minutes for r in runs) == fixed
    assert sum(bool(r.budget_minutes) for r in runs) == budget
    assert len({r.name for r in runs}) == len(runs), "two configurations would share a directory"


def test_paper_preset_is_the_papers_protocol():
    p = presets.PRESETS["paper"]
    assert (p.epochs, p.budget_minutes, p.model) == (20, 10, None)  # None: train.py's BERT-base default
    budget = [r for r in presets.grid(p) if r.budget_minutes]
    assert all(r.frac == 1.0 and r.epochs == p.budget_epochs and r.seed == 0 for r in budget)
    assert budget[0].name == "mrpc-full-budget10-s0"
    assert budget[0].train_args()[-2:] == ["--time-budget", "10"]


def test_run_names_and_args():
    run = presets.Run("mrpc", "bitfit", 0.3, 0, epochs=20)
    assert run.name == "mrpc-bitfit-f0.3-s0"
    assert presets.Run("cola", "lora", 1.0, 4, 20).name == "cola-lora-f1-s4"  # train.py's own default --out name
    assert run.train_args() == ["--task", "mrpc", "--method", "bitfit", "--frac", "0.3", "--seed", "0",
                                "--epochs", "20"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 300])
def test_shards_cover_the_grid_exactly_once(n):
    runs = presets.grid(presets.PRESETS["paper"])
    slices = [presets.shard(runs, i, n) for i in range(n)]
    union = [r for s in slices for r in s]
    assert sorted(union, key=runs.index) == runs  # every configuration once, none twice
    assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced
    assert slices == [presets.shard(runs, i, n) for i in range(n)]  # deterministic


def test_bad_shard_and_axes_are_errors(capsys):
    for bad in (["--shard", "2/2"], ["--shard", "x"], ["--fracs", "0,0.5"], ["--methods", "bitfit,nope"]):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--grid", "smoke", "--out", "x", *bad])
    assert "allowed: full, bitfit, adapter, lora, head" in capsys.readouterr().err


def test_overrides_and_passthrough():
    args = sweep.parse_args(["--grid", "cpu", "--out", "x", "--fracs", "0.5", "--seeds", "3,4", "--epochs", "7",
                             "--budget-minutes", "0", "--", "--eval-every", "20"])
    runs = presets.grid(args.preset)
    assert len(runs) == 4 * 3 * 1 * 2 and {r.seed for r in runs} == {3, 4} and {r.epochs for r in runs} == {7}
    assert args.preset.model == "minilm" and args.extra == ["--eval-every", "20"]
    assert args.preset.amp == "off" and sweep.parse_args(["--grid", "cpu", "--out", "x", "--amp", "bf16"]).preset.amp == "bf16"
    # a finished run in another precision is not what the study asks for
    run = presets.Run("mrpc", "full", 1.0, 0, 6)
    assert sweep.differences({"config": {"epochs": 6, "amp": "auto"}}, run, {"amp": "off"}) == ["amp auto (asked off)"]


def test_hybrid_methods_take_their_canonical_name(capsys):
    args = sweep.parse_args(["--grid", "smoke", "--out", "x", "--methods", "lora+bitfit,bitfit+lora,ia3"])
    assert args.preset.methods == ("bitfit+lora", "ia3")  # one configuration, named as train.py names it
    assert presets.grid(args.preset)[0].name == "mrpc-bitfit+lora-f0.02-s0"
    with pytest.raises(SystemExit):
        sweep.parse_args(["--grid", "smoke", "--out", "x", "--methods", "full+lora"])
    assert "unknown full+lora; allowed: full, bitfit, adapter, lora, head, prompt, prefix, ia3, or several" \
        in capsys.readouterr().err


# --- skip, resume, failure, Ctrl-C with a stand-in for train.py -----------------------------------------

FAKE_TRAIN = textwrap.dedent("""
    import json, signal, sys, time
    from pathlib import Path
    def stop(*_):
        raise KeyboardInterrupt  # as train.py does with SIGTERM
    signal.signal(signal.SIGTERM, stop)
    a = sys.argv[1:]
    out = Path(a[a.index("--out") + 1])
    with open(out.parent / "calls.txt", "a") as f:
        f.write(" ".join(a) + "\\n")
    print("fake train", out.name)
    def write(status):
        (out / "results.json").write_text(json.dumps({"status": status, "config": {"epochs": 1}}))
    if "cola" in a:
        sys.exit(3)  # a crash
    if out.parent.name == "sleep":
        try:
            write("running")
            time.sleep(60)
        except KeyboardInterrupt:
            write("interrupted")
            sys.exit(130)
    write("complete")
""")


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in handlers.items():  # sweep.main installs its own; give pytest its handlers back
        signal.signal(s, h)


def calls(out: Path) -> list:
    return (out / "calls.txt").read_text().splitlines() if (out / "calls.txt").exists() else []


def test_skip_resume_and_failures(tmp_path, fake_train, capsys):
    out = tmp_path / "r"
    base = ["--grid", "smoke", "--out", str(out), "--tasks", "mrpc,cola", "--methods", "bitfit", "--fracs", "0.1",
            "--budget-minutes", "0", "--quiet"]
    flags = base + ["--", "--lr", "1e-3"]  # after --: for train.py
    (out / "mrpc-bitfit-f0.1-s0").mkdir(parents=True)
    (out / "mrpc-bitfit-f0.1-s0" / "results.json").write_text('{"status": "interrupted"}')
    assert sweep.main(flags) == 1  # cola crashes
    text = capsys.readouterr().out
    assert "1 ran, 0 copied, 0 skipped, 1 failed (cola-bitfit-f0.1-s0)" in text
    first = calls(out)
    assert len(first) == 2 and first[0].endswith("--lr 1e-3 --resume")  # interrupted -> resumed
    assert "--model minilm" in first[0] and "--max-length 16" in first[0]
    assert "fake train mrpc-bitfit-f0.1-s0" in (out / "mrpc-bitfit-f0.1-s0" / "train.log").read_text()

    assert sweep.main(flags) == 1  # the done run is skipped, the failed one tried again
    assert "0 ran, 0 copied, 1 skipped, 1 failed" in capsys.readouterr().out
    assert calls(out)[2:] == [first[1]]

    assert sweep.main(base + ["--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "mrpc-bitfit-f0.1-s0: done (complete)" in text and "cola-bitfit-f0.1-s0: to run" in text
    assert len(calls(out)) == 3  # a dry run runs nothing

    assert sweep.main(base + ["--epochs", "2", "--tasks", "mrpc"]) == 0  # the protocol changed
    assert "differs: epochs 1 (asked 2)" in capsys.readouterr().out


def test_ctrl_c_stops_the_run_and_it_resumes(tmp_path, fake_train, capsys):
    out = tmp_path / "sleep"
    flags = ["--grid", "smoke", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit", "--fracs", "0.1",
             "--budget-minutes", "0", "--quiet"]
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    assert sweep.main(flags) == 130
    timer.join()
    assert "sweep interrupted" in capsys.readouterr().out
    results = json.loads((out / "mrpc-bitfit-f0.1-s0" / "results.json").read_text())
    assert results["status"] == "interrupted"  # train.py got the signal and saved its state
    os.rename(out, tmp_path / "woke")  # the stand-in sleeps only in a directory named sleep
    assert sweep.main(flags[:3] + [str(tmp_path / "woke")] + flags[4:]) == 0
    assert calls(tmp_path / "woke")[-1].endswith("--resume")


PAIRED_TRAIN = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    a = sys.argv[1:]
    out = Path(a[a.index("--out") + 1])
    here, budget = out.parent, "--time-budget" in a
    marker = here / f"running-{out.name}"
    marker.touch()
    others = lambda: len(list(here.glob("running-*"))) - 1
    deadline = time.time() + float(os.environ.get("COMPANION_WAIT", "30"))
    while not budget and others() < 1 and time.time() < deadline:
        time.sleep(0.05)  # a fixed-epoch run waits for a companion: only a concurrent sweep gives it one
    ok = others() >= 1 if not budget else others() == 0
    time.sleep(0.3)
    ok = ok and (others() == 0 or not budget)  # a budget run is still alone
    with open(here / "threads.txt", "a") as f:
        f.write(f"{out.name} {os.environ.get('OMP_NUM_THREADS')} {ok}\\n")
    time.sleep(0.2)  # the companion sees this one still running
    marker.unlink()
    (out / "results.json").write_text(json.dumps({"status": "time_budget" if budget else "complete",
                                                  "config": {"epochs": 1}}))
    sys.exit(0 if ok else 4)
""")


def test_jobs_run_at_once_and_budget_runs_alone(tmp_path, monkeypatch, capsys):
    script = tmp_path / "paired_train.py"
    script.write_text(PAIRED_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    out = tmp_path / "r"
    flags = ["--grid", "smoke", "--out", str(out), "--methods", "bitfit,lora", "--fracs", "0.1", "--no-report"]
    assert sweep.main(flags + ["--jobs", "2"]) == 0, capsys.readouterr().out
    assert "4 ran, 0 copied, 0 skipped, 0 failed" in capsys.readouterr().out
    lines = sorted((out / "threads.txt").read_text().splitlines())
    # both fixed-epoch runs saw each other running, with 8 / 2 cores each; each budget run ran alone, with all
    assert lines == ["mrpc-bitfit-budget0.01-s0 None True", "mrpc-bitfit-f0.1-s0 4 True",
                     "mrpc-lora-budget0.01-s0 None True", "mrpc-lora-f0.1-s0 4 True"]
    monkeypatch.setenv("COMPANION_WAIT", "1")
    assert sweep.main(flags[:3] + [str(tmp_path / "one")] + flags[4:] + ["--budget-minutes", "0"]) == 1
    assert "mrpc-bitfit-f0.1-s0: FAILED (exit code 4" in capsys.readouterr().out  # one at a time: no companion


TUNE_TRAIN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    a = sys.argv[1:]
    out = Path(a[a.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    with open(Path(sys.argv[0]).parent / "calls.txt", "a") as f:
        f.write(" ".join(a) + "\\n")
    lr = float(a[a.index("--lr") + 1]) if "--lr" in a else None
    val = {3e-4: 0.80, 1e-3: 0.85, 3e-3: 0.85, 2e-4: 0.70, 6e-4: 0.90, 2e-3: 0.60}.get(lr, 0.5)
    score = {"f1": val}
    (out / "results.json").write_text(json.dumps({"status": "complete", "config": {"epochs": 1, "lr": lr},
        "best": {"epoch": 1, "metric": "f1", "val": score, "test": {"f1": 0.1}}}))
""")


def test_tuning_stage_chooses_on_validation_and_feeds_the_grid(tmp_path, monkeypatch, capsys):
    script = tmp_path / "tune_train.py"
    script.write_text(TUNE_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    out = tmp_path / "study"
    flags = ["--grid", "cpu", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit,lora", "--fracs", "0.5,1",
             "--seeds", "0,1", "--budget-minutes", "0", "--epochs", "1", "--quiet"]
    assert sweep.main(flags + ["--stage", "main"]) == 2  # no tuned.json yet: an error, nothing runs
    assert "run the tuning stage first" in capsys.readouterr().err and not (tmp_path / "calls.txt").exists()

    assert sweep.main(flags) == 0  # tune, then main
    tuned = json.loads((out / "tuned.json").read_text())
    # bitfit: 1e-3 and 3e-3 tie on validation, the lower rate wins; lora: 6e-4 is best
    assert tuned["chosen"] == {"mrpc": {"bitfit": 1e-3, "lora": 6e-4}} and not tuned["missing"]
    assert tuned["tried"]["mrpc"]["lora"]["0.002"]["val"] == 0.60
    lines = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(lines) == 6 + 2 * 2 * 2 - 2  # 6 tuning runs; the main grid's seed-0 frac-1 cells are copies
    assert all(" --lr 0.001 " in x for x in lines[6:] if "bitfit" in x)
    assert all(" --lr 0.0006 " in x for x in lines[6:] if "lora" in x)
    assert all(" --amp off" in x for x in lines)  # the cpu preset trains in fp32 on every machine
    copied = json.loads((out / "mrpc-lora-f1-s0" / "results.json").read_text())
    assert copied["copied_from"] == "tune/mrpc-lora-f1-s0-lr0.0006" and copied["config"]["lr"] == 6e-4
    assert sorted(p.name for p in (out / "tune").iterdir())[0] == "mrpc-bitfit-f1-s0-lr0.0003"

    assert sweep.main(flags) == 0  # again: everything is done, nothing runs
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == len(lines)
    (out / "tuned.json").write_text(json.dumps({"chosen": {"mrpc": {"bitfit": -1, "lora": 6e-4}}}))
    assert sweep.main(flags + ["--stage", "main"]) == 2
    assert "rate of mrpc/bitfit is not a positive number" in capsys.readouterr().err


# --- report on synthetic results ----------------------------------------------------------------------

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
    # method, frac, seeds, @best, @last, best epoch, trainable, %, train time, t95, peak memory
    assert "| bitfit | 1 | 3 | 82.00 ± 2.00 | 72.00 ± 2.00 | – | 2.0 | 1,000 | 1.000 | 30.0 | 20.0 | 512 |" in text
    assert "| full | 1 | 3 | 86.00 ± 1.00 |" in text
    assert "| bitfit | 0.3 | 1 | 65.00 † | 65.00 | 66.00 | 2.0 |" in text  # the baseline scores 66: not beaten
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
    assert "| bitfit | mrpc | 1 | 0 | 2.00 | – | too few cells |" in text
    # budget run: best validation 0.4 at epoch 2 -> test 45.00; 95% of 0.4 = 0.38 first at 20 s
    assert "| cola | lora | matthews | 10 | epoch cap | 1 | 3.0 | 30 | 45.00 | 35.00 | 30.0 | 20.0 | 2000 |" in text
    assert "ignored 1 runs (unfinished, failed, duplicates, not results files): stsb-adapter-f0.5-s0 (interrupted)" in text
    # compute: 8 grid runs, 23 epochs of 10 s of training, plus 1 s of evaluation each = 238 s
    assert "- compute: 0.1 hours of training and evaluation" in text and "2 finished tuning runs, 0.0 hours" in text
    assert report.compute_hours([{"time": {"train_seconds": 3000.0, "eval_seconds": 600.0}}] * 2) == 2.0
    assert "Test CPU (2 cores)" in text and "learning rates: full 2e-05, bitfit 0.001" in text
    assert text.endswith("## Analysis\n\nBitFit trails full fine-tuning by 4 points on MRPC.\n")
    for png in ("metric_vs_fraction.png", "metric_vs_epoch.png", "metric_vs_time.png", "cost.png"):
        assert (synthetic / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{png}]({png})" in text


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


# --- end to end: the real train.py on the real data -----------------------------------------------------

def test_smoke_sweep_end_to_end(tmp_path, glue_dir, minilm_dir):
    out = tmp_path / "smoke"
    cmd = [sys.executable, "-m", "study.sweep", "--grid", "smoke", "--model", "minilm", "--out", str(out),
           "--data-dir", str(glue_dir), "--quiet"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "6 ran, 0 copied, 0 skipped, 0 failed" in first.stdout
    assert f"wrote {out / 'RESULTS.md'}" in first.stdout  # an unsharded sweep ends with its report
    results = sorted(out.glob("*/results.json"))
    assert len(results) == 6
    mtimes = [p.stat().st_mtime_ns for p in results]
    for p in results:
        r = json.loads(p.read_text())
        assert r["status"] == ("time_budget" if "budget" in p.parent.name else "complete"), p
        assert r["freeze_audit"] == "passed" and (p.parent / "train.log").stat().st_size > 0

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "0 ran, 0 copied, 6 skipped, 0 failed" in second.stdout, second.stdout
    assert [p.stat().st_mtime_ns for p in results] == mtimes  # nothing ran again

    report_run = subprocess.run([sys.executable, "-m", "study.report", str(out)], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
    assert report_run.returncode == 0, report_run.stderr
    assert report_run.stdout.count("wrote ") == 1, report_run.stdout  # made once per command
    text = (out / "RESULTS.md").read_text()
    assert "### mrpc (F1)" in text and "## Fixed training-time budget" in text and "| lora | 0.04 | 1 |" in text
    for png in ("metric_vs_fraction.png", "metric_vs_epoch.png", "metric_vs_time.png", "cost.png"):
        assert (out / png).stat().st_size > 10_000
