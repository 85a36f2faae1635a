"""What every run shows and records: steps.jsonl (equal after a resume), the training loss in the epoch
lines and results.json, progress lines through a pipe, and TensorBoard's copy of the curve."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import progress
import train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "minilm", "--task", "mrpc", "--method", "bitfit", "--frac", "0.03", "--max-length", "32",
        "--batch-size", "16", "--eval-batch-size", "256", "--seed", "0", "--amp", "off", "--epochs", "2"]
TIMING = ("tokens_per_second", "seconds")  # differ between any two runs


def curve(out: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "steps.jsonl").read_text().splitlines()]


def test_steps_file_epoch_loss_and_a_resumed_runs_curve_equals_an_uninterrupted_ones(tmp_path, glue_dir,
                                                                                   monkeypatch, capsys):
    whole = train.main([*FAST, "--data-dir", str(glue_dir), "--out", str(tmp_path / "whole")])
    lines = curve(tmp_path / "whole")
    steps_per_epoch = whole["epochs"][0]["steps"]
    assert [x["step"] for x in lines] == sorted({*range(progress.LOG_EVERY, 2 * steps_per_epoch + 1,
                                                        progress.LOG_EVERY), steps_per_epoch, 2 * steps_per_epoch})
    assert all(set(x) == {"step", "epoch", "loss", "lr", "grad_norm"} for x in lines)
    assert lines[-1]["epoch"] == 2.0 and all(x["loss"] > 0 and x["grad_norm"] > 0 for x in lines)
    assert [e["train_loss"] > 0 for e in whole["epochs"]] == [True, True]
    epoch_lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch ")]
    assert len(epoch_lines) == 2 and f"| loss {whole['epochs'][0]['train_loss']:.4f} |" in epoch_lines[0]
    assert "| eval " in epoch_lines[0]

    real_epoch = train.train_epoch

    def stop_in_epoch_2(run, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(run, epoch)
    monkeypatch.setattr(train, "train_epoch", stop_in_epoch_2)
    with pytest.raises(SystemExit):
        train.main([*FAST, "--data-dir", str(glue_dir), "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    train.main([*FAST, "--data-dir", str(glue_dir), "--out", str(tmp_path / "cut"), "--resume"])
    assert curve(tmp_path / "cut") == lines


def test_a_piped_run_prints_progress_lines_during_each_epoch(tmp_path, glue_dir):
    argv = [sys.executable, "train.py", *FAST, "--data-dir", str(glue_dir), "--out", str(tmp_path / "run")]
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout
    out = done.stdout.splitlines()
    first_epoch_end = next(i for i, x in enumerate(out) if x.startswith("epoch   1 |"))
    during = [x for x in out[:first_epoch_end] if x.startswith("  epoch 1/2 step ")]
    assert len(during) >= 3 and all(" | loss " in x and " tok/s | ETA " in x for x in during)
    assert any(x.startswith("  epoch 2/2 step ") for x in out[first_epoch_end:])


def test_plain_lines_come_every_tenth_of_an_epoch_and_the_eta_is_the_runs(capsys):
    p = progress.Progress(total_steps=200, done=0, enabled=True, terminal=False)
    p.epoch(1, 2, 100)
    for i in range(100):
        p.step(i + 1, i, 0.5, 1000.0)
    lines = capsys.readouterr().out.splitlines()
    assert [x.split(" step ")[1].split(" |")[0] for x in lines] == [f"{10 * k}/200" for k in range(1, 11)]
    p.close()


def test_tensorboard_holds_the_steps_files_values(tmp_path, glue_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train.main([*FAST, "--epochs", "1", "--data-dir", str(glue_dir), "--out", str(tmp_path / "run"),
                "--tensorboard"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    lines = [json.loads(x) for x in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    for name in ("loss", "lr", "grad_norm", "tokens_per_second"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{name}")]
        assert logged == [(x["step"], pytest.approx(x[name], rel=1e-6)) for x in lines], name
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert events.Scalars("test/f1")[-1].value == pytest.approx(results["evals"][-1]["test"]["f1"], rel=1e-6)
