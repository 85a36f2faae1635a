"""A run directory (--out) belongs to one run: claim it before the model loads, check that a resumed
state is the same run, and record a failure in results.json instead of leaving it "running".

What a run leaves in --out is RUN_FILES. Reusing a directory that holds another run's files is
refused unless --resume continues that run (its configuration must match, run_fields) or --overwrite
deletes the files first; study/sweep.py's train.log is not a run file (the sweep appends to it before
train.py starts).
"""
import json
import os
import traceback
from pathlib import Path

import saving
from config import NOT_RUN_FIELDS

RUN_FILES = ("results.json", "evals.jsonl", "best.safetensors", "resume.pt", "audit.txt",
             "results.json.tmp", "resume.pt.tmp")
KEPT = ("results.json", "best.safetensors", "resume.pt")  # what a run has to show once it finished an epoch
# (or was interrupted): a directory with only audit.txt / evals.jsonl holds nothing worth protecting
WHAT_TO_DO = "pass --resume to continue it, choose another --out, or pass --overwrite to delete its files first"


class RunDirError(ValueError):
    """--out cannot be used for this run; the message says why and what to do."""


def describe(results: dict) -> str:
    """'mrpc bitfit frac 0.3 seed 0, status complete' from a results.json."""
    c = results.get("config", results)
    return (f"{c.get('task')} {c.get('method')} frac {c.get('frac')} seed {c.get('seed')}, "
            f"status {results.get('status', '?')}")


def run_fields(record: dict) -> dict:
    """The entries of a config record (cfg.record()) that define a run: all but config.NOT_RUN_FIELDS.
    A resume.pt saved under other values would continue another run."""
    return {k: v for k, v in record.items() if k not in NOT_RUN_FIELDS}


def differences(saved: dict, cfg) -> list:
    """'frac 0.3 (asked 0.5)' for every run field (run_fields) where a saved config (results.json's
    "config", cfg.record()) differs from cfg's."""
    asked = run_fields(cfg.record())
    return [f"{k} {saved[k]!r} (asked {v!r})" for k, v in asked.items() if k in saved and saved[k] != v]


def check_resume_matches(saved_config: dict, cfg, source: Path):
    """Refuse to continue a run whose configuration (from `source`) differs in a run field."""
    diff = differences(saved_config, cfg)
    if diff:
        raise RunDirError(f"--resume: {source} belongs to another run: {'; '.join(diff)}. "
                          f"Resume with its flags, or choose another --out")


def read_results(out: Path):
    path = out / "results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return {"status": "unreadable"}


def claim_out_dir(cfg, main_process: bool = True):
    """Make --out this run's directory before anything loads; -> the verified resume state, or None.

    --resume with a resume.pt: read and verify it (saving.read_resume), and check it is this run.
    --resume without one: the files there (a run stopped in its first epoch) must be this run's.
    Otherwise other run files are refused, or deleted under --overwrite. Only the main process
    deletes; every process reads the resume state. The directory must be writable."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory")
    present = [name for name in RUN_FILES if (out / name).exists()]
    kept = [name for name in KEPT if name in present]
    results = read_results(out)
    if cfg.resume and (out / "resume.pt").is_file():
        state = saving.read_resume(out / "resume.pt")
        check_resume_matches(json.loads(state["results"]).get("config", {}), cfg, out / "resume.pt")
        return state
    if cfg.resume and results and "config" in results:
        check_resume_matches(results["config"], cfg, out / "results.json")
    elif kept and not cfg.overwrite:
        what = f"results.json of {describe(results)}; " if results else ""
        raise RunDirError(f"--out {out} holds another run's files ({what}{', '.join(kept)}): {WHAT_TO_DO}")
    if present and main_process:  # leftovers of a run that finished nothing, or --overwrite
        for name in present:
            (out / name).unlink()
    if main_process:
        check_writable(out)
    return None


def check_writable(out: Path):
    """Create --out and write a probe file in it, so an unwritable directory fails before the model loads."""
    probe = out / f".write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"--out {out} is not writable ({type(e).__name__}: {e.strerror or e})") from None


def failure_reason(error: BaseException) -> str:
    """One line for results.json's "failure": the exception's type and message, and where it was raised."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"
