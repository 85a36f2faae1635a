"""train.py end to end on MiniLM and a sliver of MRPC: outputs, reproducibility, interruption,
resume, time budget, non-finite losses, DDP, the learning-rate schedule."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import precision
import runinfo
import optim
import train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "minilm", "--task", "mrpc", "--method", "bitfit", "--frac", "0.03", "--max-length", "32",
        "--batch-size", "16", "--eval-batch-size", "256"]


def run(tmp_path, glue_dir, *extra, name="run"):
    out = tmp_path / name
    return train.main(FAST + ["--data-dir", str(glue_dir), "--out", str(out), *extra]), out


def test_audit_flag_prints_table_and_trains_nothing(tmp_path, capsys):
    report = train.main(["--model", "minilm", "--method", "adapter", "--audit", "--out", str(tmp_path / "a")])
    printed = capsys.readouterr().out
    assert "trainable params:" in printed and "adapters" in printed and "pooling mean" in printed
    assert report.trainable < report.total and not (tmp_path / "a").exists()


def test_run_writes_results_and_is_reproducible(tmp_path, glue_dir):
    results, out = run(tmp_path, glue_dir, "--epochs", "2", "--eval-every", "2")
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["freeze_audit"] == "passed"
    for key in ("task", "method", "frac", "seed", "model", "params", "data", "epochs", "best", "time",
                "environment", "config"):
        assert key in on_disk
    assert on_disk["params"]["trainable"] < on_disk["params"]["total"]
    if on_disk["environment"]["device"] == "cpu":  # machines of one name differ in it
        assert on_disk["environment"]["cpu_bf16"] is precision.cpu_has_bf16()
    assert set(on_disk["data"]) >= {"train_examples", "val_examples", "test_examples", "padding_fraction"}
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2]
    epoch = on_disk["epochs"][0]
    assert epoch["train_seconds"] > 0 and epoch["tokens_per_second"] > 0
    assert set(epoch["val"]) >= {"accuracy", "f1", "loss"} and set(epoch["test"]) >= {"accuracy", "f1"}
    assert on_disk["best"]["val"]["f1"] == max(e["val"]["f1"] for e in on_disk["epochs"])
    lines = [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]
    assert len(lines) == len(on_disk["evals"]) > 2  # epoch ends plus --eval-every evaluations
    assert (out / "best.safetensors").is_file() and "trainable params" in (out / "audit.txt").read_text()
    again, _ = run(tmp_path, glue_dir, "--epochs", "2", "--eval-every", "2", name="again")
    assert [e["val"] for e in again["epochs"]] == [e["val"] for e in results["epochs"]]
    assert [e["test"] for e in again["epochs"]] == [e["test"] for e in results["epochs"]]


def test_environment_records_whether_the_cpu_has_bf16(monkeypatch):
    for flag in (True, False):
        monkeypatch.setattr(runinfo, "cpu_has_bf16", lambda: flag)
        assert runinfo.environment(torch.device("cpu"), None)["cpu_bf16"] is flag


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, glue_dir, monkeypatch):
    whole, _ = run(tmp_path, glue_dir, "--epochs", "3", name="whole")
    calls = {"n": 0}
    real_evaluate = train.evaluate

    def evaluate_then_interrupt(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # the validation pass of epoch 2
            raise KeyboardInterrupt
        return real_evaluate(*args)

    monkeypatch.setattr(train, "evaluate", evaluate_then_interrupt)
    with pytest.raises(SystemExit) as e:
        run(tmp_path, glue_dir, "--epochs", "3", name="cut")
    assert e.value.code == 130
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert cut["status"] == "interrupted" and len(cut["epochs"]) == 1
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    resumed, _ = run(tmp_path, glue_dir, "--epochs", "3", "--resume", name="cut")
    assert [e["val"] for e in resumed["epochs"]] == [e["val"] for e in whole["epochs"]]
    assert resumed["best"]["test"] == whole["best"]["test"]


def test_sigterm_leaves_valid_results(tmp_path, glue_dir):
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *FAST, "--epochs", "200",
                             "--data-dir", str(glue_dir), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        path = out / "results.json"
        if path.is_file() and json.loads(path.read_text())["epochs"]:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, proc.stderr.read()
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and len(results["epochs"]) >= 1


def test_time_budget_stops_training_and_still_evaluates(tmp_path, glue_dir):
    results, _ = run(tmp_path, glue_dir, "--epochs", "50", "--time-budget", "0.0001")
    assert results["status"] == "time_budget"
    assert len(results["epochs"]) == 1 and results["epochs"][0]["completed"] is False
    assert results["best"] is not None and results["freeze_audit"] == "passed"


def test_torchrun_two_cpu_processes_agree_with_one(tmp_path, glue_dir):
    """DistributedDataParallel over gloo: each step's batch is split across the ranks, so the run
    follows the single-process one up to dropout masks and float summation order."""
    argv = [*FAST, "--epochs", "2", "--data-dir", str(glue_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, str(ROOT / "train.py"), *argv, "--out", str(tmp_path / "ddp")],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    single, _ = run(tmp_path, glue_dir, "--epochs", "2", name="single")
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["status"] == "complete" and ddp["environment"]["world_size"] == 2
    assert ddp["freeze_audit"] == "passed"
    assert [e["steps"] for e in ddp["epochs"]] == [e["steps"] for e in single["epochs"]]
    for a, b in zip(ddp["epochs"], single["epochs"]):
        assert abs(a["val"]["loss"] - b["val"]["loss"]) < 0.02
        assert abs(a["test"]["accuracy"] - b["test"]["accuracy"]) < 0.05


def test_learning_rate_schedule():
    total, warmup = 100, 0.06  # 6 warm-up steps
    factors = [optim.lr_factor(s, total, warmup) for s in range(total)]
    assert factors[0] == pytest.approx(1 / 6) and factors[5] == 1.0
    assert factors[6] == pytest.approx(94 / 94) and factors[99] == pytest.approx(1 / 94)
    assert all(a >= b for a, b in zip(factors[5:], factors[6:]))  # decays monotonically
    # under a time budget the schedule follows the fraction of the budget spent, not the steps
    assert optim.lr_factor(0, 10**6, warmup, budget_progress=0.03) == pytest.approx(0.5)
    assert optim.lr_factor(0, 10**6, warmup, budget_progress=0.53) == pytest.approx(0.5)
    assert optim.lr_factor(0, 10**6, warmup, budget_progress=1.2) == 0.0
