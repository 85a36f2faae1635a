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
from study.runs import DONE, read_results

TUNED = "tuned.json"  # the tuning stage's choice, in the study folder


def choose_rates(runs: list, out: Path) -> dict:
    """tuned.json's content from the tuning runs: per task x method, each rate's best validation
    score and the chosen rate (the highest score; a tie goes to the lower rate). A task x method
    with an unfinished rate has no choice yet."""
    chosen, tried, missing = {}, {}, []
    for run in runs:
        results = read_results(run.directory(out))
        cell = tried.setdefault(run.task, {}).setdefault(run.method, {})
        if not results or results.get("status") not in DONE:
            missing.append(run.name)
            cell[f"{run.lr:g}"] = None
            continue
        metric = results["best"]["metric"]
        cell[f"{run.lr:g}"] = {"val": results["best"]["val"][metric], "metric": metric,
                               "best_epoch": results["best"]["epoch"], "test": results["best"]["test"][metric]}
    for task, methods in tried.items():
        for method, by_lr in methods.items():
            if all(by_lr.values()):
                best = max(by_lr, key=lambda lr: (by_lr[lr]["val"], -float(lr)))
                chosen.setdefault(task, {})[method] = float(best)
    p_run = runs[0] if runs else None
    return {"chosen": chosen, "tried": tried, "missing": missing,
            "protocol": {"frac": 1.0, "seed": p_run.seed, "epochs": p_run.epochs} if p_run else {},
            "selected_on": "validation (10% of GLUE train); test scores are listed, never used to choose"}


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
    """-> (rates task -> method -> lr, None) or (None, a message saying what is missing). own: the
    study's own tuned.json (False: another study's, from --rates), which the message's advice follows."""
    if not path.is_file():
        return None, f"{path} does not exist: run the tuning stage first (--stage tune, or --stage all)"
    try:
        chosen = json.loads(path.read_text())["chosen"]
    except (json.JSONDecodeError, KeyError, OSError) as e:
        return None, f"{path} is not a tuned.json written by the tuning stage ({e})"
    absent = [f"{t}/{m}" for t in p.tasks for m in p.methods if m not in chosen.get(t, {})]
    if absent:
        return None, (f"{path} has no tuned rate for {', '.join(absent)}: "
                      + ("finish the tuning stage first" if own else "its study did not tune them (--tasks, --methods)"))
    bad = [f"{t}/{m}" for t in p.tasks for m in p.methods
           if not (isinstance(chosen[t][m], (int, float)) and math.isfinite(chosen[t][m]) and chosen[t][m] > 0)]
    if bad:
        return None, f"{path}: the rate of {', '.join(bad)} is not a positive number"
    return chosen, None


def reuse_tuning_run(run: Run, rates: dict, p: Preset, out: Path) -> bool:
    """The main grid's first-seed run on all the data is the tuning run at the chosen rate: copy its
    finished directory instead of training it again. Returns whether it copied."""
    if run.budget_minutes or run.frac != 1.0 or run.seed != p.seeds[0] or not p.tune:
        return False
    source = Run(run.task, run.method, 1.0, run.seed, run.epochs, lr=rates[run.task][run.method],
                 tuning=True).directory(out)
    results = read_results(source)
    if not results or results.get("status") not in DONE or run.directory(out).exists() \
            or results.get("config", {}).get("epochs") != run.epochs:  # (a directory's name does not say its epochs)
        return False
    shutil.copytree(source, run.directory(out), ignore=shutil.ignore_patterns("resume.pt*"))
    results["copied_from"] = source.relative_to(out).as_posix()
    (run.directory(out) / "results.json").write_text(json.dumps(results, indent=1))
    return True
