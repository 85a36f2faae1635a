"""The runs of a study folder, read and summarized for study/report.py and study/plots.py.

Reads every results.json below the directory (one per run, as train.py writes them) and keeps the
finished ones (status "complete" or "time_budget"). Runs under tune/ are the tuning stage's
(study/sweep.py): they make the learning-rate table, not the grid. Scores are the task's headline
metric (results "best.metric": mrpc F1, cola Matthews, stsb Pearson) x 100 on the test split,
which is GLUE's dev set.
"""
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

DONE = ("complete", "time_budget")
NESTED = "nested deeper than a study's <cell>/ and tune/<cell>/: not counted"
NOT_READ = ("unreadable", "not a results file", "its directory is named", "conflicting", NESTED)  # how an
# ignored run's status begins when it could not be read as, or trusted to be, the run it is filed as
# (read_run, problem, misfiled, flag_duplicates, load)
METHODS = ("full", "bitfit", "adapter", "lora", "head", "prompt", "prefix", "ia3")  # display order; hybrids after
TASKS = ("mrpc", "cola", "stsb")
METRIC_LABEL = {"f1": "F1", "matthews": "Matthews corr.", "pearson": "Pearson r", "spearman": "Spearman rho",
                "accuracy": "accuracy"}
COLORS = {"full": "tab:blue", "bitfit": "tab:orange", "adapter": "tab:green", "lora": "tab:red", "head": "tab:purple",
          "prompt": "tab:brown", "prefix": "tab:pink", "ia3": "tab:olive"}  # hybrids: matplotlib's next colour
MIB = 2 ** 20


def load(root: Path, tuning=False):
    """-> (finished runs, ignored runs); each run is its results dict plus "dir". The grid's runs,
    or with tuning=True the tuning stage's (under tune/). A study holds its runs one level down
    (study/<cell>/, study/tune/<cell>/): a results.json deeper (a backup/ copy) is ignored, and named."""
    runs, ignored = [], []
    base = root / "tune" if tuning else root
    for path in sorted(base.rglob("results.json")):
        if not tuning and path.relative_to(root).parts[0] == "tune":
            continue
        if len(path.relative_to(base).parts) > 2:
            ignored.append({"dir": path.parent.relative_to(root).as_posix(), "status": NESTED})
            continue
        r = read_run(path)
        r["dir"] = path.parent.relative_to(root).as_posix()
        if r.get("status") in DONE:  # a finished run the tables cannot read, or filed under another name
            why = problem(r) or misfiled(r)
            r = {**r, "status": why} if why else r
        (runs if r.get("status") in DONE else ignored).append(r)
    return flag_duplicates(runs, ignored, tuning)


RESULTS_KEYS = ("task", "method", "frac", "seed", "status", "config", "params", "best", "evals", "epochs",
                "time", "environment")  # what the tables read from a finished run's results.json


def read_run(path: Path) -> dict:
    """A results.json as a dict; a file that is not one (unreadable, not JSON, or without the keys
    train.py writes) becomes {"status": "<what is wrong>"}, listed with the ignored runs by name."""
    try:
        r = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        return {"status": f"unreadable ({type(e).__name__})"}
    missing = [k for k in RESULTS_KEYS if k not in r] if isinstance(r, dict) else list(RESULTS_KEYS)
    if missing:
        return {"status": f"not a results file (no {', '.join(missing[:3])})"}
    return r


ENVIRONMENT_KEYS = ("device_name", "device", "threads", "world_size", "dtype", "torch")  # report.header's
CONFIG_KEYS = ("task", "method", "frac", "seed", "epochs", "lr", "batch_size", "max_length", "warmup",
               "weight_decay", "amp")  # what report.header and claims.protocol read from "config"


def value(r: dict, path: str):
    """r's value at a dotted path ("best.test.f1", "evals.0.val.f1"); LookupError naming the path."""
    x = r
    for key in path.split("."):
        try:
            x = x[int(key)] if isinstance(x, list) else x[key]
        except (KeyError, IndexError, TypeError, ValueError):
            raise LookupError(f"no {path}") from None
    return x


def problem(r: dict):
    """Why a finished run's results.json cannot be tabled, or None: every value study.report, claims.py and
    plots.py read must be there, and be a finite number where they compute (a null metric, no evaluations,
    no epochs, ...). The reason starts with "unreadable", and the run is listed with the ignored ones."""
    try:
        m = value(r, "best.metric")
        for name in ("evals", "epochs"):
            if not isinstance(r[name], list) or not r[name]:
                return f"unreadable: no {name[:-1]} recorded"
        numbers = ["frac", "seed", "best.epoch", f"best.val.{m}", f"best.test.{m}", "time.train_seconds",
                   "time.eval_seconds", "time.peak_memory_bytes", "params.trainable", "params.total"]
        numbers += [f"evals.{i}.{k}" for i in range(len(r["evals"])) for k in ("train_seconds", f"val.{m}", f"test.{m}")]
        numbers += [f"epochs.{i}.{k}" for i in range(len(r["epochs"]))
                    for k in ("epoch", "tokens_per_second", f"val.{m}", f"test.{m}")]
        numbers += [f"baseline.test.{m}"] if "baseline" in r else []
        bad = next((p for p in numbers if isinstance(value(r, p), bool) or not isinstance(value(r, p), (int, float))
                    or not math.isfinite(value(r, p))), None)
        if bad:
            return f"unreadable: {bad} is {value(r, bad)!r}, not a number"
        for path in [f"environment.{k}" for k in ENVIRONMENT_KEYS] + [f"config.{k}" for k in CONFIG_KEYS] + \
                ["model", "pooling"] + [f"epochs.{i}.step_seconds.median" for i in range(len(r["epochs"]))]:
            value(r, path)
    except LookupError as e:
        return f"unreadable: {e.args[0]}"
    return None


CELL_DIR = re.compile(r"^(?P<task>[a-z]+)-(?P<method>[a-z0-9+]+)-(?:f(?P<frac>[0-9.e-]+)|budget(?P<budget>[0-9.e-]+))"
                      r"-s(?P<seed>\d+)(?:-lr(?P<lr>[0-9.e+-]+))?$")  # study/presets.py Run.name


def misfiled(r: dict):
    """A results.json whose directory is named for another configuration (study/presets.py Run.name:
    task, method, fraction or budget, seed, and a tuning run's rate): copied or moved by hand, it would
    count as a run it is not. -> the reason, or None (a directory named otherwise is not judged)."""
    m = CELL_DIR.match(Path(r["dir"]).name)
    if not m:
        return None
    budget = r["config"].get("time_budget") or 0
    found = {"task": r["task"], "method": r["method"], "seed": str(r["seed"]),
             "frac": f"{r['frac']:g}" if m["frac"] else None, "budget": f"{budget:g}" if m["budget"] else None,
             "lr": f"{r['config']['lr']:g}" if m["lr"] else None}
    differ = [f"{k} {found[k]} (the name says {m[k]})" for k in found if found[k] != m[k]]
    if m["frac"] and budget:
        differ.append(f"time budget {budget:g} min (the name says none)")
    return f"its directory is named for another run: {', '.join(differ)}" if differ else None


def study_masks(out: Path):
    """The dropout masks a study folder's new and re-made cells must be told to draw so that they draw
    theirs as its runs did: "torch" if a run recorded torch or recorded none (every run from before
    the option); otherwise None, and train.py's default (auto) decides, as it did for those runs."""
    modes = set()
    for path in [*out.glob("*/results.json"), *out.glob("*/*/results.json")]:
        config = (read_results(path.parent) or {}).get("config")
        if isinstance(config, dict):
            modes.add(config.get("dropout_masks", "torch"))  # "auto" (never recorded by train.py): no say
    return "torch" if "torch" in modes else None


def read_results(run_dir: Path):
    """results.json as a dict; None when there is none; {"status": "unreadable"} when it is corrupt or not
    a JSON object with a status."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return {"status": "unreadable"}
    return results if isinstance(results, dict) and isinstance(results.get("status"), str) else {"status": "unreadable"}


def flag_duplicates(runs, ignored, tuning=False):
    """Two finished runs of one (task, method, frac, seed, budget or not; and rate, among tuning runs)
    in one study would both be counted in a cell as if they were two seeds. The one in the directory
    named for the cell (study/presets.py Run.name; misfiled has checked that name) is kept, else the
    first by directory; another with the same numbers is ignored as its duplicate, one with other numbers
    as a conflicting copy. Where none is in the cell's own directory and their numbers differ, nothing
    says which is real: all are left out, as conflicting. -> (runs, ignored)."""
    cells = defaultdict(list)
    for r in runs:
        cells[(r["task"], r["method"], r["frac"], r["seed"], r["config"].get("time_budget", 0) > 0,
               r["config"].get("lr") if tuning else None)].append(r)
    kept = []
    for rs in cells.values():
        rs.sort(key=lambda r: (not own_cell(r), r["dir"]))
        first, others = rs[0], rs[1:]
        differ = [r for r in others if numbers(r) != numbers(first)]
        if differ and not own_cell(first):
            names = ", ".join(r["dir"] for r in rs)
            ignored += [{**r, "status": f"conflicting: {names} ran one configuration with different numbers, and "
                                        "none sits in the directory named for it"} for r in rs]
            continue
        kept.append(first)
        for r in others:
            conflicting = any(r is d for d in differ)
            ignored.append({**r, "status": f"conflicting copy of {first['dir']}: its numbers differ" if conflicting
                            else f"duplicate of {first['dir']}"})
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept, key=lambda r: order[id(r)]), ignored


def own_cell(r) -> bool:
    """Whether a run sits in the directory named for its configuration (misfiled has checked the name)."""
    return CELL_DIR.match(Path(r["dir"]).name) is not None


def numbers(r) -> str:
    """What the tables read from a run: equal for a copy of it, different for another run."""
    return json.dumps({k: r.get(k) for k in ("best", "evals", "epochs", "params", "time", "baseline")},
                      sort_keys=True)


def is_budget(r) -> bool:
    return r["config"].get("time_budget", 0) > 0


def summarize(r) -> dict:
    """The numbers the tables need from one run; scores x 100."""
    m = r["best"]["metric"]
    best_val = max(e["val"][m] for e in r["evals"])
    # time to 95% of the run's own best validation score; undefined when that best is not positive
    t95 = next((e["train_seconds"] for e in r["evals"] if e["val"][m] >= 0.95 * best_val), None) \
        if best_val > 0 else None
    steps = [e["step_seconds"]["median"] for e in r["epochs"] if e["step_seconds"]["median"] is not None]
    return {"best": 100 * r["best"]["test"][m], "last": 100 * r["epochs"][-1]["test"][m],
            "best_epoch": r["best"]["epoch"], "epochs": len(r["epochs"]), "train_s": r["time"]["train_seconds"],
            "t95": t95, "peak_mib": r["time"]["peak_memory_bytes"] / MIB,
            "trainable": r["params"]["trainable"], "pct": 100 * r["params"]["trainable"] / r["params"]["total"],
            "step_ms": 1000 * statistics.median(steps) if steps else None,
            "tok_s": statistics.mean(e["tokens_per_second"] for e in r["epochs"])}


def baseline(rs) -> float:
    """Mean test score x 100 of the runs' constant prediction (majority class, or mean score); None
    for runs made before results.json recorded it."""
    scores = [100 * r["baseline"]["test"][r["best"]["metric"]] for r in rs if "baseline" in r]
    return statistics.mean(scores) if scores else None


def mean_std(xs):
    """(mean, sample std, n) of the values that are not None; std None for fewer than 2."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, 0
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def fmt(xs, digits=2, spread=True) -> str:
    """"mean ± std" (or the mean alone: one value, or spread=False); "–" when there is none."""
    m, s, n = mean_std(xs)
    if m is None:
        return "–"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None and spread else "")


def rank(x, order) -> tuple:
    """Sort key: known names in display order, then the others alphabetically."""
    return (order.index(x) if x in order else len(order), x)


def ordered(names, order) -> list:
    return sorted(names, key=lambda x: rank(x, order))


def group(runs, key):
    cells = defaultdict(list)
    for r in runs:
        cells[key(r)].append(r)
    return cells


def values(rs, field):
    return [summarize(r)[field] for r in rs]


def task_method_key(kv):
    (task, method), _ = kv
    return rank(task, TASKS), rank(method, METHODS)


def table(header, rows) -> list:
    """A Markdown table's lines, and a blank line after it."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def largest_fraction(fixed) -> dict:
    """(task, method) -> the runs at that cell's largest fraction (1.0 in a full grid)."""
    out = {}
    for key, rs in group(fixed, lambda r: (r["task"], r["method"])).items():
        top = max(r["frac"] for r in rs)
        out[key] = [r for r in rs if r["frac"] == top]
    return out
