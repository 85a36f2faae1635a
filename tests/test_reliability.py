"""What a hostile user gets: bad values refused at parse time, corrupted state refused, one run per
directory, strict results files with a failure reason, and one `error:` line instead of a traceback."""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config
import rundir
import saving
import train
from config import parse_args, run_cli
from precision import cpu_has_bf16
from runinfo import write_json
from study import bench, report, sweep

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "minilm", "--task", "mrpc", "--method", "bitfit", "--frac", "0.03", "--max-length", "32",
        "--batch-size", "16", "--eval-batch-size", "256", "--epochs", "1"]


# --- 1. values -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--grad-clip", "0"], "--grad-clip must be finite and > 0"),
    (["--grad-clip", "-1"], "--grad-clip must be finite and > 0"),
    (["--lr", "inf"], "--lr must be finite and >= 0"),
    (["--lr=-1e-3"], "--lr must be finite and >= 0"),
    (["--seed", "-1"], "--seed must be in 0..2**32-1"),
    (["--seed", str(2**32)], "--seed must be in 0..2**32-1"),
    (["--warmup", "1"], "--warmup must be in [0, 1)"),
    (["--max-length", "3"], "--max-length must be in 8..512"),
    (["--max-length", "513"], "--max-length must be in 8..512"),
    (["--prompt-length", "600"], "--prompt-length must be in 1..504"),
    (["--frac", "nan"], "--frac must be in (0, 1]"),
    (["--time-budget", "inf"], "--time-budget must be finite minutes >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be finite and >= 0"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lora-alpha", "0"], "--lora-alpha must be finite and > 0"),
    (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1)"),
    (["--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--model", ""], "--model must be a directory, 'minilm' or a hub id"),
    (["--lora-targets", "query,nope"], "lora target 'nope'"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
])
def test_bad_values_are_refused_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().splitlines()[-1].startswith(f"train.py: error: {message}")


def test_defaults_pass_and_a_config_made_without_the_command_line_is_checked_too():
    assert config.TrainConfig().problems() == []
    assert config.TrainConfig(amp="fp8").problems() == ["--amp must be one of auto, bf16, fp16, off, got 'fp8'"]
    assert config.TrainConfig(pooling="").problems() == []  # "" = the checkpoint's


def test_prompt_and_max_length_must_fit_the_positions():
    cfg = parse_args(["--method", "prompt", "--prompt-length", "100", "--max-length", "500"])
    with pytest.raises(ValueError, match="--max-length 500 \\+ --prompt-length 100 > the 512 positions"):
        config.check_positions(cfg, 512)
    config.check_positions(parse_args(["--method", "prefix", "--prefix-length", "100", "--max-length", "500"]), 512)
    with pytest.raises(ValueError, match="--max-length 128 > the 64 positions"):
        config.check_positions(parse_args([]), 64)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "-1"], "--seeds must be in 0..2**32-1"),
    (["--max-length", "3"], "--max-length must be in 8..512"),
    (["--budget-minutes", "nan"], "--budget-minutes must be finite minutes >= 0"),
    (["--amp", "fp8"], "--amp must be one of auto, bf16, fp16, off"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_sweep_applies_the_same_checks(argv, message, capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["--grid", "smoke", "--out", "x", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr", "nan"], "--lr must be finite"),
    (["--max-length", "2"], "--max-length must be in 8..512"),
    (["--task", "sst9"], "invalid choice: 'sst9'"),
])
def test_bench_applies_the_same_checks(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


# --- 6. --help ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("parser", [config.build_parser, bench.build_parser])
def test_help_documents_every_flag_with_its_default(parser):
    p = parser()
    text = p.format_help()
    for action in p._actions:
        assert action.help, f"{action.option_strings} has no help"
        if not (action.default is False or action.default in ("", None, argparse.SUPPRESS)):
            assert "(default: " in p._get_formatter()._get_help_string(action), action.option_strings
    method = next(a for a in p._actions if {"--method", "--methods"} & set(a.option_strings))
    assert all(m in method.help for m in ("full", "bitfit", "adapter", "lora", "prompt", "prefix", "ia3"))
    assert "joined by " in method.help and "+" in method.help and "bitfit+lora" in text


# --- 7. --amp auto: bf16 from /proc/cpuinfo ------------------------------------------------------------------

def test_bf16_detection_reads_flag_tokens_and_is_off_without_cpuinfo(tmp_path):
    assert cpu_has_bf16(tmp_path / "no-such-file") is False
    (tmp_path / "cpuinfo").write_text("flags\t: fpu sse2 avx512f amx_bf16\n")
    assert cpu_has_bf16(tmp_path / "cpuinfo") is True
    (tmp_path / "cpuinfo").write_text("flags\t: fpu sse2\n")
    assert cpu_has_bf16(tmp_path / "cpuinfo") is False
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd sve svebf16 bf16 i8mm\n")  # Graviton3
    assert cpu_has_bf16(tmp_path / "cpuinfo") is True
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n")  # Graviton2
    assert cpu_has_bf16(tmp_path / "cpuinfo") is False
    (tmp_path / "cpuinfo").write_text("model name\t: a bf16 chip\nflags\t: fpu sse2\n")  # a name is not a flag
    assert cpu_has_bf16(tmp_path / "cpuinfo") is False


# --- 2. digests of the resume state ------------------------------------------------------------------------

def test_resume_file_with_a_flipped_byte_or_cut_short_is_refused(tmp_path):
    pattern = torch.full((1000,), 0.123456789)
    saving.write_resume(tmp_path / "resume.pt", {"results": "{}", "trainable": {"w": pattern}, "epoch": 1})
    raw = bytearray((tmp_path / "resume.pt").read_bytes())
    at = raw.find(pattern.numpy().tobytes()[:8])  # torch.save stores tensor bytes uncompressed
    assert at > 0
    raw[at + 100] ^= 1
    (tmp_path / "flipped.pt").write_bytes(raw)
    torch.load(tmp_path / "flipped.pt", weights_only=True)  # torch itself does not notice
    with pytest.raises(ValueError, match=r"flipped\.pt: corrupted"):
        saving.read_resume(tmp_path / "flipped.pt")
    (tmp_path / "cut.pt").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt: not a readable resume file"):
        saving.read_resume(tmp_path / "cut.pt")
    assert torch.equal(saving.read_resume(tmp_path / "resume.pt")["trainable"]["w"], pattern)


# --- 3. one run per directory ---------------------------------------------------------------------------------

def fake_run(out: Path, argv, status="complete", files=("best.safetensors",)):
    """A directory as a run of `argv` leaves it: results.json with its config, and `files`."""
    cfg = parse_args(argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"status": status, "config": cfg.record()}))
    for name in files:
        (out / name).write_text("x")
    return cfg


def test_another_runs_directory_is_refused_then_overwritten(tmp_path):
    out = tmp_path / "run"
    fake_run(out, ["--method", "lora", "--out", str(out)])
    with pytest.raises(rundir.RunDirError, match="holds another run's files \\(results.json of mrpc lora "
                       "frac 1.0 seed 0, status complete; results.json, best.safetensors\\): pass --resume"):
        rundir.claim_out_dir(parse_args(["--method", "bitfit", "--out", str(out)]))
    assert rundir.claim_out_dir(parse_args(["--method", "bitfit", "--out", str(out), "--overwrite"])) is None
    assert sorted(p.name for p in out.iterdir()) == [rundir.LOCK, rundir.RESERVE]  # held by this process
    (out / "audit.txt").write_text("a run that finished no epoch")  # nothing worth protecting
    rundir.claim_out_dir(parse_args(["--out", str(out)]))
    (out / "train.log").write_text("the sweep's log")  # not a run file
    rundir.claim_out_dir(parse_args(["--out", str(out)]))
    assert (out / "train.log").is_file()
    rundir.release(out)
    assert sorted(p.name for p in out.iterdir()) == ["train.log"]


def test_resume_of_another_run_is_refused_naming_what_differs(tmp_path):
    out = tmp_path / "run"
    argv = ["--method", "bitfit", "--frac", "0.3", "--out", str(out)]
    cfg = fake_run(out, argv, status="interrupted", files=())
    with pytest.raises(rundir.RunDirError, match=r"results.json belongs to another run: frac 0.3 \(asked 0.5\)"):
        rundir.claim_out_dir(parse_args([*argv, "--frac", "0.5", "--resume"]))
    assert rundir.claim_out_dir(parse_args([*argv, "--resume"])) is None  # no resume.pt: starts again
    results = json.dumps({"config": cfg.record()})
    saving.write_resume(out / "resume.pt", {"results": results, "trainable": {}, "epoch": 1, "step": 3})
    with pytest.raises(rundir.RunDirError, match=r"resume.pt belongs to another run: method 'bitfit' \(asked "
                       r"'lora'\); lr 0.001 \(asked 0.0005\)"):
        rundir.claim_out_dir(parse_args([*argv, "--method", "lora", "--resume"]))
    with pytest.raises(rundir.RunDirError, match=r"seed 0 \(asked 1\)"):
        rundir.claim_out_dir(parse_args([*argv, "--seed", "1", "--resume"]))
    with pytest.raises(rundir.RunDirError, match=r"train_pooler False \(asked True\)"):  # a method option
        rundir.claim_out_dir(parse_args([*argv, "--train-pooler", "--resume"]))
    assert rundir.claim_out_dir(parse_args([*argv, "--resume", "--device", "cpu"]))["step"] == 3


def test_run_fields_are_every_config_field_but_the_named_others():
    record = parse_args([]).record()  # results.json's "config": the run's flags and the method's options
    assert set(config.NOT_RUN_FIELDS) < set(record)  # no stale name
    assert set(rundir.run_fields(record)) == set(record) - set(config.NOT_RUN_FIELDS)
    assert {"lora_dropout", "lr", "amp", "train_pooler"} <= set(rundir.run_fields(record))


def test_out_that_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(rundir.RunDirError, match="is not writable"):
        rundir.claim_out_dir(parse_args(["--out", str(tmp_path / "file" / "run")]))
    with pytest.raises(rundir.RunDirError, match="is a file, not a directory"):
        rundir.claim_out_dir(parse_args(["--out", str(tmp_path / "file")]))


def test_rerun_into_a_finished_directory_is_refused_before_the_model_loads(tmp_path, glue_dir, monkeypatch):
    out = tmp_path / "run"
    fake_run(out, [*FAST, "--out", str(out)])
    monkeypatch.setattr(train, "load_pretrained", lambda *a, **k: pytest.fail("the model must not load"))
    with pytest.raises(rundir.RunDirError, match="--overwrite"):
        train.main([*FAST, "--data-dir", str(glue_dir), "--out", str(out)])


# --- 4. non-finite training, failures, strict results ------------------------------------------------------

def test_results_json_is_strict_with_nonfinite_values_flagged(tmp_path):
    write_json(tmp_path / "r.json", {"loss": float("nan"), "evals": [{"val": {"r": float("inf")}}], "ok": 1.5})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))
    assert data["loss"] is None and data["evals"][0]["val"]["r"] is None and data["ok"] == 1.5
    assert data["nonfinite_values"] == ["loss", "evals[0].val.r"]


def test_skipped_nonfinite_steps_are_reported(tmp_path, glue_dir, monkeypatch, capsys):
    real_loss, calls = train.loss_fn, {"n": 0}

    def nan_twice(logits, labels, regression):
        calls["n"] += 1
        loss = real_loss(logits, labels, regression)
        return loss * float("nan") if calls["n"] in (2, 3) else loss  # training steps 2 and 3

    monkeypatch.setattr(train, "loss_fn", nan_twice)
    results = train.main([*FAST, "--data-dir", str(glue_dir), "--out", str(tmp_path / "run")])
    assert results["status"] == "complete" and results["nonfinite_steps"] == 2
    assert results["epochs"][0]["nonfinite_steps"] == 2
    assert "| 2 non-finite steps skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["nonfinite_steps"] == 2


def test_nonfinite_abort_and_crash_leave_status_failed_with_the_reason(tmp_path, glue_dir, monkeypatch):
    monkeypatch.setattr(train, "loss_fn", lambda logits, labels, regression: (logits * float("nan")).sum())
    monkeypatch.setattr(train, "MAX_NONFINITE", 3)
    with pytest.raises(FloatingPointError):
        train.main([*FAST, "--data-dir", str(glue_dir), "--out", str(tmp_path / "nan")])
    results = json.loads((tmp_path / "nan" / "results.json").read_text())
    assert results["status"] == "failed" and "3 consecutive non-finite losses" in results["failure"]
    assert results["nonfinite_steps"] == 3

    monkeypatch.undo()
    monkeypatch.setattr(train, "evaluate", lambda *a: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    with pytest.raises(RuntimeError):
        train.main([*FAST, "--data-dir", str(glue_dir), "--out", str(tmp_path / "crash")])
    results = json.loads((tmp_path / "crash" / "results.json").read_text())
    assert results["status"] == "failed" and results["failure"].startswith("RuntimeError: disk on fire")


def results_file(task="mrpc", method="bitfit", frac=1.0, seed=0, status="complete"):
    """A real committed results.json (every field the report reads), relabelled."""
    r = json.loads((ROOT / "results" / "cpu-minilm-tuned" / "mrpc-bitfit-f1-s0" / "results.json").read_text())
    r["config"].update(task=task, method=method, frac=frac, seed=seed)
    return {**r, "task": task, "method": method, "frac": frac, "seed": seed, "status": status}


def test_report_leaves_out_failed_runs_flags_duplicates_and_names_non_results_files(tmp_path):
    for name, r in [("a", results_file()), ("b", results_file(status="failed")), ("c", results_file()),
                    ("d", {"rows": []}), ("e", results_file(seed=1))]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "results.json").write_text("{not json")
    runs, ignored = report.load(tmp_path)
    assert [r["dir"] for r in runs] == ["a", "e"]
    assert {r["dir"]: r["status"] for r in ignored} == {
        "b": "failed", "c": "duplicate of a", "d": "not a results file (no task, method, frac)",
        "f": "unreadable (JSONDecodeError)"}


# --- 5. one line, no traceback -------------------------------------------------------------------------------

def error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].startswith("error: ")
    return err[-1]


def test_anticipated_failures_are_one_error_line(tmp_path, glue_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = [*FAST, "--data-dir", str(glue_dir)]
    assert "model directory /no/such/model does not exist" in \
        error_line([*base, "--model", "/no/such/model", "--out", str(tmp_path / "a")], capsys)
    assert "not in the local cache" in \
        error_line([*base, "--model", "nobody/no-such-bert", "--out", str(tmp_path / "b")], capsys)

    # a missing split in an explicit directory: named, and nothing is downloaded
    monkeypatch.setattr("glue.download.fetch", lambda *a: pytest.fail("must not download"))
    partial = tmp_path / "glue"
    shutil.copytree(glue_dir / "MRPC", partial / "MRPC", ignore=shutil.ignore_patterns("dev.tsv"))
    line = error_line([*FAST, "--data-dir", str(partial), "--out", str(tmp_path / "c")], capsys)
    assert "no dev.tsv in the data directory given by --data-dir" in line and "glue.download" in line
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "nowhere"))
    assert "$GLUE_DIR" in error_line([*FAST, "--out", str(tmp_path / "d")], capsys)

    # a malformed row: file and line, before the model loads
    monkeypatch.setattr(train, "load_pretrained", lambda *a, **k: pytest.fail("the model must not load"))
    shutil.copy(glue_dir / "MRPC" / "dev.tsv", partial / "MRPC" / "dev.tsv")
    lines = (partial / "MRPC" / "train.tsv").read_text(encoding="utf-8-sig").split("\n")
    lines[6] = lines[6].replace("\t", " ", 1)
    (partial / "MRPC" / "train.tsv").write_text("\n".join(lines))
    line = error_line([*FAST, "--data-dir", str(partial), "--out", str(tmp_path / "e")], capsys)
    assert line.endswith("train.tsv:7: expected 5 tab-separated columns, got 4")

    # a truncated resume state
    out = tmp_path / "f"
    cfg = fake_run(out, [*base, "--out", str(out)], status="interrupted", files=())
    saving.write_resume(out / "resume.pt", {"results": json.dumps({"config": cfg.record()}), "trainable": {}})
    (out / "resume.pt").write_bytes((out / "resume.pt").read_bytes()[:100])
    assert "resume.pt: not a readable resume file" in error_line([*base, "--out", str(out), "--resume"], capsys)


def test_traceback_only_with_debug(tmp_path, glue_dir):
    argv = [sys.executable, str(ROOT / "train.py"), *FAST, "--model", "/no/such/model", "--data-dir", str(glue_dir),
            "--out", str(tmp_path / "x")]
    plain = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 1 and plain.stderr.strip() == "error: model directory /no/such/model does not exist"
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, cwd=ROOT)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_no_traceback_is_hidden_for_bugs(capsys):
    def buggy(argv):
        return {}["missing"]

    with pytest.raises(KeyError):
        run_cli(buggy, [])
