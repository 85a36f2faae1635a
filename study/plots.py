"""The study's plots, PNG files made from the runs' results (study/runs.py) for RESULTS.md.

Three rules hold in every score panel:
  y-limits   come from the bulk of the data, not its extremes: walking out from the quartiles, the
             first empty gap wider than GAP interquartile ranges ends the axis (limits); what lies beyond
             it (a seed that learned nothing, a collapsed first epoch) is drawn at the panel's edge as a
             triangle pointing off the axis, its value written beside it, and the panel's title says
             "N clipped". Error bars and lines that run past an edge are cut there. One failed seed no
             longer takes a panel's whole height.
  seeds      each seed has its own marker (SEED_MARKERS, the legend under the panels), in its method's or
             split's colour, so a seed that collapsed can be found.
  baseline   the constant prediction's test score (results.json "baseline": the training subset's
             majority class, or its mean score for STS-B, whose Pearson r is 0 by definition) as a black
             dashed line. It depends on the training subset, so by fraction it is the mean over that
             fraction's runs (flat in practice: the majority class does not change); elsewhere the mean
             over the panel's runs. One outside the limits (STS-B's 0 under scores of 80) is written at
             the edge instead of stretching the axis down to it.
"""
import bisect
import math
import statistics

import matplotlib

from study.runs import COLORS, METHODS, METRIC_LABEL, TASKS, baseline, group, is_budget, largest_fraction, mean_std, \
    ordered, rank, values

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SEED_MARKERS = ("o", "s", "D", "P", "X", "*", "h", "p")  # by the seed's rank among the study's seeds
GAP = 4.0  # an empty gap this many interquartile ranges wide, beyond the quartiles, begins the clipping
MIN_SPREAD = 1.0  # the smallest interquartile range assumed, in points x 100: a panel whose values nearly
# agree keeps a value a few points away
MARGIN = 0.06  # room left above and below the kept data, as a fraction of its range


def axis_label(runs, split="test"):
    m = runs[0]["best"]["metric"]
    return f"{split} {METRIC_LABEL.get(m, m)} (x 100)"


# --------------------------------------------------------------------------------- the three rules
def limits(points, extra=(), reach=1.0) -> tuple:
    """(low, high) y-limits covering `points` (the measured values: seeds, evaluations) up to the first
    empty gap wider than GAP interquartile ranges (at least MIN_SPREAD) found walking out from their
    quartiles: what lies beyond such a gap is an outlier. A learning curve's climb, however steep, has no
    such gap; a seed that learned nothing has one. `extra` (means, error bar and interval ends, the
    baseline) widens the limits when it lies within `reach` interquartile ranges of them."""
    xs = sorted(v for v in points if v is not None and math.isfinite(v))
    if not xs:
        return 0.0, 1.0
    q1, q3 = statistics.quantiles(xs, n=4, method="inclusive")[::2] if len(xs) > 1 else (xs[0], xs[0])
    step = GAP * max(q3 - q1, MIN_SPREAD)
    i = bisect.bisect_right(xs, q1) - 1
    while i > 0 and xs[i] - xs[i - 1] <= step:
        i -= 1
    j = bisect.bisect_left(xs, q3)
    while j < len(xs) - 1 and xs[j + 1] - xs[j] <= step:
        j += 1
    low, high = xs[max(i, 0)], xs[min(j, len(xs) - 1)]
    near = reach * step / GAP
    ends = [v for v in extra if v is not None and math.isfinite(v) and low - near <= v <= high + near]
    low, high = min([low, *ends]), max([high, *ends])
    pad = MARGIN * max(high - low, MIN_SPREAD)
    return low - pad, high + pad


def clamp(ys, lim) -> list:
    """The values as drawn: inside the limits, or on the edge they run past."""
    return [min(max(y, lim[0]), lim[1]) if y is not None and math.isfinite(y) else math.nan for y in ys]


def errorbar(ax, xs, mean, low, high, lim, **style):
    """Means with bars from low to high, each drawn inside the limits (cut at the edge it runs past)."""
    shown, low, high = clamp(mean, lim), clamp(low, lim), clamp(high, lim)
    ax.errorbar(xs, shown, yerr=[[s - lo for s, lo in zip(shown, low)], [hi - s for s, hi in zip(shown, high)]],
                **style)


class Clipped:
    """The values of one panel drawn at its edge, marked once the panel is drawn (mark)."""

    def __init__(self, lim):
        self.lim, self.points = lim, []  # (x, value, colour)

    def add(self, xs, ys, color):
        self.points += [(x, y, color) for x, y in zip(xs, ys)
                        if y is not None and math.isfinite(y) and not self.lim[0] <= y <= self.lim[1]]

    def mark(self, ax):
        """Triangles on the edge, pointing off the axis; the value beside each place (a range where
        several share one); "N clipped" after the panel's title (call it once the title is set)."""
        ax.set_ylim(*self.lim)
        places = group(self.points, lambda p: (p[0], p[1] > self.lim[1]))
        for (x, above), ps in places.items():
            edge = self.lim[1] if above else self.lim[0]
            for _, _, color in ps:
                ax.plot([x], [edge], marker="^" if above else "v", color=color, markeredgecolor="black",
                        markersize=8, linestyle="", clip_on=False, zorder=5)
            vs = sorted(v for _, v, _ in ps)
            text = ", ".join(f"{v:.1f}" for v in vs) if len(vs) <= 3 else f"{len(vs)}: {vs[0]:.1f} to {vs[-1]:.1f}"
            ax.annotate(text, (x, edge), xytext=(6, -10 if above else 4), textcoords="offset points", fontsize=7)
        if self.points:
            ax.set_title(f"{ax.get_title()} ({len(self.points)} clipped)")


def seed_marker(seed, seeds) -> str:
    return SEED_MARKERS[sorted(seeds).index(seed) % len(SEED_MARKERS)]


def draw_baseline(ax, xs, ys, lim, **style):
    """The constant prediction's score by x (a line; a flat one with xs None), or, when it lies outside
    the limits, its value in the panel's legend (call before ax.legend)."""
    pairs = [(x, y) for x, y in zip(xs or [None] * len(ys), ys) if y is not None]
    if not pairs:
        return
    xs, ys = zip(*pairs)
    if all(lim[0] <= y <= lim[1] for y in ys):
        if xs[0] is None:
            ax.axhline(ys[0], color="black", linestyle="--", linewidth=1, **style)
        else:
            ax.plot(xs, ys, color="black", linestyle="--", linewidth=1, **style)
        return
    below = statistics.mean(ys) < lim[0]
    ax.plot([], [], color="black", linestyle="--", linewidth=1,
            label=f"constant {statistics.mean(ys):.1f}, {'below' if below else 'above'} the axis")


def legend_below(fig, seeds, baseline=True):
    """One legend for the figure: the seeds' markers and the baseline's line."""
    handles = [Line2D([], [], marker=seed_marker(s, seeds), color="gray", linestyle="", label=f"seed {s}")
               for s in sorted(seeds)]
    if baseline:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1, label="constant prediction (test)"))
    handles.append(Line2D([], [], marker="v", color="gray", markeredgecolor="black", linestyle="",
                          label="clipped: the value beside it"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


# --------------------------------------------------------------------------------- the plots
def plot_fractions(fixed, path):
    tasks = ordered({r["task"] for r in fixed}, TASKS)
    seeds = {r["seed"] for r in fixed}
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 5 * len(tasks)), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_runs = [r for r in fixed if r["task"] == task]
        ticks = sorted({r["frac"] for r in task_runs})
        ax.set_xticks(ticks, [f"{f:g}" for f in ticks])
        by_method = sorted(group(task_runs, lambda r: r["method"]).items(), key=lambda kv: rank(kv[0], METHODS))
        stats = {m: {f: mean_std(values(c, "best")) for f, c in group(rs, lambda r: r["frac"]).items()}
                 for m, rs in by_method}
        means = [s[0] for cells in stats.values() for s in cells.values()]
        ends = [s[0] + sign * (s[1] or 0) for cells in stats.values() for s in cells.values() for sign in (-1, 1)]
        floors = {f: baseline(c) for f, c in group(task_runs, lambda r: r["frac"]).items()}
        lim = limits(values(task_runs, "best"), means + ends + list(floors.values()))
        clipped = Clipped(lim)
        for method, rs in by_method:
            fracs = sorted(stats[method])
            mean, std = [stats[method][f][0] for f in fracs], [stats[method][f][1] or 0 for f in fracs]
            errorbar(ax, fracs, mean, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], lim,
                     marker="o", capsize=3, label=method, color=COLORS.get(method))
            clipped.add(fracs, mean, COLORS.get(method))
            for seed, srs in group(rs, lambda r: r["seed"]).items():
                ys = values(srs, "best")
                ax.scatter([r["frac"] for r in srs], clamp(ys, lim), s=14, alpha=0.5, color=COLORS.get(method),
                           marker=seed_marker(seed, seeds))
                clipped.add([r["frac"] for r in srs], ys, COLORS.get(method))
        draw_baseline(ax, ticks, [floors[f] for f in ticks], lim)
        ax.set(title=task, xlabel="fraction of training data", ylabel=axis_label(task_runs))
        clipped.mark(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    legend_below(fig, seeds, any("baseline" in r for r in fixed))
    fig.suptitle("Test score at the best-validation epoch vs data fraction\n(mean ± std over seeds; small markers: "
                 "seeds;\ndashed: the constant prediction, mean over each fraction's runs)")
    save(fig, path, legend=True)


def plot_epochs(fixed, path):
    """Validation and test score per epoch on the largest fraction: where overfitting shows."""
    cells = largest_fraction(fixed)
    tasks = ordered({t for t, _ in cells}, TASKS)
    methods = ordered({m for _, m in cells}, METHODS)
    seeds = {r["seed"] for rs in cells.values() for r in rs}
    splits = (("val", "tab:blue"), ("test", "tab:orange"))
    fig, axes = plt.subplots(len(tasks), len(methods), figsize=(3.6 * len(methods), 3 * len(tasks) + 0.4),
                             squeeze=False, sharey="row")
    for i, task in enumerate(tasks):
        row = [r for m in methods for r in cells.get((task, m), [])]
        lim = limits([100 * e[s][r["best"]["metric"]] for r in row for e in r["epochs"] for s, _ in splits],
                     [baseline(cells.get((task, m), [])) for m in methods])
        for j, method in enumerate(methods):
            ax, rs, clipped = axes[i][j], cells.get((task, method), []), Clipped(lim)
            for split, color in splits:
                for k, r in enumerate(rs):
                    m, epochs = r["best"]["metric"], [e["epoch"] for e in r["epochs"]]
                    ys = [100 * e[split][m] for e in r["epochs"]]
                    ax.plot(epochs, clamp(ys, lim), marker=seed_marker(r["seed"], seeds), markersize=4, color=color,
                            alpha=0.7, label=split if k == 0 else None)
                    clipped.add(epochs, ys, color)
            if rs:
                draw_baseline(ax, None, [baseline(rs)], lim)
            frac = f", frac {rs[0]['frac']:g}, {len(rs)} seed{'s' if len(rs) > 1 else ''}" if rs else ""
            ax.set(title=f"{task} {method}{frac}", xlabel="epoch")
            clipped.mark(ax)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if j == 0 and rs:
                ax.set_ylabel(axis_label(rs, "score:"))
            ax.grid(alpha=0.3)
            if rs:
                ax.legend(fontsize=8)
    legend_below(fig, seeds, any("baseline" in r for rs in cells.values() for r in rs))
    fig.suptitle("Validation and test score per epoch\n(largest fraction; one line per seed)")
    save(fig, path, legend=True)


def plot_time(runs, path):
    """Test score against training seconds, from every evaluation of the budget runs (or of the
    largest-fraction fixed-epoch runs when there are no budget runs)."""
    budget = [r for r in runs if is_budget(r)]
    chosen = budget or [r for rs in largest_fraction([r for r in runs if not is_budget(r)]).values() for r in rs]
    tasks = ordered({r["task"] for r in chosen}, TASKS)
    seeds = {r["seed"] for r in chosen}
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 5 * len(tasks)), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_runs = [r for r in chosen if r["task"] == task]
        lim = limits([100 * e["test"][r["best"]["metric"]] for r in task_runs for e in r["evals"]],
                     [baseline(task_runs)])
        clipped, seen = Clipped(lim), set()
        for r in sorted(task_runs, key=lambda r: (rank(r["method"], METHODS), r["seed"])):
            m, xs = r["best"]["metric"], [e["train_seconds"] for e in r["evals"]]
            ys = [100 * e["test"][m] for e in r["evals"]]
            ax.plot(xs, clamp(ys, lim), marker=seed_marker(r["seed"], seeds), markersize=4,
                    color=COLORS.get(r["method"]), label=None if r["method"] in seen else r["method"])
            clipped.add(xs, ys, COLORS.get(r["method"]))
            seen.add(r["method"])
        draw_baseline(ax, None, [baseline(task_runs)], lim)
        ax.set(title=task, xlabel="training time (s, evaluation excluded)", ylabel=axis_label(task_runs))
        clipped.mark(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    legend_below(fig, seeds, any("baseline" in r for r in chosen))
    kind = "time-budget runs" if budget else "largest-fraction runs"
    fig.suptitle(f"Test score vs training time\n({kind}; one line per seed)")
    save(fig, path, legend=True)


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
    """Method − full fine-tuning by data fraction (claims.cell_differences): mean over seeds, 95% t interval.
    The limits come from the means; an interval that runs past them is cut at the edge."""
    tasks = ordered({d["task"] for d in diffs}, TASKS)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7, 5 * len(tasks)), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        ours = [d for d in diffs if d["task"] == task]
        ends = [d[k] for d in ours for k in ("t_low", "t_high") if d[k] is not None]
        lim = limits([d["mean"] for d in ours] + [0.0], ends, reach=GAP)  # the intervals are what it shows
        clipped = Clipped(lim)
        methods = ordered({d["method"] for d in ours}, METHODS)
        for k, method in enumerate(methods):
            ds = sorted((d for d in ours if d["method"] == method), key=lambda d: d["frac"])
            x = [d["frac"] + 0.012 * (k - (len(methods) - 1) / 2) for d in ds]  # side by side, not on top
            mean = [d["mean"] for d in ds]
            errorbar(ax, x, mean, [d["mean"] if d["t_low"] is None else d["t_low"] for d in ds],
                     [d["mean"] if d["t_high"] is None else d["t_high"] for d in ds], lim, marker="o", capsize=3,
                     label=method, color=COLORS.get(method))
            clipped.add(x, mean, COLORS.get(method))
        ticks = sorted({d["frac"] for d in ours})
        ax.set_xticks(ticks, [f"{f:g}" for f in ticks])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=task, xlabel="fraction of training data", ylabel="method − full (test, x 100)")
        clipped.mark(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Difference to full fine-tuning by data fraction\n(mean over seeds, 95% t interval over seeds;\n"
                 "an interval cut at an edge runs on past it)")
    save(fig, path)


def save(fig, path, legend=False):
    fig.tight_layout(rect=(0, 0.05, 1, 1) if legend else (0, 0, 1, 1))  # legend: room for the one below
    fig.savefig(path, dpi=110)
    plt.close(fig)
