"""study/curves.py: one run's directory as a PNG (issue 28 item 3), from results.json and steps.jsonl
written by hand; an old run without steps.jsonl gets the metric panel only; a directory that is not a
run's is one error line. study.report pointed at a run's directory draws the same picture."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from study import curves

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def scores(x):
    return {"loss": 0.6 - x / 2, "f1": x, "accuracy": x}


@pytest.fixture
def run_dir(tmp_path):
    """A two-epoch MRPC run as train.py records it: 4 steps an epoch, an evaluation at each epoch's end."""
    run = tmp_path / "mrpc-lora-f1-s0"
    run.mkdir()
    evals = [{"epoch": e, "step": 4 * e, "train_seconds": 10.0 * e, "val": scores(v), "test": scores(t),
              "eval_seconds": 1.0} for e, v, t in ((1, 0.70, 0.68), (2, 0.80, 0.78))]
    results = {"task": "mrpc", "method": "lora", "frac": 1.0, "seed": 0, "status": "complete",
               "baseline": {"name": "majority", "prediction": 1, "val": {"f1": 0.81}, "test": {"f1": 0.8122}},
               "epochs": [{"epoch": e["epoch"], "steps": 4, "train_loss": 0.7 - 0.1 * e["epoch"], "val": e["val"],
                           "test": e["test"]} for e in evals],
               "evals": evals, "best": {"epoch": 2, "metric": "f1", "val": evals[1]["val"], "test": evals[1]["test"]}}
    (run / "results.json").write_text(json.dumps(results))
    steps = [{"step": s, "epoch": s / 4, "loss": 0.7 - 0.05 * s if s != 3 else None, "lr": 1e-3 * (1 - s / 8),
              "grad_norm": 1.0, "tokens_per_second": 100.0, "seconds": 1.0} for s in range(1, 9)]
    (run / "steps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps))  # step 3: a non-finite loss
    return run


def test_a_run_with_steps_gets_three_panels(run_dir, capsys):
    assert curves.main([str(run_dir)]) == 0
    assert capsys.readouterr().out == f"wrote {run_dir / 'curves.png'}\n"
    width, height = png_size(run_dir / "curves.png")
    assert width > 2 * height  # loss, learning rate and metric side by side


def test_an_old_run_without_steps_gets_the_metric_panel_and_says_so(run_dir, tmp_path, capsys):
    (run_dir / "steps.jsonl").unlink()
    out = tmp_path / "pictures" / "old.png"
    assert curves.main([str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"note: {run_dir / 'steps.jsonl'} does not exist (a run made before runs recorded their "
                       "training curve): the metric panel only", f"wrote {out}"]
    width, height = png_size(out)
    assert width < 2 * height and not (run_dir / "curves.png").exists()


def test_a_run_without_baseline_or_evaluations_is_still_drawn(run_dir, capsys):
    results = json.loads((run_dir / "results.json").read_text())
    del results["baseline"], results["best"]
    results.update(evals=[], epochs=[], status="running")
    (run_dir / "results.json").write_text(json.dumps(results))
    with open(run_dir / "steps.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # killed while writing its last line
    assert curves.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"skipped 1 unreadable line of {run_dir / 'steps.jsonl'}" in out and "has no baseline" in out
    assert "no evaluation recorded yet" in out
    png_size(run_dir / "curves.png")


def test_a_directory_that_is_not_a_run_is_one_error_line(tmp_path):
    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "study.curves", *map(str, argv)], cwd=ROOT, capture_output=True,
                              text=True)
    for argv, message in [([tmp_path / "nope"], f"error: {tmp_path / 'nope'}: no such run directory\n"),
                          ([tmp_path], f"error: {tmp_path / 'results.json'}: no such file (RUN_DIR is a train.py "
                                       "--out directory; for a study folder of many runs: python -m study.report)\n")]:
        done = cli(*argv)
        assert (done.returncode, done.stderr, done.stdout) == (1, message, "")
    (tmp_path / "results.json").write_text("{")
    done = cli(tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {tmp_path / 'results.json'}: not valid JSON")
    assert cli("--help").stdout.startswith("usage: python -m study.curves [-h] [--out PNG] RUN_DIR")
