"""The tuning stage's choice of learning rates (study/sweep.py runs the stage; its docstring says how).

tuned.json, in the study folder, holds per task x method every rate tried with its best validation
score and the rate chosen; the main grid reads it, and the main grid's first-seed run on all the data
is the tuning run at the chosen rate, copied.
"""
import json
import math
import shutil
from pathlib import Path

from study.presets import Preset, Run
from study.runs import DONE, METHODS, TASKS, read_results

TUNED = "tuned.json"  # the tuning stage's choice, in the study folder


def choose_rates(runs: list, out: Path, foreign=None) -> dict:
    """tuned.json's content from the tuning runs: per task x method, each rate's best validation
    score and the chosen rate (the highest score; a tie goes to the lower rate). A task x method
    with an unfinished rate has no choice yet; so has one whose results.json is another run's
    (foreign(run, results): what differs, study/sweep.py's check) or has no finite best score."""
    chosen, tried, missing = {}, {}, []
    for run in runs:
        results = read_results(run.directory(out))
        cell = tried.setdefault(run.task, {}).setdefault(run.method, {})
        score = best_scores(results) if results and results.get("status") in DONE else None
        if score is None or (foreign and foreign(run, results)):
            missing.append(run.name)
            cell[f"{run.lr:g}"] = None
            continue
        cell[f"{run.lr:g}"] = score
    for task, methods in tried.items():
        for method, by_lr in methods.items():
            if all(by_lr.values()):
                best = max(by_lr, key=lambda lr: (by_lr[lr]["val"], -float(lr)))
                chosen.setdefault(task, {})[method] = float(best)
    p_run = runs[0] if runs else None
    return {"chosen": chosen, "tried": tried, "missing": missing,
            "protocol": {"frac": 1.0, "seed": p_run.seed, "epochs": p_run.epochs} if p_run else {},
            "selected_on": "validation (10% of GLUE train); test scores are listed, never used to choose"}


def best_scores(results: dict):
    """{"val", "metric", "best_epoch", "test"} of a finished run's best epoch; None if it lacks them or the
    validation score is not a finite number (it could not be compared)."""
    try:
        best = results["best"]
        metric = best["metric"]
        score = {"val": best["val"][metric], "metric": metric, "best_epoch": best["epoch"], "test": best["test"][metric]}
    except (KeyError, TypeError):
        return None
    return score if is_number(score["val"]) else None


def is_number(x) -> bool:
    """A finite int or float; JSON's true and false are not numbers (Python's bool is an int)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def tuned_problem(raw, path: Path):
    """What makes a tuned.json's content unusable, one line naming the file and the entry; None if nothing.
    "chosen" maps known tasks to known methods (or '+' hybrids of them) to finite positive rates."""
    if not isinstance(raw, dict) or not isinstance(raw.get("chosen"), dict):
        return f"{path}: not a tuned.json written by the tuning stage (no \"chosen\" object of task: method: rate)"
    for task, methods in raw["chosen"].items():
        if task not in TASKS:
            return f"{path}: chosen.{task}: not a task of ours ({', '.join(TASKS)})"
        if not isinstance(methods, dict):
            return f"{path}: chosen.{task} is {json.dumps(methods)}, not an object of method: rate"
        for method, rate in methods.items():
            if any(part not in METHODS for part in method.split("+")):
                return f"{path}: chosen.{task}.{method}: not a method of ours ({', '.join(METHODS)}, or a hybrid)"
            if not (is_number(rate) and rate > 0):
                return f"{path}: chosen.{task}.{method} = {json.dumps(rate)}: a rate is a finite positive number"
    return None


def keep_other_choices(path: Path, tuned: dict) -> dict:
    """tuned.json's new content, keeping the choices (and rates tried) of task x method pairs that this
    tuning stage does not tune: another preset run into the same study (families beside cpu) tunes its
    own methods and must not erase the rates the grid already ran at. A pair tuned again is replaced."""
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, OSError):
        old = {}  # unreadable: written anew from the tuning runs
    old = old if isinstance(old, dict) else {}
    ours = tuned["tried"]  # every pair this stage tunes, finished or not
    merged = {}
    for key in ("chosen", "tried"):
        merged[key] = {t: {m: v for m, v in ms.items() if m not in ours.get(t, {})}
                       for t, ms in old.get(key, {}).items() if isinstance(ms, dict)}
        for task, methods in tuned[key].items():
            merged[key].setdefault(task, {}).update(methods)
    return {**tuned, "chosen": {t: ms for t, ms in merged["chosen"].items() if ms}, "tried": merged["tried"]}


def read_tuned(path: Path, p: Preset, own: bool = True):
    """-> (rates task -> method -> lr, None) or (None, one line naming the file and what is wrong or
    missing). own: the study's own tuned.json (False: another study's, from --rates), which the message's
    advice follows."""
    if not path.is_file():
        return None, f"{path} does not exist: run the tuning stage first (--stage tune, or --stage all)"
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return None, f"{path}: not a tuned.json written by the tuning stage ({type(e).__name__}: {e})"
    problem = tuned_problem(raw, path)
    if problem:
        return None, problem
    chosen = raw["chosen"]
    absent = [f"{t}/{m}" for t in p.tasks for m in p.methods if m not in chosen.get(t, {})]
    if absent:
        return None, (f"{path} has no tuned rate for {', '.join(absent)}: "
                      + ("finish the tuning stage first" if own else "its study did not tune them (--tasks, --methods)"))
    return chosen, None


def reuse_tuning_run(run: Run, rates: dict, p: Preset, out: Path, foreign=None) -> bool:
    """The main grid's first-seed run on all the data is the tuning run at the chosen rate: copy its
    finished directory instead of training it again, if its results.json records this run (foreign(results):
    what differs, study/sweep.py's check; a directory's name does not say its epochs). Returns whether
    it copied."""
    if run.budget_minutes or run.frac != 1.0 or run.seed != p.seeds[0] or not p.tune:
        return False
    source = Run(run.task, run.method, 1.0, run.seed, run.epochs, lr=rates[run.task][run.method],
                 tuning=True).directory(out)
    results = read_results(source)
    if not results or results.get("status") not in DONE or run.directory(out).exists() \
            or results.get("config", {}).get("epochs") != run.epochs or (foreign and foreign(results)):
        return False
    shutil.copytree(source, run.directory(out), ignore=shutil.ignore_patterns("resume.pt*"))
    results["copied_from"] = source.relative_to(out).as_posix()
    (run.directory(out) / "results.json").write_text(json.dumps(results, indent=1))
    return True
