"""Two studies of one protocol side by side: the same configurations, run twice (on two machines, say).

  python -m study.compare results/cpu-minilm-tuned results/gpu-minilm-tuned

A finished run of study A and one of study B are *the same configuration* when their train.py
configs agree on every field that can change a result (task, method, fraction, seed, rate, epochs,
model, pooling, batch size, warm-up, ...; not the device, output folder or resume flags: IGNORED).
Time-budget runs are left out: how far a budget goes depends on the machine by design. Two runs of
one configuration on different hardware are not one computation (dropout's random stream differs
between the CPU and CUDA, and so do the kernels), so a pair is in effect two seeds of one
configuration, and the differences measure how far a result can move by chance alone.

Printed, as Markdown, scores x 100 (report.py's units):
  - per stage (tuning runs under tune/; grid runs, less those copied from the tuning stage, which
    are counted there): the number of pairs and the mean, median and largest absolute difference of
    the best validation score (what the tuning stage chooses by) and of the test score at that epoch;
  - the rates each study's tuned.json chose, where they differ;
  - per grid cell (task x method x fraction, copies included): the test score @best, mean over the
    seeds both ran, in A and B, and B - A with its 95% t interval over those seeds
    (claims.t_interval); "differs" only where the interval leaves out zero. With no systematic
    difference about 1 cell in 20 differs by chance.
"""
import json
import statistics
import sys
from pathlib import Path

from study import claims
from study.runs import METHODS, TASKS, group, load, rank, table

IGNORED = ("out", "data_dir", "device", "eval_batch_size", "compile", "audit", "resume", "overwrite", "debug")


def configuration(r) -> tuple:
    """What makes two runs the same configuration: the config without IGNORED, with the pooling
    train.py resolved (the flag's "" means the model's default)."""
    cfg = {k: v for k, v in r["config"].items() if k not in IGNORED}
    cfg["pooling"] = r.get("pooling", cfg.get("pooling"))
    return tuple(sorted((k, json.dumps(v)) for k, v in cfg.items()))


def scores(r) -> tuple:
    """(best validation score, test score at that epoch), x 100."""
    m = r["best"]["metric"]
    return 100 * r["best"]["val"][m], 100 * r["best"]["test"][m]


def finished(root: Path, tuning: bool) -> list:
    """A study's finished runs of one stage, the time-budget runs left out."""
    return [r for r in load(root, tuning)[0] if not r["config"].get("time_budget")]


def pairs(a: Path, b: Path, tuning: bool) -> tuple:
    """-> ([(run of A, run of B)] of the same configuration, runs of A unpaired, runs of B unpaired)."""
    runs_a, runs_b = finished(a, tuning), finished(b, tuning)
    by_config = {configuration(r): r for r in runs_b}
    paired = [(r, by_config[configuration(r)]) for r in runs_a if configuration(r) in by_config]
    return paired, len(runs_a) - len(paired), len(runs_b) - len(paired)


def spread(xs) -> str:
    return f"{statistics.mean(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def stage_row(name, paired, only_a, only_b) -> list:
    if not paired:
        return [name, 0, only_a, only_b, "–", "–"]
    val, test = ([abs(scores(rb)[i] - scores(ra)[i]) for ra, rb in paired] for i in (0, 1))
    worst = max(paired, key=lambda p: abs(scores(p[1])[0] - scores(p[0])[0]))[0]
    return [name, len(paired), only_a, only_b, f"{spread(val)} ({worst['dir']})", spread(test)]


def chosen(root: Path) -> dict:
    path = root / "tuned.json"
    return json.loads(path.read_text()).get("chosen", {}) if path.is_file() else {}


def choices(a: Path, b: Path) -> list:
    """The task x method pairs both tuning stages have chosen a rate for, and where the choices differ."""
    ca, cb = chosen(a), chosen(b)
    keys = sorted({(t, m) for t in ca for m in ca[t] if m in cb.get(t, {})},
                  key=lambda k: (rank(k[0], TASKS), rank(k[1], METHODS)))
    lines = ["## Rates chosen", ""]
    if not keys:
        return lines + ["No task x method has a rate chosen in both studies' tuned.json.", ""]
    differ = [[t, m, f"{ca[t][m]:g}", f"{cb[t][m]:g}"] for t, m in keys if ca[t][m] != cb[t][m]]
    lines += [f"The tuning stages (tuned.json) chose the same rate in {len(keys) - len(differ)} of the "
              f"{len(keys)} task x method pairs both chose for" + ("; these differ:" if differ else "."), ""]
    return lines + (table(["task", "method", "A", "B"], differ) if differ else [])


def cell_verdict(low, high) -> str:
    return "one seed" if low is None else "differs" if low > 0 or high < 0 else "not distinguishable"


def cells(paired) -> list:
    """Per grid cell: (task, method, frac, seeds, mean test A, mean test B, B - A, low, high)."""
    rows = []
    for (task, method, frac), ps in group(paired, lambda p: (p[0]["task"], p[0]["method"], p[0]["frac"])).items():
        test_a, test_b = ([scores(p[i])[1] for p in ps] for i in (0, 1))
        mean, low, high = claims.t_interval([y - x for x, y in zip(test_a, test_b)])
        rows.append((task, method, frac, len(ps), statistics.mean(test_a), statistics.mean(test_b), mean, low, high))
    return sorted(rows, key=lambda c: (rank(c[0], TASKS), rank(c[1], METHODS), c[2]))


def cell_table(rows) -> list:
    verdicts = [cell_verdict(c[7], c[8]) for c in rows]
    tested = len(rows) - verdicts.count("one seed")
    lines = ["## Grid cells", "", "Test score @best, mean over the seeds both studies ran; B − A with its 95% t "
             f"interval over those seeds. {verdicts.count('differs')} of the {tested} cells with two seeds or more "
             f"differ (the interval leaves out zero); {len(rows) - tested} cells have one seed, which has none.", ""]
    return lines + table(["task", "method", "frac", "seeds", "A", "B", "B − A", "95% t (seeds)", "verdict"],
                         [[t, m, f"{f:g}", n, f"{x:.2f}", f"{y:.2f}", f"{d:+.2f}", claims.interval(lo, hi), v]
                          for (t, m, f, n, x, y, d, lo, hi), v in zip(rows, verdicts)])


def devices(paired, i) -> str:
    return ", ".join(sorted({p[i]["environment"]["device_name"] for p in paired}))


def compare(a: Path, b: Path) -> str:
    tune, grid = pairs(a, b, tuning=True), pairs(a, b, tuning=False)
    if not tune[0] and not grid[0]:
        counts = "; ".join(f"{root}: {len(finished(root, True)) + len(finished(root, False))} finished runs"
                           for root in (a, b))
        raise SystemExit(f"no finished run of one study has the configuration of a run of the other ({counts})")
    trained = [p for p in grid[0] if "copied_from" not in p[0] and "copied_from" not in p[1]]
    copies = len(grid[0]) - len(trained)
    both = tune[0] + grid[0]
    lines = ["# The same configurations in two studies", "", f"- A: `{a}` ({devices(both, 0)})",
             f"- B: `{b}` ({devices(both, 1)})", "", "Scores x 100; *only A / only B*: finished runs with no "
             "counterpart (time-budget runs are never paired). Differences are absolute: mean / median / largest "
             f"(the run of A where the validation difference is largest). The grid row leaves out {copies} pairs "
             "in which a run was copied from its tuning stage (counted in the tuning row).", ""]
    lines += table(["stage", "pairs", "only A", "only B", "B − A, absolute: best validation", "test @best"],
                   [stage_row("tuning", *tune), stage_row("grid", trained, grid[1], grid[2])])
    lines += choices(a, b)
    rows = cells(grid[0])
    return "\n".join(lines + (cell_table(rows) if rows else []))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m study.compare STUDY_A STUDY_B")
    print(compare(Path(sys.argv[1]), Path(sys.argv[2])))
