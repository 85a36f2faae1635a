"""Tables and plots from a directory of runs: `python report.py results/cpu-minilm`.

Reads every results.json below the directory (one per run, as train.py writes them), keeps the
finished ones (status "complete" or "time_budget"), and writes RESULTS.md and PNG plots next to
them. Every number comes from those files. Scores are the task's headline metric (results
"best.metric": mrpc F1, cola Matthews, stsb Pearson) x 100 on the test split, which is GLUE's dev
set; "@best" is the epoch with the best validation score, "@last" the final epoch. Spread over
seeds is the sample standard deviation (n - 1). Runs under tune/ are the tuning stage's (sweep.py):
they make the learning-rate table, not the grid's. Each method's difference to full fine-tuning
comes with its intervals (claims.py). A hand-written ANALYSIS.md in the directory is included verbatim.
"""
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

import claims

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DONE = ("complete", "time_budget")
METHODS = ("full", "bitfit", "adapter", "lora", "head", "prompt", "prefix", "ia3")  # display order; hybrids after
TASKS = ("mrpc", "cola", "stsb")
METRIC_LABEL = {"f1": "F1", "matthews": "Matthews corr.", "pearson": "Pearson r", "spearman": "Spearman rho",
                "accuracy": "accuracy"}
COLORS = {"full": "tab:blue", "bitfit": "tab:orange", "adapter": "tab:green", "lora": "tab:red", "head": "tab:purple",
          "prompt": "tab:brown", "prefix": "tab:pink", "ia3": "tab:olive"}  # hybrids: matplotlib's next colour
MIB = 2 ** 20


def load(root: Path, tuning=False):
    """-> (finished runs, ignored runs); each run is its results dict plus "dir". The grid's runs,
    or with tuning=True the tuning stage's (under tune/)."""
    runs, ignored = [], []
    for path in sorted((root / "tune" if tuning else root).rglob("results.json")):
        if not tuning and path.relative_to(root).parts[0] == "tune":
            continue
        r = read_run(path)
        r["dir"] = path.parent.relative_to(root).as_posix()
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


def flag_duplicates(runs, ignored, tuning=False):
    """Two finished runs of one (task, method, frac, seed, budget or not; and rate, among tuning runs)
    in one study would both be counted in a cell as if they were two seeds: the first (by directory)
    is kept, every other one is moved to the ignored runs, marked as a duplicate of it. -> (runs, ignored)."""
    first, kept = {}, []
    for r in runs:
        key = (r["task"], r["method"], r["frac"], r["seed"], r["config"].get("time_budget", 0) > 0,
               r["config"].get("lr") if tuning else None)
        if key in first:
            ignored.append({**r, "status": f"duplicate of {first[key]['dir']}"})
        else:
            first[key] = r
            kept.append(r)
    return kept, ignored


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


def table(header, rows) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def listing(xs, axis=False) -> str:
    """The distinct values; more than one of a setting that should be fixed is flagged (an axis is not)."""
    xs = sorted({x if isinstance(x, str) else f"{x:g}" if isinstance(x, float) else str(x) for x in xs},
                key=lambda x: (len(x), x) if x.isdigit() else (0, x))
    return ", ".join(xs) + (" (mixed!)" if len(xs) > 1 and not axis else "")


def header(runs, ignored) -> list:
    def env(key):
        return listing(r["environment"][key] for r in runs)

    memory = {"cpu": "CPU: peak resident set size of the process",
              "cuda": "CUDA: max memory allocated by tensors"}
    devices = sorted({r["environment"]["device"].split(":")[0] for r in runs})
    lines = ["# Results", "", f"Made by `report.py` from {len(runs)} finished runs; do not edit by hand. Scores are "
             "the headline metric x 100 on the test split (GLUE's dev set), at the epoch with the best validation "
             "score (@best; validation is held out of GLUE's train file) or at the last epoch (@last); "
             "± is the sample standard deviation over seeds.", "",
             f"- model: {listing(r['model'] for r in runs)} (pooling {listing(r['pooling'] for r in runs)})",
             f"- hardware: {env('device_name')}, device {env('device')}, {env('threads')} threads, "
             f"world size {env('world_size')}",
             f"- precision: {env('dtype')}; torch {env('torch')}",
             f"- peak memory: {'; '.join(memory.get(d, d) for d in devices)}"]
    fixed = [r["config"] for r in runs if not is_budget(r)]
    if fixed:
        def cfg(key, method=None, axis=False):  # the values of one config field, optionally of one method
            return listing((c[key] for c in fixed if method in (None, c["method"])), axis)

        methods = ordered({c["method"] for c in fixed}, METHODS)
        lines += [f"- protocol: {cfg('epochs')} epochs, batch size {cfg('batch_size')}, max length "
                  f"{cfg('max_length')} tokens, warm-up {cfg('warmup')} of the steps, weight decay "
                  f"{cfg('weight_decay')}, AMP setting {cfg('amp')}",
                  "- learning rates: " + ", ".join(f"{m} {cfg('lr', m)}" for m in methods),
                  f"- fractions {cfg('frac', axis=True)}; seeds {cfg('seed', axis=True)}"]
        if "adapter" in methods:
            lines.append(f"- adapters: size {cfg('adapter_size', 'adapter')}, "
                         f"{cfg('adapter_placement', 'adapter')} placement")
        if "lora" in methods:
            lines.append(f"- LoRA: r {cfg('lora_r', 'lora')}, alpha {cfg('lora_alpha', 'lora')}, "
                         f"targets {cfg('lora_targets', 'lora')}")
        if "prompt" in methods:
            lines.append(f"- prompt tuning: {cfg('prompt_length', 'prompt')} virtual tokens")
        if "prefix" in methods:
            lines.append(f"- prefix tuning: {cfg('prefix_length', 'prefix')} positions, reparameterisation MLP "
                         f"width {cfg('prefix_hidden', 'prefix')}")
    budget = [r["config"] for r in runs if is_budget(r)]
    if budget:
        lines.append(f"- time-budget runs: {listing(c['time_budget'] for c in budget)} minutes of training "
                     f"(evaluation excluded), epoch cap {listing(c['epochs'] for c in budget)}")
    audits = [r.get("freeze_audit") for r in runs]
    lines.append(f"- frozen-weights audit: {audits.count('passed')} of {len(runs)} runs passed")
    if ignored:
        names = ", ".join(f"{r['dir']} ({r.get('status')})" for r in ignored)
        lines.append(f"- ignored {len(ignored)} runs (unfinished, failed, duplicates, not results files): {names}")
    return lines + [""]


def baseline(rs) -> float:
    """Mean test score x 100 of the runs' constant prediction (majority class, or mean score); None
    for runs made before results.json recorded it."""
    scores = [100 * r["baseline"]["test"][r["best"]["metric"]] for r in rs if "baseline" in r]
    return statistics.mean(scores) if scores else None


def main_tables(fixed) -> list:
    lines = ["## Score by task, method and data fraction", "",
             "Test score x 100, mean ± std over seeds; the other columns are means. Train time excludes "
             "evaluation; t95 = training seconds until validation first reached 95% of the run's best. "
             "The baseline is the test score of a constant prediction: the training data's majority class "
             "(MRPC, CoLA), or its mean score for STS-B, whose Pearson r is 0 by definition (metrics.py). "
             "† marks a cell whose mean does not beat it: the model learned nothing visible.", ""]
    for task, task_runs in sorted(group(fixed, lambda r: r["task"]).items(), key=lambda kv: rank(kv[0], TASKS)):
        m = task_runs[0]["best"]["metric"]
        rows = []
        cells = group(task_runs, lambda r: (r["method"], r["frac"]))
        for method, frac in sorted(cells, key=lambda k: (rank(k[0], METHODS), k[1])):
            rs = cells[(method, frac)]
            s = summarize(rs[0])
            cost = [fmt(values(rs, k), d, spread=False) for k, d in (("train_s", 1), ("t95", 1), ("peak_mib", 0))]
            floor = baseline(rs)
            mark = " †" if floor is not None and mean_std(values(rs, "best"))[0] <= floor + 1e-9 else ""
            rows.append([method, f"{frac:g}", len(rs), fmt(values(rs, "best")) + mark, fmt(values(rs, "last")),
                         "–" if floor is None else f"{floor:.2f}",
                         fmt(values(rs, "best_epoch"), 1, spread=False), f"{s['trainable']:,}", f"{s['pct']:.3f}",
                         *cost])
        lines += [f"### {task} ({METRIC_LABEL.get(m, m)})", ""]
        lines += table(["method", "frac", "seeds", f"test {m} @best", f"test {m} @last", "baseline", "best epoch",
                        "trainable", "trainable %", "train time (s)", "t95 (s)", "peak memory (MiB)"], rows)
    return lines


def comparison(fixed) -> list:
    lines = ["## Each method against full fine-tuning", "",
             "Paired by seed (one seed: the same training subset and data order for both methods): the mean "
             "over seeds of method − full, test score @best x 100; its 95% t interval over seeds; the 95% "
             "paired-bootstrap interval over test examples (1,000 resamples of GLUE dev, both methods scored "
             "on the same draw, averaged over the seeds); the verdict is *better* or *worse* only when both "
             "intervals leave out zero (claims.py).", ""]
    diffs = claims.cell_differences(fixed)
    if not diffs:
        return lines + ["No full fine-tuning runs to compare with.", ""]
    rows = [[d["task"], f"{d['frac']:g}", d["method"], len(d["seeds"]), f"{d['mean']:+.2f}",
             claims.interval(d["t_low"], d["t_high"]), claims.interval(*(d["boot"] or (None, None))), d["verdict"]]
            for d in sorted(diffs, key=lambda d: (rank(d["task"], TASKS), rank(d["method"], METHODS), d["frac"]))]
    return lines + table(["task", "frac", "method", "seeds", "− full", "95% t (seeds)", "95% bootstrap (test)",
                          "verdict"], rows)


def tuning_table(root: Path) -> list:
    """The tuning stage: every rate tried, its best validation score, and the rate tuned.json chose."""
    runs, _ = load(root, tuning=True)
    path = root / "tuned.json"
    if not runs and not path.is_file():
        return []
    chosen = json.loads(path.read_text())["chosen"] if path.is_file() else {}
    lines = ["## Learning rates (tuning stage)", "",
             "Each task x method trained at every rate on all the training data with the first seed; the "
             "validation score x 100 (10% of GLUE train, never the test set) at the best epoch, that epoch in "
             "brackets; **bold**: the rate chosen for the grid (tuned.json).", ""]
    rows = []
    for (task, method), rs in sorted(group(runs, lambda r: (r["task"], r["method"])).items(), key=task_method_key):
        pick = chosen.get(task, {}).get(method)
        tried = []
        for r in sorted(rs, key=lambda r: r["config"]["lr"]):
            text = f"{r['config']['lr']:g}: {100 * r['best']['val'][r['best']['metric']]:.2f} ({r['best']['epoch']})"
            tried.append(f"**{text}**" if pick is not None and math.isclose(r["config"]["lr"], pick) else text)
        rows.append([task, method, "; ".join(tried), "–" if pick is None else f"{pick:g}"])
    return lines + table(["task", "method", "rate: validation @best (epoch)", "chosen"], rows)


def stability(fixed) -> list:
    lines = ["## Stability across seeds", "",
             "Standard deviation over seeds of the test score @best (x 100), averaged over the fractions "
             "(cells with one seed have none).", ""]
    tasks = ordered({r["task"] for r in fixed}, TASKS)
    rows = []
    for method, rs in sorted(group(fixed, lambda r: r["method"]).items(), key=lambda kv: rank(kv[0], METHODS)):
        stds = {k: mean_std(values(c, "best"))[1] for k, c in group(rs, lambda r: (r["task"], r["frac"])).items()}
        per_task = [fmt([s for (t, _), s in stds.items() if t == task], spread=False) for task in tasks]
        rows.append([method] + per_task + [fmt(list(stds.values()), spread=False)])
    return lines + table(["method"] + [f"{t} std" for t in tasks] + ["all cells"], rows)


def efficiency(fixed) -> list:
    lines = ["## Cost per method", "", "Runs on the largest fraction of each task; step time is the median over "
             "timed steps (warm-up excluded), mean over seeds.", ""]
    rows = []
    for (task, method), rs in sorted(largest_fraction(fixed).items(), key=task_method_key):
        rows.append([task, method, f"{rs[0]['frac']:g}", len(rs), fmt(values(rs, "pct"), 3, False),
                     *[fmt(values(rs, k), 0, spread=False) for k in ("step_ms", "tok_s", "peak_mib")]])
    return lines + table(["task", "method", "frac", "seeds", "trainable %", "step time (ms)", "tokens/s",
                          "peak memory (MiB)"], rows)


def budget_table(budget) -> list:
    if not budget:
        return []
    lines = ["## Fixed training-time budget", "", "All the training data; training stops when the budget "
             "is spent (evaluation excluded). Test score x 100.", ""]
    rows = []
    for (task, method), rs in sorted(group(budget, lambda r: (r["task"], r["method"])).items(), key=task_method_key):
        m = rs[0]["best"]["metric"]
        ended = listing("budget" if r["status"] == "time_budget" else "epoch cap" for r in rs)  # cap: raise it
        steps = [sum(e["steps"] for e in r["epochs"]) for r in rs]
        rows.append([task, method, m, listing(r["config"]["time_budget"] for r in rs), ended, len(rs),
                     fmt(values(rs, "epochs"), 1, False), fmt(steps, 0, False), fmt(values(rs, "best")),
                     fmt(values(rs, "last")),
                     *[fmt(values(rs, k), d, spread=False) for k, d in (("train_s", 1), ("t95", 1), ("tok_s", 0))]])
    return lines + table(["task", "method", "metric", "budget (min)", "ended by", "seeds", "epochs", "steps",
                          "test @best", "test @last", "train time (s)", "t95 (s)", "tokens/s"], rows)


def task_method_key(kv):
    (task, method), _ = kv
    return rank(task, TASKS), rank(method, METHODS)


def largest_fraction(fixed) -> dict:
    """(task, method) -> the runs at that cell's largest fraction (1.0 in a full grid)."""
    out = {}
    for key, rs in group(fixed, lambda r: (r["task"], r["method"])).items():
        top = max(r["frac"] for r in rs)
        out[key] = [r for r in rs if r["frac"] == top]
    return out


def axis_label(runs, split="test"):
    m = runs[0]["best"]["metric"]
    return f"{split} {METRIC_LABEL.get(m, m)} (x 100)"


def plot_fractions(fixed, path):
    tasks = ordered({r["task"] for r in fixed}, TASKS)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 5 * len(tasks)), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_runs = [r for r in fixed if r["task"] == task]
        ticks = sorted({r["frac"] for r in task_runs})
        ax.set_xticks(ticks, [f"{f:g}" for f in ticks])
        for method, rs in sorted(group(task_runs, lambda r: r["method"]).items(), key=lambda kv: rank(kv[0], METHODS)):
            cells = group(rs, lambda r: r["frac"])
            fracs = sorted(cells)
            stats = [mean_std(values(cells[f], "best")) for f in fracs]
            ax.errorbar(fracs, [s[0] for s in stats], yerr=[s[1] or 0 for s in stats], marker="o", capsize=3,
                        label=method, color=COLORS.get(method))
            ax.scatter([r["frac"] for r in rs], values(rs, "best"), s=10, alpha=0.4, color=COLORS.get(method))
        ax.set(title=task, xlabel="fraction of training data", ylabel=axis_label(task_runs))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Test score at the best-validation epoch vs data fraction\n(mean ± std over seeds; dots: seeds)")
    save(fig, path)


def plot_epochs(fixed, path):
    """Validation and test score per epoch on the largest fraction: where overfitting shows."""
    cells = largest_fraction(fixed)
    tasks = ordered({t for t, _ in cells}, TASKS)
    methods = ordered({m for _, m in cells}, METHODS)
    fig, axes = plt.subplots(len(tasks), len(methods), figsize=(3.6 * len(methods), 3 * len(tasks)),
                             squeeze=False, sharey="row")
    for i, task in enumerate(tasks):
        for j, method in enumerate(methods):
            ax, rs = axes[i][j], cells.get((task, method), [])
            for split, color in (("val", "tab:blue"), ("test", "tab:orange")):
                for k, r in enumerate(rs):
                    m = r["best"]["metric"]
                    ax.plot([e["epoch"] for e in r["epochs"]], [100 * e[split][m] for e in r["epochs"]],
                            marker=".", color=color, alpha=0.7, label=split if k == 0 else None)
            frac = f", frac {rs[0]['frac']:g}, {len(rs)} seed{'s' if len(rs) > 1 else ''}" if rs else ""
            ax.set(title=f"{task} {method}{frac}", xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if j == 0 and rs:
                ax.set_ylabel(axis_label(rs, "score:"))
            ax.grid(alpha=0.3)
            if rs:
                ax.legend(fontsize=8)
    fig.suptitle("Validation and test score per epoch\n(largest fraction; one line per seed)")
    save(fig, path)


def plot_time(runs, path):
    """Test score against training seconds, from every evaluation of the budget runs (or of the
    largest-fraction fixed-epoch runs when there are no budget runs)."""
    budget = [r for r in runs if is_budget(r)]
    chosen = budget or [r for rs in largest_fraction([r for r in runs if not is_budget(r)]).values() for r in rs]
    tasks = ordered({r["task"] for r in chosen}, TASKS)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 5 * len(tasks)), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_runs = [r for r in chosen if r["task"] == task]
        seen = set()
        for r in sorted(task_runs, key=lambda r: (rank(r["method"], METHODS), r["seed"])):
            m = r["best"]["metric"]
            ax.plot([e["train_seconds"] for e in r["evals"]], [100 * e["test"][m] for e in r["evals"]], marker=".",
                    color=COLORS.get(r["method"]), label=None if r["method"] in seen else r["method"])
            seen.add(r["method"])
        ax.set(title=task, xlabel="training time (s, evaluation excluded)", ylabel=axis_label(task_runs))
        ax.grid(alpha=0.3)
        ax.legend()
    kind = "time-budget runs" if budget else "largest-fraction runs"
    fig.suptitle(f"Test score vs training time\n({kind}; one line per seed)")
    save(fig, path)


def plot_cost(fixed, path):
    cells = largest_fraction(fixed)
    tasks = ordered({t for t, _ in cells}, TASKS)
    methods = ordered({m for _, m in cells}, METHODS)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(tasks)
    for ax, field, label in ((axes[0], "step_ms", "median step time (ms)"), (axes[1], "peak_mib", "peak memory (MiB)")):
        for k, task in enumerate(tasks):
            heights = [mean_std(values(cells.get((task, m), []), field))[0] or 0 for m in methods]
            ax.bar([i + (k - (len(tasks) - 1) / 2) * width for i in range(len(methods))], heights, width, label=task)
        ax.set_xticks(range(len(methods)), methods)
        ax.set(xlabel="method", ylabel=label, title=label.split(" (")[0])
        ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
        ax.grid(alpha=0.3, axis="y")
        ax.legend(title="task", ncol=len(tasks), loc="upper center")
    fig.suptitle("Cost per method on the largest fraction (mean over seeds)")
    save(fig, path)


def plot_differences(fixed, path):
    """Method − full fine-tuning by data fraction: mean over seeds with its 95% t interval."""
    diffs = claims.cell_differences(fixed)
    tasks = ordered({d["task"] for d in diffs}, TASKS)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 5 * len(tasks)), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        methods = ordered({d["method"] for d in diffs if d["task"] == task}, METHODS)
        for k, method in enumerate(methods):
            ds = sorted((d for d in diffs if d["task"] == task and d["method"] == method), key=lambda d: d["frac"])
            x = [d["frac"] + 0.012 * (k - (len(methods) - 1) / 2) for d in ds]  # side by side, not on top
            err = [[d["mean"] - (d["t_low"] if d["t_low"] is not None else d["mean"]) for d in ds],
                   [(d["t_high"] if d["t_high"] is not None else d["mean"]) - d["mean"] for d in ds]]
            ax.errorbar(x, [d["mean"] for d in ds], yerr=err, marker="o", capsize=3, label=method,
                        color=COLORS.get(method))
        ticks = sorted({d["frac"] for d in diffs if d["task"] == task})
        ax.set_xticks(ticks, [f"{f:g}" for f in ticks])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=task, xlabel="fraction of training data", ylabel="method − full (test, x 100)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Difference to full fine-tuning by data fraction\n(mean over seeds, 95% t interval over seeds)")
    save(fig, path)


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(root) -> Path:
    root = Path(root)
    runs, ignored = load(root)
    if not runs:
        raise SystemExit(f"{root}: no finished results.json below it ({len(ignored)} unfinished)")
    fixed = [r for r in runs if not is_budget(r)]
    lines = header(runs, ignored) + tuning_table(root)
    plots = []
    if fixed:
        lines += main_tables(fixed) + comparison(fixed) + stability(fixed) + efficiency(fixed)
        plots += [("metric_vs_fraction.png", plot_fractions, fixed), ("metric_vs_epoch.png", plot_epochs, fixed),
                  ("cost.png", plot_cost, fixed)]
        if claims.cell_differences(fixed):
            plots.append(("difference_vs_fraction.png", plot_differences, fixed))
    lines += budget_table([r for r in runs if is_budget(r)])
    plots.append(("metric_vs_time.png", plot_time, runs))
    lines += ["## Plots", ""]
    for name, draw, rs in plots:
        draw(rs, root / name)
        lines += [f"![{name}]({name})", ""]
    analysis = root / "ANALYSIS.md"
    if analysis.is_file():
        lines += ["## Analysis", "", analysis.read_text()]
    out = root / "RESULTS.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {len(plots)} plots from {len(runs)} runs ({len(ignored)} unfinished ignored)")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python report.py RESULTS_DIR")
    report(sys.argv[1])
