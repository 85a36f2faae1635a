"""A run directory (--out) belongs to one run and one process: claim it before the model loads (a
lock, then the files), check that a resumed state is the same run, and record a failure in
results.json instead of leaving it "running".

The lock is `--out/.lock`, created atomically and holding the owner's pid and host; train.py
releases it on every exit. A second process that claims the directory is refused, naming the holder;
the lock of a process that no longer exists (killed with SIGKILL, a crashed machine) is taken over
with a note. study/sweep.py reads the same lock to leave a cell that another sweep is running to it.

What a run leaves in --out is RUN_FILES. Reusing a directory that holds another run's files is
refused unless --resume continues that run (its configuration must match, run_fields) or --overwrite
deletes the files first; study/sweep.py's train.log is not a run file (the sweep appends to it
before train.py starts).
"""
import errno
import json
import os
import shutil
import socket
import traceback
from pathlib import Path

import saving
from config import NOT_RUN_FIELDS
from record import portable_record

LOCK = ".lock"
# disk space held back for the last results.json when the disk fills (spare_space)
RESERVE = ".reserve"
RESERVE_BYTES = 4 << 20  # a results.json is at most a few hundred KiB (test predictions included)
RUN_FILES = ("results.json", "evals.jsonl", "steps.jsonl", "best.safetensors", "resume.pt",
             "audit.txt", "results.json.tmp", "resume.pt.tmp", "tensorboard", RESERVE)
# what a run has to show once it finished an epoch (or was interrupted): a directory with only
# audit.txt / evals.jsonl holds nothing worth protecting
KEPT = ("results.json", "best.safetensors", "resume.pt")
WHAT_TO_DO = "pass --resume to continue it, choose another --out, or pass --overwrite to delete " \
    "its files first"


class RunDirError(ValueError):
    """--out cannot be used for this run; the message says why and what to do."""


class Locked(RunDirError):
    """Another live process holds the directory."""


def this_process() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def holder(out: Path):
    """'pid 1234 on host h' of the live process that holds `out`'s lock, or None (no lock, or the
    lock of a process on this host that no longer exists)."""
    try:
        pid, host = (out / LOCK).read_text().split()
        pid = int(pid)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"an unreadable {out / LOCK}"
    if host == socket.gethostname() and pid != os.getpid() and not alive(pid):
        return None
    return f"pid {pid} on host {host}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def lock(out: Path):
    """Take `out`'s lock for this process, or raise Locked naming the holder. A stale lock (its
    process is gone) is replaced, with a note."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--out {out} is not writable "
                          f"({type(e).__name__}: {e.strerror or e})") from None
    path = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            # already ours (a second claim in one process)
            if path.read_text().strip() == this_process():
                return
            owner = holder(out)
            if owner is not None:
                raise Locked(f"--out {out} is in use by another run ({owner}, {path}): wait for "
                             f"it, or choose another --out; delete {path} only if that process "
                             f"is gone") from None
            print(f"note: {path} was left by a process that no longer exists; taking it over")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(this_process() + "\n")
        return
    raise Locked(f"--out {out}: another process took {path} at the same moment; try again")


def release(out: Path):
    """Give back the disk space set aside (spare_space) and drop `out`'s lock if this process holds
    it."""
    path = Path(out) / LOCK
    (Path(out) / RESERVE).unlink(missing_ok=True)
    try:
        if path.read_text().strip() == this_process():
            path.unlink()
    except OSError:
        pass


def finished(results) -> bool:
    return bool(results) and results.get("status") in ("complete", "time_budget")


def describe(results: dict) -> str:
    """'mrpc bitfit frac 0.3 seed 0, status complete' from a results.json."""
    c = results.get("config", results)
    return (f"{c.get('task')} {c.get('method')} frac {c.get('frac')} seed {c.get('seed')}, "
            f"status {results.get('status', '?')}")


def run_fields(record: dict) -> dict:
    """The entries of a config record (cfg.record()) that define a run: all but
    config.NOT_RUN_FIELDS. A resume.pt saved under other values would continue another run."""
    return {k: v for k, v in record.items() if k not in NOT_RUN_FIELDS}


def differences(saved: dict, cfg) -> list:
    """'frac 0.3 (asked 0.5)' for every run field (run_fields) where a saved config (results.json's
    "config", cfg.record()) differs from cfg's."""
    # paths as recorded
    asked, saved = run_fields(portable_record(cfg.record())), portable_record(saved)
    return [f"{k} {saved[k]!r} (asked {v!r})" for k, v in asked.items()
            if k in saved and saved[k] != v]


def check_resume_matches(saved_config: dict, cfg, source: Path):
    """Refuse to continue a run whose configuration (from `source`) differs in a run field."""
    diff = differences(saved_config, cfg)
    if diff:
        raise RunDirError(f"--resume: {source} belongs to another run: {'; '.join(diff)}. "
                          f"Resume with its flags, or choose another --out")


def read_results(out: Path):
    path = out / "results.json"
    try:
        results = json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return {"status": "unreadable"}
    return results if results is None or isinstance(results, dict) else {"status": "unreadable"}


def claim_out_dir(cfg, main_process: bool = True):
    """Make --out this run's directory before anything loads; -> the verified resume state, or None.

    The main process takes the directory's lock first (lock), and keeps it until train.py releases
    it. --resume of a finished run raises Finished and changes nothing. --resume with a resume.pt:
    read and verify it (saving.read_resume), and check it is this run. --resume without one: the
    files there (a run stopped in its first epoch) must be this run's. Otherwise other run files are
    refused, or deleted under --overwrite. Only the main process deletes; every process reads the
    resume state. The directory must be writable, with RESERVE_BYTES to spare (spare_space)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory")
    if main_process:
        lock(out)
    try:
        return claim_files(cfg, out, main_process)
    except BaseException:
        if main_process:
            release(out)
        raise


class Finished(RunDirError):
    """--resume of a run that already finished: there is nothing to do, and nothing is touched."""


def claim_files(cfg, out: Path, main_process: bool):
    present = [name for name in RUN_FILES if (out / name).exists()]
    kept = [name for name in KEPT if name in present]
    results = read_results(out)
    if cfg.resume and finished(results):
        check_resume_matches(results.get("config", {}), cfg, out / "results.json")
        raise Finished(f"--resume: {out} is finished ({describe(results)}); nothing changed. Pass "
                       f"--overwrite to train it again, or choose another --out")
    if cfg.resume and (out / "resume.pt").is_file():
        state = saving.read_resume(out / "resume.pt")
        check_resume_matches(json.loads(state["results"]).get("config", {}), cfg, out / "resume.pt")
        if main_process:
            spare_space(out)
        return state
    if cfg.resume and results and "config" in results:
        check_resume_matches(results["config"], cfg, out / "results.json")
        check_nothing_lost(out, results)
    elif kept and not cfg.overwrite:
        what = f"results.json of {describe(results)}; " if results else ""
        raise RunDirError(f"--out {out} holds another run's files ({what}{', '.join(kept)}): "
                          f"{WHAT_TO_DO}")
    if present and main_process:  # leftovers of a run that finished nothing, or --overwrite
        for name in present:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    if main_process:
        check_writable(out)
        spare_space(out)
    return None


def check_nothing_lost(out: Path, results: dict):
    """--resume without a resume.pt starts the run again: refused while results.json holds finished
    epochs of a run that did not fail (its resume.pt was deleted by hand: those epochs could not be
    continued, and starting again would replace them). A failed run starts again, as --resume says."""
    epochs = results.get("epochs")
    if results.get("status") != "failed" and isinstance(epochs, list) and epochs:
        raise RunDirError(f"--resume: {out / 'resume.pt'} is missing, so the {len(epochs)} finished "
                          f"epoch(s) in {out / 'results.json'} cannot be continued; pass --overwrite "
                          f"to train again from the start (deleting them), or choose another --out")


def spare_space(out: Path):
    """Hold RESERVE_BYTES of disk in --out/.reserve, written out (not sparse), so that a run that
    fills the disk can still write a results.json saying so (save_even_when_full)."""
    try:
        (out / RESERVE).write_bytes(bytes(RESERVE_BYTES))
    except OSError as e:
        (out / RESERVE).unlink(missing_ok=True)
        raise RunDirError(f"--out {out}: cannot set aside {RESERVE_BYTES >> 20} MiB for the "
                          f"results ({type(e).__name__}: {e.strerror or e}); free some space on "
                          f"its disk") from None


def save_even_when_full(write, out: Path):
    """Call write(); if the disk is full (ENOSPC), give back the reserve and call it once more."""
    try:
        write()
    except OSError as e:
        if e.errno != errno.ENOSPC or not (out / RESERVE).exists():
            raise
        (out / RESERVE).unlink()
        write()


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC, from Python's I/O or as safetensors' Rust error text."""
    return getattr(error, "errno", None) == errno.ENOSPC or "StorageFull" in str(error) \
        or "No space left on device" in str(error)


def disk_full(out: Path, error: BaseException) -> OSError:
    """The one line for a run stopped by a full disk: which disk, which directory, what to do."""
    try:
        free = f", {os.statvfs(out).f_bavail * os.statvfs(out).f_frsize >> 20} MiB free now"
    except OSError:
        free = ""
    return OSError(errno.ENOSPC, f"no space left on the disk holding {out.resolve()} (writing "
                                 f"{getattr(error, 'filename', None) or 'a run file'}{free}); "
                                 f"results.json says "
                                 f"'failed' and keeps every finished epoch. Free space, then rerun "
                                 f"the same command with --resume")


def check_writable(out: Path):
    """Create --out and write a probe file in it, so an unwritable directory fails before the model
    loads."""
    probe = out / f".write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"--out {out} is not writable "
                          f"({type(e).__name__}: {e.strerror or e})") from None


def failure_reason(error: BaseException) -> str:
    """One line for results.json's "failure": the exception's type and message, and where it was
    raised."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"
