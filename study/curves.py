"""One run as a picture: `python -m study.curves RUN_DIR [--out PNG]` (default RUN_DIR/curves.png).

Three panels from the files train.py writes in its --out directory:
  training loss  by optimizer step, from steps.jsonl (progress.py: the mean loss over each 10 steps),
                 with the epoch's mean training loss (results.json "epochs" train_loss) and the
                 validation loss at each evaluation ("evals") beside it: where the two part, it overfits
  learning rate  by step, from steps.jsonl: warm-up, decay, and where a time budget cut it short
  metric         the task's headline metric x 100 on validation and test at each evaluation (results.json
                 "evals"; mid-epoch ones with --eval-every), the epoch chosen as best, and the constant
                 prediction's score on each split (results.json "baseline") as a horizontal line: the
                 floor a run that learned nothing from the text reaches
A run made before runs wrote steps.jsonl (every committed study's) has no training curve: the metric
panel alone is drawn, and a line says so. It works on a run still going, too: what is written so far.
A missing or unreadable run directory is one `error:` line, exit status 1.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

from study.runs import METRIC_LABEL

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SPLITS = (("val", "tab:blue"), ("test", "tab:orange"))


def read_run(run_dir: Path) -> tuple:
    """(results.json as a dict, steps.jsonl's lines or None when the run has none, notes); ValueError
    naming the file when results.json is missing or is not a run's. An unreadable line of steps.jsonl
    (the last one of a run killed while writing it) is skipped with a note."""
    path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run directory")
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (RUN_DIR is a train.py --out directory; for a study folder of "
                         "many runs: python -m study.report)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("task"), str):
        raise ValueError(f"{path}: not a results file of train.py (no task)")
    steps_path, notes = run_dir / "steps.jsonl", []
    if not steps_path.is_file():
        return results, None, [f"{steps_path} does not exist (a run made before runs recorded their training "
                               "curve): the metric panel only"]
    steps, bad = [], 0
    for line in steps_path.read_text().splitlines():
        try:
            x = json.loads(line)
            steps.append((int(x["step"]), number(x["loss"]), number(x["lr"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            bad += 1
    if bad:
        notes.append(f"skipped {bad} unreadable line{'s' if bad > 1 else ''} of {steps_path}")
    return results, steps, notes


def number(x) -> float:
    """A recorded value as a float; null (a non-finite loss, written as JSON null) as NaN: a gap in the line."""
    return math.nan if x is None else float(x)


def headline(results: dict) -> str:
    """The metric the run is judged by: results "best.metric", or the task's own before any evaluation."""
    best = results.get("best")
    if isinstance(best, dict) and best.get("metric"):
        return best["metric"]
    import glue  # numpy only: the task's declared headline
    return glue.get_task(results["task"]).headline


def score(line: dict, split: str, metric: str) -> float:
    value = (line.get(split) or {}).get(metric)
    return math.nan if not isinstance(value, (int, float)) or isinstance(value, bool) else 100 * value


def draw_loss(ax, results: dict, steps: list):
    ax.plot([s for s, _, _ in steps], [loss for _, loss, _ in steps], color="tab:gray", linewidth=1,
            label="training (mean of each 10 steps)")
    epochs = [e for e in results.get("epochs") or [] if isinstance(e, dict) and "train_loss" in e]
    if epochs:
        ends = [sum(e.get("steps", 0) for e in epochs[:i + 1]) for i in range(len(epochs))]  # step at each epoch end
        ax.plot(ends, [number(e["train_loss"]) for e in epochs], "o", color="black", label="training, epoch mean")
    evals = results.get("evals") or []
    if evals:
        ax.plot([e.get("step") for e in evals], [number((e.get("val") or {}).get("loss")) for e in evals],
                marker="s", color="tab:blue", label="validation")
    ax.set(title="loss", xlabel="optimizer step", ylabel="loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def draw_lr(ax, steps: list):
    ax.plot([s for s, _, _ in steps], [lr for _, _, lr in steps], color="tab:green")
    ax.set(title="learning rate", xlabel="optimizer step", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def draw_metric(ax, results: dict, notes: list):
    metric = headline(results)
    label = METRIC_LABEL.get(metric, metric)
    evals = [e for e in results.get("evals") or [] if isinstance(e, dict)] or \
        [e for e in results.get("epochs") or [] if isinstance(e, dict)]  # older or partial runs: epoch lines
    baseline = results.get("baseline") if isinstance(results.get("baseline"), dict) else None
    for split, color in SPLITS:
        ax.plot([e.get("epoch") for e in evals], [score(e, split, metric) for e in evals], marker="o", color=color,
                label=split)
        if baseline is not None:
            floor = score(baseline, split, metric)
            ax.axhline(floor, color=color, linestyle="--", linewidth=1,
                       label=f"{split}: {baseline.get('name', 'constant')} prediction ({floor:.2f})")
    if baseline is None:
        notes.append("results.json has no baseline (a run made before it recorded the constant prediction's "
                     "score): no baseline line")
    best = results.get("best")
    if isinstance(best, dict) and best.get("epoch") is not None:
        ax.axvline(best["epoch"], color="black", linestyle=":", linewidth=1, label=f"best validation (epoch "
                   f"{best['epoch']:g})")
    if not evals:
        notes.append("no evaluation recorded yet: the metric panel is empty")
    if all(float(e.get("epoch") or 0).is_integer() for e in evals):  # epoch ends only (no --eval-every)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=f"{label} (x 100)", xlabel="epoch", ylabel=f"{label} x 100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def draw(run_dir, out=None) -> tuple:
    """Write the run's curves as a PNG; -> (the PNG's path, notes to show). ValueError naming the file
    for a directory that is not a run's."""
    run_dir = Path(run_dir)
    results, steps, notes = read_run(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    panels = 3 if steps else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels if steps else 7, 4.4), squeeze=False)
    if steps:
        draw_loss(axes[0][0], results, steps)
        draw_lr(axes[0][1], steps)
    draw_metric(axes[0][-1], results, notes)
    frac, seed = results.get("frac"), results.get("seed")
    fig.suptitle(f"{run_dir.resolve().name}: {results['task']} {results.get('method', '?')}"
                 + (f", frac {frac:g}" if isinstance(frac, (int, float)) else "")
                 + (f", seed {seed}" if seed is not None else "") + f" ({results.get('status', '?')})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.curves", description=__doc__.split("\n")[0],
                                epilog="For a study folder of many runs: python -m study.report RESULTS_DIR.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a train.py --out directory (results.json, steps.jsonl)")
    p.add_argument("--out", metavar="PNG", help="where to write the picture; default RUN_DIR/curves.png")
    args = p.parse_args(argv)
    try:
        out, notes = draw(args.run_dir, args.out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
