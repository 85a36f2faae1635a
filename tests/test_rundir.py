"""A run directory belongs to one process at a time, nothing finished is lost to a second command, and a
full disk still ends in a results.json that says so, with advice that works once space is freed."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rundir
import saving
import train
from config import parse_args

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "minilm", "--task", "mrpc", "--method", "bitfit", "--frac", "0.03", "--max-length", "32",
        "--batch-size", "16", "--eval-batch-size", "256", "--seed", "0", "--amp", "off"]
HOLD = "import rundir, sys, time; from pathlib import Path; rundir.lock(Path(sys.argv[1])); print('held', " \
       "flush=True); time.sleep(60)"


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.Locked, match=f"in use by another run \\(pid {holder.pid} on host"):
            rundir.claim_out_dir(parse_args([*FAST, "--out", str(out)]))
        assert (out / rundir.LOCK).read_text().split()[0] == str(holder.pid)  # the holder's lock is kept
    finally:
        holder.kill()
        holder.wait()
    assert rundir.claim_out_dir(parse_args([*FAST, "--out", str(out)])) is None  # killed: its lock is stale
    assert "was left by a process that no longer exists; taking it over" in capsys.readouterr().out
    assert (out / rundir.LOCK).read_text().split()[0] == str(os.getpid())
    rundir.release(out)
    assert not (out / rundir.LOCK).exists() and not (out / rundir.RESERVE).exists()


def test_two_real_train_processes_into_one_directory(tmp_path, glue_dir):
    """The second train.py is refused with one line while the first runs; the first's files are its own."""
    out = tmp_path / "run"
    argv = [sys.executable, "train.py", *FAST, "--epochs", "1", "--data-dir", str(glue_dir), "--out", str(out)]
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not (out / rundir.LOCK).exists():
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.05)
        second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    finally:
        first.wait(timeout=600)
    assert second.returncode == 1 and second.stderr.strip().splitlines()[-1].startswith(
        f"error: --out {out} is in use by another run (pid {first.pid} on host")
    assert first.returncode == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and len(results["epochs"]) == 1
    assert not (out / rundir.LOCK).exists() and not (out / rundir.RESERVE).exists()  # released on exit


def test_resume_of_a_finished_run_changes_nothing(tmp_path, glue_dir, capsys):
    out = tmp_path / "run"
    train.main([*FAST, "--epochs", "1", "--data-dir", str(glue_dir), "--out", str(out)])
    (out / "resume.pt").unlink()  # the case that used to start the run over
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    results = train.main([*FAST, "--epochs", "1", "--data-dir", str(glue_dir), "--out", str(out), "--resume"])
    assert f"--resume: {out} is finished" in capsys.readouterr().out and results["status"] == "complete"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def enospc_on_second_resume(monkeypatch):
    """torch.save fails with a full disk halfway through resume.pt.tmp after epoch 2."""
    real, calls = saving.torch.save, {"n": 0}

    def full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f, *args, **kwargs)
    monkeypatch.setattr(saving.torch, "save", full)


def test_a_full_disk_ends_in_results_that_say_so_and_resume_works_once_space_is_freed(tmp_path, glue_dir,
                                                                                      monkeypatch):
    out, argv = tmp_path / "run", [*FAST, "--epochs", "2", "--data-dir", str(glue_dir)]
    with monkeypatch.context() as m:
        enospc_on_second_resume(m)
        with pytest.raises(OSError, match=f"no space left on the disk holding {out.resolve()}.*rerun the same "
                                          f"command with --resume"):
            train.main([*argv, "--out", str(out)])
    failed = json.loads((out / "results.json").read_text())
    assert failed["status"] == "failed" and "No space left on device" in failed["failure"]
    assert len(failed["epochs"]) == 2  # every finished epoch kept
    assert not (out / "resume.pt.tmp").exists()  # the half-written file is not left behind
    resumed = train.main([*argv, "--out", str(out), "--resume"])  # the advice, once space is freed
    whole = train.main([*argv, "--out", str(tmp_path / "whole")])
    assert resumed["status"] == "complete" and [e["val"] for e in resumed["epochs"]] == \
        [e["val"] for e in whole["epochs"]]


def test_the_last_results_json_is_written_from_the_reserve_when_the_disk_is_full(tmp_path, monkeypatch):
    out = tmp_path / "run"
    rundir.claim_out_dir(parse_args([*FAST, "--out", str(out)]))
    assert (out / rundir.RESERVE).stat().st_size == rundir.RESERVE_BYTES
    written = []

    def write():  # a disk with no space left until the reserve is given back
        if (out / rundir.RESERVE).exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "results.json.tmp"))
        written.append(True)
    rundir.save_even_when_full(write, out)
    assert written == [True] and not (out / rundir.RESERVE).exists()
    with pytest.raises(OSError, match="No space left"):  # no reserve left: the error passes
        rundir.save_even_when_full(lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")), out)
    rundir.release(out)


def test_overwrite_clears_every_run_file_the_curve_and_tensorboard_included(tmp_path):
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1").write_text("old events")
    for name in ("results.json", "steps.jsonl", "evals.jsonl", "best.safetensors"):
        (out / name).write_text("{}")
    (out / "notes.txt").write_text("not a run file")
    rundir.claim_out_dir(parse_args([*FAST, "--out", str(out), "--overwrite"]))
    rundir.release(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_resume_never_replaces_finished_epochs_it_cannot_continue(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    record = {"status": "interrupted", "epochs": [{"epoch": 1}], "config": parse_args([*FAST]).record()}
    (out / "results.json").write_text(json.dumps(record))  # its resume.pt deleted by hand
    with pytest.raises(rundir.RunDirError, match="resume.pt is missing, so the 1 finished epoch"):
        rundir.claim_out_dir(parse_args([*FAST, "--out", str(out), "--resume"]))
    assert (out / "results.json").is_file()
    (out / "results.json").write_text(json.dumps({**record, "status": "failed"}))  # a crash: starts again
    assert rundir.claim_out_dir(parse_args([*FAST, "--out", str(out), "--resume"])) is None
    rundir.release(out)
    (out / "results.json").write_text("[1, 2]")  # not a results file: one line, no traceback
    with pytest.raises(rundir.RunDirError, match="holds another run's files"):
        rundir.claim_out_dir(parse_args([*FAST, "--out", str(out), "--resume"]))


def test_a_full_disk_under_torch_save_or_safetensors_is_named_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(saving.shutil, "disk_usage", lambda path: type("U", (), {"free": 4096})())
    monkeypatch.setattr(saving.torch, "save", lambda obj, f: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 392000 vs 391892")))
    with pytest.raises(OSError) as e:
        saving.write_resume(tmp_path / "resume.pt", {"x": 1})
    assert e.value.errno == errno.ENOSPC and not (tmp_path / "resume.pt.tmp").exists()
    safetensors_error = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    assert rundir.is_disk_full(safetensors_error)
    assert "no space left on the disk holding" in str(rundir.disk_full(tmp_path, safetensors_error))
