"""Tables and plots from a directory of runs: `python -m study.report results/cpu-minilm`.

Reads every results.json below the directory (one per run, as train.py writes them), keeps the
finished ones (status "complete" or "time_budget"), and writes RESULTS.md and PNG plots next to
them. Every number comes from those files. Scores are the task's headline metric (results
"best.metric": mrpc F1, cola Matthews, stsb Pearson) x 100 on the test split, which is GLUE's dev
set; "@best" is the epoch with the best validation score, "@last" the final epoch. Spread over
seeds is the sample standard deviation (n - 1). Runs under tune/ are the tuning stage's (study/sweep.py):
they make the learning-rate table, not the grid's. Each method's difference to full fine-tuning
comes with its intervals (study/claims.py), under the time budget too (one seed: the bootstrap
alone). A hand-written ANALYSIS.md in the directory is included verbatim. Given one run's directory
(a results.json directly in it), it draws that run's curves instead (study/curves.py).
"""
import json
import math
import statistics
from pathlib import Path

from flags import Parser
from study import claims
from study.plots import plot_cost, plot_differences, plot_epochs, plot_fractions, plot_time
from study.runs import METHODS, METRIC_LABEL, NOT_READ, TASKS, baseline, fmt, group, is_budget, largest_fraction, \
    load, mean_std, ordered, rank, summarize, table, task_method_key, values
from study.tuning import tuned_problem


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
                  "- learning rates: " + "; ".join(f"{m} {rates(fixed, m)}" for m in methods),
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
    lines.append(f"- compute: {compute_hours(runs):.1f} hours of training and evaluation, summed over the runs "
                 "(runs that shared the machine overlap in wall time; model loading is not counted; runs copied "
                 "from the tuning stage are counted there)")
    audits = [r.get("freeze_audit") for r in runs]
    lines.append(f"- frozen-weights audit: {audits.count('passed')} of {len(runs)} runs passed")
    if ignored:
        names = ", ".join(f"{r['dir']} ({r.get('status')})" for r in ignored)
        lines.append(f"- ignored {len(ignored)} runs (unfinished, failed, duplicates, not results files): {names}")
    return lines + [""]


def rates(configs, method) -> str:
    """A method's learning rate(s): one, or one per task where tuning chose them per task; more than
    one within a task is flagged."""
    by_task = {t: listing(c["lr"] for c in configs if (c["task"], c["method"]) == (t, method))
               for t in ordered({c["task"] for c in configs if c["method"] == method}, TASKS)}
    if len(set(by_task.values())) == 1:
        return next(iter(by_task.values()))
    return ", ".join(f"{t} {lr.replace(', ', '/')}" for t, lr in by_task.items())


def compute_hours(rs) -> float:
    """Training plus evaluation time of the runs, summed, in hours; a grid run copied from the tuning
    stage (study/sweep.py) is counted with the tuning runs, not twice."""
    return sum(r["time"]["train_seconds"] + r["time"]["eval_seconds"] for r in rs if "copied_from" not in r) / 3600


def not_beaten(score: float, floor: float) -> bool:
    """A score at or below the constant prediction's (a tie, to rounding, does not beat it)."""
    return score <= floor + 1e-9


def not_above(rs) -> str:
    """How many of the runs do not beat their own constant prediction: a cell's mean can beat the
    baseline while one seed learned nothing; "–" for runs made before results.json recorded it."""
    scored = [r for r in rs if "baseline" in r]
    if not scored:
        return "–"
    m = scored[0]["best"]["metric"]
    below = sum(not_beaten(r["best"]["test"][m], r["baseline"]["test"][m]) for r in scored)
    return f"{below} of {len(scored)}"


def main_tables(fixed) -> list:
    lines = ["## Score by task, method and data fraction", "",
             "Test score x 100, mean ± std over seeds; the other columns are means. Train time excludes "
             "evaluation; t95 = training seconds until validation first reached 95% of the run's best. "
             "The baseline is the test score of a constant prediction: the training data's majority class "
             "(MRPC, CoLA), or its mean score for STS-B, whose Pearson r is 0 by definition (metrics.py). "
             "† marks a cell whose mean does not beat it: the model learned nothing visible; *not above* counts "
             "the cell's runs that do not beat their own (a mean can beat it while a seed learned nothing).", ""]
    for task, task_runs in sorted(group(fixed, lambda r: r["task"]).items(), key=lambda kv: rank(kv[0], TASKS)):
        m = task_runs[0]["best"]["metric"]
        rows = []
        cells = group(task_runs, lambda r: (r["method"], r["frac"]))
        for method, frac in sorted(cells, key=lambda k: (rank(k[0], METHODS), k[1])):
            rs = cells[(method, frac)]
            s = summarize(rs[0])
            cost = [fmt(values(rs, k), d, spread=False) for k, d in (("train_s", 1), ("t95", 1), ("peak_mib", 0))]
            floor = baseline(rs)
            mark = " †" if floor is not None and not_beaten(mean_std(values(rs, "best"))[0], floor) else ""
            rows.append([method, f"{frac:g}", len(rs), fmt(values(rs, "best")) + mark, fmt(values(rs, "last")),
                         "–" if floor is None else f"{floor:.2f}", not_above(rs),
                         fmt(values(rs, "best_epoch"), 1, spread=False), f"{s['trainable']:,}", f"{s['pct']:.3f}",
                         *cost])
        lines += [f"### {task} ({METRIC_LABEL.get(m, m)})", ""]
        lines += table(["method", "frac", "seeds", f"test {m} @best", f"test {m} @last", "baseline", "not above",
                        "best epoch", "trainable", "trainable %", "train time (s)", "t95 (s)",
                        "peak memory (MiB)"], rows)
    return lines


def comparison(diffs: list, left_out=()) -> list:
    """The table of claims.cell_differences, one row per task x fraction x method; left_out: the cells
    claims.unpaired found no full fine-tuning run of the same protocol and seeds for."""
    lines = ["## Each method against full fine-tuning", "",
             "Paired by seed (one seed: the same training subset and data order for both methods): the mean "
             "over seeds of method − full, test score @best x 100; its 95% t interval over seeds; the 95% "
             "paired-bootstrap interval over test examples (1,000 resamples of GLUE dev, both methods scored "
             "on the same draw, averaged over the seeds); the verdict is *better* or *worse* only when both "
             "intervals leave out zero (claims.py).", ""]
    if left_out:
        lines += ["Not compared, for want of a full fine-tuning run of the same task, fraction, seed and protocol "
                  "(epochs, batch size, ... claims.PROTOCOL): " + ", ".join(f"{t} {f:g} {m}" for t, f, m in left_out)
                  + ".", ""]
    if not diffs:
        return lines + ["No pairs of a method and full fine-tuning to compare.", ""]
    rows = [[d["task"], f"{d['frac']:g}", d["method"], len(d["seeds"]), f"{d['mean']:+.2f}",
             claims.interval(d["t_low"], d["t_high"]), claims.interval(*(d["boot"] or (None, None))), d["verdict"]]
            for d in sorted(diffs, key=lambda d: (rank(d["task"], TASKS), rank(d["method"], METHODS), d["frac"]))]
    return lines + table(["task", "frac", "method", "seeds", "− full", "95% t (seeds)", "95% bootstrap (test)",
                          "verdict"], rows)


def tuning_table(root: Path) -> list:
    """The tuning stage: every rate tried, its best validation score, and the rate tuned.json chose."""
    runs, _ = load(root, tuning=True)
    path = root / "tuned.json"
    if not runs:
        return []
    chosen, problem = read_chosen(path)
    lines = ["## Learning rates (tuning stage)", "",
             "Each task x method trained at every rate on all the training data with the first seed; the "
             "validation score x 100 (10% of GLUE train, never the test set) at the best epoch, that epoch in "
             f"brackets; **bold**: the rate chosen for the grid (tuned.json). {len(runs)} finished tuning runs, "
             f"{compute_hours(runs):.1f} hours of training and evaluation summed over them.", ""]
    rows = []
    for (task, method), rs in sorted(group(runs, lambda r: (r["task"], r["method"])).items(), key=task_method_key):
        pick = chosen.get(task, {}).get(method)
        tried = []
        for r in sorted(rs, key=lambda r: r["config"]["lr"]):
            text = f"{r['config']['lr']:g}: {100 * r['best']['val'][r['best']['metric']]:.2f} ({r['best']['epoch']})"
            tried.append(f"**{text}**" if pick is not None and math.isclose(r["config"]["lr"], pick) else text)
        rows.append([task, method, "; ".join(tried), "–" if pick is None else f"{pick:g}"])
    notes = [f"The chosen rates are not marked: {problem}.", ""] if problem else []
    return lines + table(["task", "method", "rate: validation @best (epoch)", "chosen"], rows) + notes


def read_chosen(path: Path) -> tuple:
    """(tuned.json's chosen rates, None), or ({}, what is wrong with it): a report is still made."""
    if not path.is_file():
        return {}, None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return {}, f"{path} is not valid JSON ({type(e).__name__})"
    problem = tuned_problem(raw, path)
    return ({}, problem) if problem else (raw["chosen"], None)


LEVEL_POINTS = 1.0  # levelled off: within this many points (x 100) of the run's best validation score


def levelling(fixed) -> list:
    """Is the grid's epoch count enough? Full fine-tuning on all the data: its validation score by
    epoch (mean over seeds), the first epoch within LEVEL_POINTS of each run's best, and the change
    over the last two epochs."""
    full = [r for r in fixed if r["method"] == "full" and r["frac"] == 1.0]
    if not full:
        return []
    lines = ["## Epochs: does full fine-tuning level off?", "",
             f"Full fine-tuning on all the training data, validation score x 100 after each epoch (mean over "
             f"seeds); *levelled by* is the first epoch within {LEVEL_POINTS:g} point of the run's best "
             "validation score (mean over seeds); *last two epochs* is the change of the mean curve over them.", ""]
    rows = []
    for task, rs in sorted(group(full, lambda r: r["task"]).items(), key=lambda kv: rank(kv[0], TASKS)):
        m = rs[0]["best"]["metric"]
        curves = [[(e["epoch"], 100 * e["val"][m]) for e in r["epochs"]] for r in rs]
        n = min(len(c) for c in curves)
        mean = [statistics.mean(c[i][1] for c in curves) for i in range(n)]
        levelled = [next(epoch for epoch, v in c if v >= max(v for _, v in c) - LEVEL_POINTS) for c in curves]
        rows.append([task, len(rs), " → ".join(f"{v:.2f}" for v in mean), fmt(levelled, 1, spread=False),
                     f"{mean[-1] - mean[-3]:+.2f}" if n >= 3 else "–"])
    return lines + table(["task", "seeds", "validation by epoch", "levelled by (epoch)", "last two epochs"], rows)


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


def spread(fixed) -> list:
    """claims.spread_ratios as a table: each method's spread over seeds against full fine-tuning's."""
    ratios = claims.spread_ratios(fixed)
    if not ratios:
        return []
    lines = ["Against full fine-tuning, over the same seeds: the ratio of standard deviations (method / full) "
             "of the test score, the geometric mean over a task's cells (task x fraction) with its range over "
             "them; over all tasks, the geometric mean of the tasks' ratios with the 95% t interval over tasks "
             "(a task's cells share seeds and nested subsets, so the tasks are the independent units; "
             "claims.py). Above 1 is more variable. *Constant*: cells where full fine-tuning, the method, or "
             "both scored the same with every seed, which have no ratio.", ""]
    rows = [[d["method"], d["task"], d["cells"], "{full} / {method} / {both}".format(**d["skipped"]),
             "–" if d["ratio"] is None else f"{d['ratio']:.2f}", ratio_span(d), d["verdict"] or ""]
            for d in sorted(ratios, key=lambda d: (rank(d["method"], METHODS), rank(d["task"], TASKS + ("all",))))]
    return lines + table(["method", "task", "cells", "constant (full / method / both)", "std ratio to full",
                          "range over cells; 95% t over tasks", "verdict"], rows)


def ratio_span(d) -> str:
    """A task's range of ratios over its cells; over all tasks, the 95% t interval."""
    if d["task"] == "all":
        return "–" if d["low"] is None else f"[{d['low']:.2f}, {d['high']:.2f}]"
    return "–" if d["range"] is None else f"{d['range'][0]:.2f} – {d['range'][1]:.2f}"


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


def budget_comparison(budget, diffs) -> list:
    """Each method against full fine-tuning under the time budget (one seed, as the presets run it: the
    bootstrap over test examples is the only interval), beside the same difference after the grid's
    fixed epochs. A budget cell with more seeds gets claims.verdict, both intervals."""
    budget_diffs = claims.cell_differences(budget)
    if not budget_diffs:
        return []
    epochs = {(d["task"], d["method"]): d for d in diffs if d["frac"] == 1.0}
    lines = ["### Against full fine-tuning, under the budget and after fixed epochs", "",
             "Method − full, test score @best x 100, on all the training data. Under the budget: one seed, so "
             "the 95% paired-bootstrap interval over test examples is the only interval and the verdict rests on "
             "it alone (it knows nothing of seed-to-seed noise). After fixed epochs: the grid's comparison above "
             "(frac 1), for the same task and method. A budget that favours the efficient methods shows as a "
             "budget difference above the fixed-epoch one.", ""]
    rows = []
    for d in sorted(budget_diffs, key=lambda d: (rank(d["task"], TASKS), rank(d["method"], METHODS))):
        e = epochs.get((d["task"], d["method"]))
        rows.append([d["task"], d["method"], f"{d['mean']:+.2f}", claims.interval(*(d["boot"] or (None, None))),
                     d["verdict"] if len(d["seeds"]) > 1 else claims.bootstrap_verdict(d["boot"]),
                     "–" if e is None else f"{e['mean']:+.2f}",
                     "–" if e is None else e["verdict"]])
    return lines + table(["task", "method", "budget: − full", "95% bootstrap (test)", "budget verdict",
                          "fixed epochs: − full", "fixed-epoch verdict"], rows)


def report(root) -> Path:
    root = Path(root)
    if (root / "RESULTS.md").exists() and not (root / "RESULTS.md").is_file():  # before the plots are drawn
        raise SystemExit(f"error: {root / 'RESULTS.md'}: exists and is not a file (a directory?); move it away")
    runs, ignored = load(root)
    tuning = tuning_table(root)
    if not runs and not tuning:
        raise SystemExit(f"{root}: no finished results.json below it ({len(ignored)} unfinished or ignored)")
    if not runs:  # the tuning stage so far: its table alone
        out = root / "RESULTS.md"
        out.write_text("\n".join(["# Results", "", "No run of the grid has finished yet: the tuning stage so far.",
                                  ""] + tuning))
        print(f"wrote {out}: the tuning stage alone ({len(ignored)} unfinished runs of the grid)")
        return out
    fixed = [r for r in runs if not is_budget(r)]
    lines = header(runs, ignored)
    if (root / "rates.json").is_file():  # sweep --rates: another study's tuning stage chose the rates
        try:
            source = json.loads((root / "rates.json").read_text()).get("from", "?")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            source = f"? ({root / 'rates.json'} is not a JSON object)"
        lines.insert(-1, f"- rates taken from `{source}` (relative to this folder; sweep --rates), not tuned here")
    lines += tuning
    plots = []
    diffs = claims.cell_differences(fixed)  # the bootstrap: once, for the tables and the plot
    if fixed:
        lines += main_tables(fixed) + comparison(diffs, claims.unpaired(fixed)) + levelling(fixed)
        lines += stability(fixed) + spread(fixed) + efficiency(fixed)
        plots += [("metric_vs_fraction.png", plot_fractions, fixed), ("metric_vs_epoch.png", plot_epochs, fixed),
                  ("cost.png", plot_cost, fixed)]
        if diffs:
            plots.append(("difference_vs_fraction.png", plot_differences, diffs))
    budget = [r for r in runs if is_budget(r)]
    lines += budget_table(budget) + budget_comparison(budget, diffs)
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
    print(f"wrote {out} and {len(plots)} plots from {len(runs)} runs ({len(ignored)} ignored: unfinished, failed, "
          "duplicates or not trusted)")
    skipped = [r for r in ignored if str(r.get("status")).startswith(NOT_READ)]
    if skipped:
        print(f"skipped {len(skipped)} runs it cannot read or trust: "
              + "; ".join(f"{r['dir']} ({r['status']})" for r in skipped))
    return out


def main(argv=None):
    p = Parser(prog="python -m study.report", usage="%(prog)s RESULTS_DIR  (writes RESULTS_DIR/RESULTS.md and its "
               "plots)", description="Given one run's directory (a results.json in it): its curves, as python -m "
               "study.curves RUN_DIR draws them.", hint="python -m study.report takes one study folder, no options")
    p.add_argument("folder", metavar="RESULTS_DIR", help="a study folder (or one run's directory)")
    folder = Path(p.parse_args(argv).folder)
    if not folder.is_dir():
        raise SystemExit(f"error: {folder}: no such study folder")
    if (folder / "results.json").is_file():  # a run, not a study: its picture, not tables of one run
        from study import curves
        print(f"{folder} is one run's directory: drawing its curves (python -m study.curves)")
        raise SystemExit(curves.main([str(folder)]))
    try:
        report(folder)
    except OSError as e:  # a plot or RESULTS.md that cannot be written: a full disk, a directory in its place
        raise SystemExit(f"error: {e.filename or folder}: {e.strerror or e}") from None


if __name__ == "__main__":
    main()
