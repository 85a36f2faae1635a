"""sweep.py's grid, shards, skip/resume/failure bookkeeping, --jobs and Ctrl-C; and the whole pipeline
end to end (sweep --grid smoke, a second sweep that runs nothing, report) on the real data and MiniLM.
The tuning stage and --rates: test_tuning.py; report.py's tables: test_report.py."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from study import jobs, presets, sweep

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
    assert sweep.foreign({"config": {"epochs": 6, "amp": "auto"}}, run, ["--amp", "off"]) == ["amp 'auto' (asked 'off')"]


def test_hybrid_methods_take_their_canonical_name(capsys):
    args = sweep.parse_args(["--grid", "smoke", "--out", "x", "--methods", "lora+bitfit,bitfit+lora,ia3"])
    assert args.preset.methods == ("bitfit+lora", "ia3")  # one configuration, named as train.py names it
    assert presets.grid(args.preset)[0].name == "mrpc-bitfit+lora-f0.02-s0"
    with pytest.raises(SystemExit):
        sweep.parse_args(["--grid", "smoke", "--out", "x", "--methods", "full+lora"])
    import adapters  # every method train.py knows (qlora, ... as they come), then the hybrids
    assert f"unknown full+lora; allowed: {', '.join(adapters.METHODS)}, or several" in capsys.readouterr().err


# --- skip, resume, failure, Ctrl-C with a stand-in for train.py -----------------------------------------

HOLD = "import rundir, sys, time; from pathlib import Path; rundir.lock(Path(sys.argv[1])); print('held', flush=True); " \
       "time.sleep(60)"  # a live process holding a directory's lock as train.py takes it
FAKE_TRAIN = textwrap.dedent("""
    import json, signal, subprocess, sys, time
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
        (out / "results.json").write_text(json.dumps({"status": status, "config": {"epochs": 1, "dropout_masks": "fast"}}))
    if "cola" in a:
        sys.exit(3)  # a crash
    if out.parent.name == "take":  # another sweep claims the lora cell: after bitfit, or as this train.py starts
        other = subprocess.Popen([sys.executable, "-c", HOLD, str(out.parent / out.name.replace("bitfit", "lora"))],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        other.stdout.readline(), (out.parent / "holders.txt").open("a").write(f"{other.pid}\\n")
        if "lora" in a:
            sys.exit(1)  # train.py refused: in use by another run
    if out.parent.name == "sleep":
        try:
            write("running")
            time.sleep(60)
        except KeyboardInterrupt:
            write("interrupted")
            sys.exit(130)
    write("complete")
""").replace("ROOT", repr(str(ROOT))).replace("HOLD", repr(HOLD))


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(sweep, "TRAIN", script)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    # Ctrl-C as in a terminal, also where pytest was started as a background job (`cmd &` in a script),
    # which inherits SIGINT ignored: sweep.main keeps an ignored signal ignored, as nohup means it
    signal.signal(signal.SIGINT, signal.default_int_handler)
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

    assert sweep.main(base + ["--epochs", "2", "--tasks", "mrpc"]) == 1  # the protocol changed: not counted
    text = capsys.readouterr().out
    assert "mrpc-bitfit-f0.1-s0: NOT COUNTED: " in text and "is another run's: epochs 1 (asked 2)" in text
    assert "0 ran, 0 copied, 0 skipped, 1 failed (mrpc-bitfit-f0.1-s0)" in text and len(calls(out)) == 3


@pytest.mark.parametrize("field, value, shown", [
    ("task", "cola", "task 'cola' (asked 'mrpc')"), ("seed", 3, "seed 3 (asked 0)"), ("frac", 0.5, "frac 0.5 (asked 0.1)"),
    ("lr", 0.5, "lr 0.5 (asked 0.001)"), ("lora_r", 4, "lora_r 4 (asked 8)"), ("model", "bert", "model 'bert'"),
    ("pooling", "cls", "pooling 'cls' (asked '')"), ("amp", "bf16", "amp 'bf16' (asked 'auto')"),
    ("time_budget", 10.0, "time_budget 10.0 (asked 0.0)"), ("epochs", 3, "epochs 3 (asked 1)"),
])
def test_a_finished_run_of_another_configuration_is_never_counted(tmp_path, fake_train, capsys, field, value, shown):
    """Issue 27: a results.json sitting in a cell's directory counts only if its config is that cell's
    (every run field train.py records: task, method and options, fraction, seed, rate, epochs, budget, model,
    pooling, precision); otherwise the cell is reported, neither skipped as done nor run over."""
    import config
    out = tmp_path / "r"
    flags = ["--grid", "smoke", "--out", str(out), "--tasks", "mrpc", "--methods", "lora", "--fracs", "0.1",
             "--budget-minutes", "0", "--quiet", "--no-report", "--", "--lr", "1e-3"]
    cell = out / "mrpc-lora-f0.1-s0"
    cell.mkdir(parents=True)
    own = config.parse_args(["--task", "mrpc", "--method", "lora", "--frac", "0.1", "--seed", "0", "--epochs", "1",
                             "--model", "minilm", "--max-length", "16", "--lr", "1e-3"]).record()
    (cell / "results.json").write_text(json.dumps({"status": "complete", "config": own}))
    assert sweep.main(flags) == 0 and "mrpc-lora-f0.1-s0: done (complete)" in capsys.readouterr().out
    (cell / "results.json").write_text(json.dumps({"status": "complete", "config": {**own, field: value}}))
    assert sweep.main(flags) == 1
    text = capsys.readouterr().out
    assert f"mrpc-lora-f0.1-s0: NOT COUNTED: {cell / 'results.json'} (complete) is another run's: {shown}" in text
    assert "1 directories hold another run's results.json" in text and calls(out) == []


def signal_once_running(dirs, *signals):
    """A thread that sends this process `signals`, back to back, once every run directory's results.json
    says "running" (the stand-in handles SIGTERM from then on)."""
    def send():
        deadline = time.time() + 30
        while time.time() < deadline and not all((d / "results.json").is_file() and
                                                 '"running"' in (d / "results.json").read_text() for d in dirs):
            time.sleep(0.02)
        for sig in signals:
            os.kill(os.getpid(), sig)
    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_ctrl_c_stops_the_run_and_it_resumes(tmp_path, fake_train, capsys):
    out = tmp_path / "sleep"
    flags = ["--grid", "smoke", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit", "--fracs", "0.1",
             "--budget-minutes", "0", "--quiet"]
    thread = signal_once_running([out / "mrpc-bitfit-f0.1-s0"], signal.SIGINT)
    assert sweep.main(flags) == 130
    thread.join()
    text = capsys.readouterr().out
    assert "sweep interrupted" in text and "mrpc-bitfit-f0.1-s0: interrupted; it resumes" in text
    assert "FAILED" not in text
    results = json.loads((out / "mrpc-bitfit-f0.1-s0" / "results.json").read_text())
    assert results["status"] == "interrupted"  # train.py got the signal and saved its state
    os.rename(out, tmp_path / "woke")  # the stand-in sleeps only in a directory named sleep
    assert sweep.main(flags[:3] + [str(tmp_path / "woke")] + flags[4:]) == 0
    assert calls(tmp_path / "woke")[-1].endswith("--resume")


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGTERM, signal.SIGHUP), (signal.SIGINT,) * 3])
def test_a_stop_signal_stops_every_running_job_and_starts_no_other(tmp_path, fake_train, capsys, signals):
    out = tmp_path / "sleep"
    flags = ["--grid", "smoke", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit,lora,ia3",
             "--fracs", "0.1", "--budget-minutes", "0", "--jobs", "2"]
    running = [out / f"mrpc-{method}-f0.1-s0" for method in ("bitfit", "lora")]
    thread = signal_once_running(running, *signals)  # `kill PID`; systemd's SIGTERM + SIGHUP; Ctrl-C pressed thrice
    assert sweep.main(flags) == 130
    thread.join()
    assert "sweep interrupted" in capsys.readouterr().out
    for run_dir in running:  # both were running; each saved its state
        assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    assert not (out / "mrpc-ia3-f0.1-s0").exists()  # the third never started


def test_an_ignored_signal_stays_ignored(tmp_path, fake_train, capsys):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts the sweep (the fixture restores it)
    out = tmp_path / "sleep"
    flags = ["--grid", "smoke", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit", "--fracs", "0.1",
             "--budget-minutes", "0", "--jobs", "2"]
    results = out / "mrpc-bitfit-f0.1-s0" / "results.json"
    seen = []

    def after_hangup():
        time.sleep(1.0)  # a stop takes a fraction of a second: the run would be "interrupted" by now
        seen.append(json.loads(results.read_text())["status"])
        os.kill(os.getpid(), signal.SIGTERM)

    thread = signal_once_running([results.parent], signal.SIGHUP)
    later = threading.Thread(target=lambda: (thread.join(), after_hangup()))
    later.start()
    assert sweep.main(flags) == 130
    later.join()
    assert seen == ["running"] and json.loads(results.read_text())["status"] == "interrupted"


def test_an_error_in_one_job_stops_the_others(tmp_path, fake_train):
    out = tmp_path / "sleep"
    sleepers = [(f"run{i}", out / f"run{i}", [sys.executable, str(sweep.TRAIN), "--out", str(out / f"run{i}")], "")
                for i in range(2)]
    wait = f"import time, pathlib\nwhile sum('running' in p.read_text() for p in pathlib.Path({str(out)!r})" \
           ".glob('run*/results.json')) < 2: time.sleep(0.02)"
    quick = [("quick", tmp_path / "quick", [sys.executable, "-c", wait], ""), ("never", tmp_path / "never", ["true"], "")]

    def finished(label, code, seconds):
        if label == "quick":  # an error in the sweep's own code while two runs are going
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        jobs.Jobs(quiet=True).run_all(sleepers + quick, 3, finished)
    assert [json.loads((d / "results.json").read_text())["status"] for _, d, _, _ in sleepers] == ["interrupted"] * 2
    assert not (tmp_path / "never").exists()  # queued behind the error: never started


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
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # 8 cores for this process
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


def test_a_cell_another_process_holds_is_left_to_it(tmp_path, fake_train, capsys):
    """Issue 27: two sweeps into one folder share the work. A cell whose lock a live process holds is
    neither run nor counted failed; once that process is gone, the cell runs."""
    out = tmp_path / "r"
    flags = ["--grid", "smoke", "--out", str(out), "--tasks", "mrpc", "--methods", "bitfit,lora", "--fracs", "0.1",
             "--budget-minutes", "0", "--quiet", "--no-report"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / "mrpc-lora-f0.1-s0")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert sweep.main(flags + ["--dry-run"]) == 0 and "1 to run, 1 running elsewhere" in capsys.readouterr().out
        assert sweep.main(flags) == 0
    finally:
        holder.kill()
        holder.wait()
    text = capsys.readouterr().out
    assert f"[2/2] mrpc-lora-f0.1-s0: running elsewhere (pid {holder.pid} on host " in text
    assert "1 ran, 0 copied, 0 skipped, 0 failed, 1 running elsewhere (left to them)" in text
    assert sweep.main(flags) == 0 and "1 ran, 0 copied, 1 skipped, 0 failed" in capsys.readouterr().out
    assert [c.split()[3] for c in calls(out)] == ["bitfit", "lora"]  # lora once its holder was gone
    assert (out / "mrpc-bitfit-f0.1-s0" / "train.log").read_text().splitlines()[1] == (f"$ python train.py --task mrpc --method bitfit --frac 0.1 --seed 0 --epochs 1 --out "  # issue 28
                      f"{os.path.relpath(out, ROOT)}/mrpc-bitfit-f0.1-s0 --model minilm --max-length 16")


@pytest.mark.parametrize("methods", ["bitfit,lora", "lora"])
def test_a_cell_claimed_while_the_sweep_runs_is_left_to_it(tmp_path, fake_train, capsys, methods):
    """After bitfit, another process holds the lora cell when its turn comes: not started. lora alone: the
    other claims it as this train.py starts, which train.py refuses (exit 1). Neither is a failure."""
    out = tmp_path / "take"
    try:
        code = sweep.main(["--grid", "smoke", "--out", str(out), "--tasks", "mrpc", "--methods", methods,
                           "--fracs", "0.1", "--budget-minutes", "0", "--quiet", "--no-report"])
    finally:
        for pid in (out / "holders.txt").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
    text = capsys.readouterr().out
    assert code == 0 and "FAILED" not in text and "mrpc-lora-f0.1-s0: running elsewhere (pid " in text, text
    assert [c.split()[3] for c in calls(out)] == methods.split(",")[:1]


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
