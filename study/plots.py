"""The study's plots, PNG files made from the runs' results (study/runs.py) for RESULTS.md."""
import matplotlib

from study.runs import COLORS, METHODS, METRIC_LABEL, TASKS, group, is_budget, largest_fraction, mean_std, \
    ordered, rank, values

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


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


def plot_differences(diffs, path):
    """Method − full fine-tuning by data fraction (claims.cell_differences): mean over seeds, 95% t interval."""
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
