"""Run a grid of fine-tuning configurations: one `python train.py` subprocess and one directory each.

  python -m study.sweep --grid cpu --out results/cpu-minilm --jobs 2                  (2 runs at once, a core each)
  python -m study.sweep --grid paper --out results/paper --shard 0/4 --device cuda:0   (4 GPUs, 4 shells)
  python -m study.sweep --grid smoke --model minilm --out /tmp/smoke
  python -m study.sweep --grid cpu --out results/cpu-minilm --dry-run                  (what is done, what is left)
  python -m study.sweep --grid cpu --out R --methods bitfit,lora --fracs 0.5 -- --eval-every 20
  python -m study.sweep --grid cpu --out R --rates results/S/tuned.json --fracs 1 --epochs 12   (S's rates, no tuning)

Two stages, both run by one command (`--stage all`, the default):
  tune  for each task x method, the rates of TUNE_LRS on all the training data with the first seed,
        in `tune/{task}-{method}-f1-s{seed}-lr{lr}`; the rate with the best validation score (our
        10% split of GLUE train, never GLUE dev: that is the test set) goes to `tuned.json`. When
        the best is the highest or lowest rate tried, one more a step beyond it is tried, up to two
        steps past the range (presets.beyond_edges): the best may lie outside it.
  main  the grid below, every run at its task x method's rate from tuned.json. Its first-seed run on
        all the data is the tuning run at the chosen rate (the same configuration), copied, not re-run.
A preset with tune=False (smoke) skips the first stage and uses train.py's default rates.
`--rates PATH` skips it too, for a variant of a study at that study's tuned.json rates.

The grids themselves (presets, runs, directories) are study/presets.py. Flags after `--` go to every
train.py unchanged.

A configuration whose results.json says "complete" or "time_budget" is skipped; one that says
"running" or "interrupted" is started again with --resume (train.py continues from resume.pt). One
whose directory a live process holds (train.py's lock, rundir.py: another sweep's run) is left to it,
"running elsewhere", not a failure: two sweeps into one folder (two shells, two machines on a shared
disk) share the work instead of doubling it.
`--jobs n` runs n configurations at once (study/jobs.py), each with 1/n of the cores; the time-budget
runs always run one at a time, with every core. Each run's output is appended to train.log in its
directory, after the command as typed from the repository root (`$ python train.py ... --out
results/...`), and shown when one run is at work. Ctrl-C (or SIGTERM) asks every running train.py to
stop, waits until each has written results.json, and ends the sweep; finished runs stay valid. (A
sweep started with `&` or nohup ignores Ctrl-C, as every background job does: stop it with
`kill PID`.) An unsharded sweep ends by writing RESULTS.md and the plots (study/report.py).
Exit code: 0 all ran or were done, 1 some failed, 130 stopped.
"""
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from flags import Parser
from study.jobs import Jobs, near, shown, threads_per_job
from study.presets import PRESETS, Preset, Run, beyond_edges, grid, shard, tuning_grid
from study.runs import DONE, read_results, study_masks
from study.tuning import TUNED, choose_rates, keep_other_choices, read_tuned, reuse_tuning_run

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
RESUMABLE = ("running", "interrupted", "failed")  # stopped early; train.py --resume continues it (a
# failed one from its last finished epoch, or from the start: the failure may have been the machine's)
PROTOCOL = ("model", "batch_size", "max_length", "pooling", "amp")  # common flags that change the results
RATES_FROM = "rates.json"  # with --rates: the rates this study took, and their file (relative to the study)


def foreign(results: dict, run: Run, flags: list) -> list:
    """Where the results.json in a cell's directory records another run than the cell's: the run fields
    (rundir.differences: task, method and its options, fraction, seed, rate, epochs, budget, model,
    pooling, precision, ...) of the config it saved against those train.py builds from the cell's command
    (`flags`: the sweep's common flags and those after --). [] when it is the cell's. Fields a results.json
    from an older train.py lacks are not compared."""
    import config
    import dropout
    import rundir
    saved = results.get("config")
    if not isinstance(saved, dict):
        return ["no config recorded"]
    cfg = config.parse_args([*run.train_args(), *flags])
    cfg.dropout_masks = dropout.resolve(cfg.dropout_masks, None, results)  # "auto": the run's own, as on --resume
    return rundir.differences(saved, cfg)


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = Parser(prog="python -m study.sweep", description=__doc__.split("\n")[0],
               epilog="Flags after -- are passed to every train.py unchanged.")
    p.add_argument("--grid", required=True, choices=sorted(PRESETS), help="preset grid")
    p.add_argument("--stage", choices=("all", "tune", "main"), default="all",
                   help="tune: the learning-rate stage only; main: the grid only (needs tuned.json); "
                        "all (default): tune (if the preset tunes), then main")
    p.add_argument("--out", required=True, help="results directory; one subdirectory per configuration")
    p.add_argument("--tasks", help="comma list; overrides the preset's tasks")
    p.add_argument("--methods", help="comma list; overrides the preset's methods")
    p.add_argument("--fracs", help="comma list in (0, 1]; overrides the preset's fractions")
    p.add_argument("--seeds", help="comma list of integers; overrides the preset's seeds")
    p.add_argument("--epochs", type=int, help="epochs of a fixed-epoch run; overrides the preset's")
    p.add_argument("--budget-minutes", type=float, help="time-budget runs' training minutes; 0 = none")
    p.add_argument("--budget-epochs", type=int, help="time-budget runs' epoch cap")
    p.add_argument("--shard", default="0/1", help="i/n: run only the i-th of n disjoint slices (0-based)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once on this machine, each with 1/jobs of the cores (OMP_NUM_THREADS); "
                        "time-budget runs still run one at a time. Output goes to train.log only")
    p.add_argument("--rates", help="tuned.json of another study: the grid's rates; this study's tuning "
                        "stage is skipped (not with --stage tune)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write RESULTS.md and the plots at the end (written only when unsharded)")
    p.add_argument("--dry-run", action="store_true", help="list the configurations and which are done")
    p.add_argument("--quiet", action="store_true", help="do not echo train.py's output (train.log has it)")
    # passed to train.py when given (or when the preset sets them)
    for flag, kind in [("--model", str), ("--data-dir", str), ("--batch-size", int), ("--max-length", int),
                       ("--amp", str), ("--device", str), ("--pooling", str)]:
        p.add_argument(flag, type=kind, help=f"passed to train.py {flag}")
    args = p.parse_args(argv)
    args.extra = extra

    preset = PRESETS[args.grid]
    split = lambda s, kind: tuple(kind(x) for x in s.split(",") if x.strip())  # noqa: E731
    try:
        axes = {k: split(getattr(args, k), kind) for k, kind in
                [("tasks", str), ("methods", str), ("fracs", float), ("seeds", int)] if getattr(args, k)}
    except ValueError as e:
        p.error(f"--fracs takes numbers and --seeds integers, separated by commas: {e}")
    preset = replace(preset, **axes, **{k: getattr(args, k) for k in ("epochs", "budget_minutes", "budget_epochs",
                                                                    "model", "max_length", "amp")
                                        if getattr(args, k) is not None})
    if not all(len(a) for a in (preset.tasks, preset.methods, preset.fracs, preset.seeds)):
        p.error("--tasks, --methods, --fracs and --seeds must not be empty")
    for problem in value_problems(args, preset)[:1]:
        p.error(problem)
    try:
        i, n = (int(x) for x in args.shard.split("/"))
        shard([], i, n)
    except ValueError:
        p.error(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {args.shard!r}")
    args.shard_i, args.shard_n = i, n
    if args.jobs < 1:
        p.error(f"--jobs must be an integer >= 1, got {args.jobs}")
    for problem in rates_problems(args, preset)[:1]:
        p.error(problem)
    args.preset = preset
    # Task and method names are checked by train.py's own lists; imported here, not at the top,
    # so that the grid arithmetic above needs no torch.
    import adapters
    import glue
    for name, given, allowed in [("--tasks", preset.tasks, sorted(glue.TASKS)),
                                 ("--methods", preset.methods, list(adapters.METHODS))]:
        bad = [x for x in given if x not in allowed and (name == "--tasks" or adapters.method_problem(x))]
        if bad:
            p.error(f"{name}: unknown {', '.join(bad)}; allowed: {', '.join(allowed)}"
                    + (", or several joined by '+' (e.g. bitfit+lora)" if name == "--methods" else ""))
    # hybrids by their canonical name, the one train.py uses: lora+bitfit and bitfit+lora are one configuration
    args.preset = replace(preset, methods=tuple(dict.fromkeys(adapters.canonical_method(m) for m in preset.methods)))
    return args


def rates_problems(args, preset: Preset) -> list:
    """A study tunes its own rates (tuned.json) or takes another's (--rates, rates.json), never both."""
    out, given = Path(args.out), args.rates
    problems = [
        given and (args.stage == "tune" or not preset.tune) and "--rates sets the grid's rates: it has no use "
        + ("with --stage tune" if preset.tune else f"with --grid {args.grid}, which does not tune"),
        given and not Path(given).is_file() and f"--rates {given}: no such file (a tuning stage's tuned.json)",
        given and (out / TUNED).is_file() and f"--rates: {out / TUNED} exists: that study tunes its own rates",
        not given and preset.tune and (out / RATES_FROM).is_file()
        and f"{out / RATES_FROM} exists: that study took its rates with --rates; pass the same --rates again"]
    return [x for x in problems if x]


def value_problems(args, preset: Preset) -> list:
    """train.py's checks (config.TrainConfig.problems) on the values the sweep will pass it, named by
    the sweep's flags; imported here, not at the top, so that the grid arithmetic needs no torch."""
    import config
    values = [("epochs", preset.epochs, "--epochs"), ("time_budget", preset.budget_minutes, "--budget-minutes"),
              ("epochs", preset.budget_epochs, "--budget-epochs"), *[("frac", f, "--fracs") for f in preset.fracs],
              *[("seed", x, "--seeds") for x in preset.seeds], ("max_length", preset.max_length, "--max-length"),
              ("model", preset.model, "--model"), ("batch_size", args.batch_size, "--batch-size"),
              ("device", args.device, "--device"), ("amp", args.amp, "--amp"), ("pooling", args.pooling, "--pooling")]
    return [p for name, v, flag in values if v is not None for p in config.value_problems(name, v, flag)]


def run_stage(stage: str, all_runs: list, args, common: dict, rates: dict = None) -> int:
    """Run this shard's part of one stage's configurations, skipping finished ones and resuming
    interrupted ones; -> exit code (0 all ran or were done, 1 some failed). KeyboardInterrupt passes,
    once every running train.py has saved its state."""
    runs = shard(all_runs, args.shard_i, args.shard_n)
    where = f"shard {args.shard_i}/{args.shard_n}: {len(runs)} of {len(all_runs)}"
    print(f"sweep --grid {args.grid}, {stage} stage -> {args.out} ({where} configurations)", flush=True)
    start = time.perf_counter()
    todo, counts, others = plan(runs, args, common, rates)
    elsewhere = counts["running elsewhere"]
    if others:
        print(f"warning: {len(others)} directories hold another run's results.json (listed above): not counted; "
              f"move them away to run those configurations", flush=True)
    if args.dry_run:
        print(f"dry run, {stage} stage ({where}): {counts['skipped']} done, {counts['to resume']} to resume, "
              f"{counts['to run']} to run{f', {len(others)} holding another run' if others else ''}"
              f"{f', {len(elsewhere)} running elsewhere' if elsewhere else ''}", flush=True)
        return 0
    codes, taken = execute(todo, args)
    elsewhere += taken
    failed = [run.name for run, (tag, run_dir, *_) in todo if tag not in taken and
              (codes.get(tag) != 0 or (read_results(run_dir) or {}).get("status") not in DONE)]
    print(f"{stage} stage done in {time.perf_counter() - start:.0f}s ({where}): "
          f"{len(todo) - len(failed) - len(taken)} ran, {counts['copied']} copied, {counts['skipped']} skipped, "
          f"{len(failed + others)} failed{' (' + ', '.join(failed + others) + ')' if failed + others else ''}"
          f"{f', {len(elsewhere)} running elsewhere (left to them)' if elsewhere else ''}", flush=True)
    failed += others  # a directory holding another run's results.json: the configuration is not done
    return 1 if failed else 0


def flag_list(common: dict) -> list:
    """The sweep's common flags as train.py takes them: ["--model", "minilm", ...], those given only."""
    return [x for k, v in common.items() if v is not None for x in ("--" + k.replace("_", "-"), str(v))]


def plan(runs: list, args, common: dict, rates: dict = None):
    """What each configuration needs, printed as it is decided: copied from the tuning stage, done
    (skipped), or to run or resume; a directory whose results.json is another run's (foreign) is none of
    these: never counted as the cell, never resumed or overwritten; nor is a directory a live process
    holds (rundir.holder: another sweep's train.py), left to it. -> (todo: [(Run, (tag, directory,
    command, start message, the command as train.log shows it))], counts (counts["running elsewhere"]:
    the tags of the held ones), names of the configurations whose directory holds another run)."""
    import rundir
    p, out = args.preset, Path(args.out)
    common_flags = flag_list(common)
    flags = common_flags + args.extra  # every train.py flag but the cell's own and --out
    counts = {"copied": 0, "skipped": 0, "to resume": 0, "to run": 0, "running elsewhere": []}
    todo, others = [], []
    for k, run in enumerate(runs, 1):
        run_dir = run.directory(out)
        tag = f"[{k}/{len(runs)}] {run.name}"
        holder = rundir.holder(run_dir)
        if holder:  # two sweeps into one folder share the work: this cell is the other's
            counts["running elsewhere"].append(tag)
            print(f"{tag}: running elsewhere ({holder}): left to it", flush=True)
            continue
        if rates and not (args.dry_run or args.rates) and \
                reuse_tuning_run(run, rates, p, out, lambda r: foreign(r, run, flags)):
            counts["copied"] += 1
            print(f"{tag}: copied from tune/ (the tuning run at the chosen rate {run.lr:g})", flush=True)
            continue
        results = read_results(run_dir)
        status = results["status"] if results else "new"
        diff = foreign(results, run, flags) if status in DONE or (status in RESUMABLE and "config" in results) else []
        if diff:
            others.append(run.name)
            print(f"{tag}: NOT COUNTED: {run_dir / 'results.json'} ({status}) is another run's: {', '.join(diff)}",
                  flush=True)
            continue
        if status in DONE:
            print(f"{tag}: done ({status})", flush=True)
            counts["skipped"] += 1
            continue
        resume = status in RESUMABLE or (run_dir / "resume.pt").is_file()
        kind = "to resume" if resume else "to run"
        counts[kind] += 1
        if args.dry_run:
            epochs = f", {len(results.get('epochs', []))} epochs saved" if results and status in RESUMABLE else ""
            print(f"{tag}: {kind} ({status}{epochs})", flush=True)
            continue
        cmd = [sys.executable, near(TRAIN), *run.train_args(), "--out", str(run_dir), *common_flags,
               *args.extra, *(["--resume"] if resume else [])]
        start_message = f"{tag}: {'resuming' if resume else 'running'} -> {run_dir / 'train.log'}"
        todo.append((run, (tag, run_dir, cmd, start_message, shown(cmd))))
    return todo, counts, others


def execute(todo: list, args) -> tuple:
    """Run the planned commands, --jobs at a time, then the time-budget runs one at a time with every
    core: what they measure is how far the budget goes on the machine. A cell that another process
    (another sweep's train.py) took in the meantime is left to it: not started when its turn comes, or,
    claimed at the same moment, refused by train.py. -> ({tag: exit code}, tags left to another process)."""
    import rundir
    dirs = {tag: run_dir for _, (tag, run_dir, *_) in todo}
    taken = []

    def elsewhere(tag):  # asked as a run's turn comes
        holder = rundir.holder(dirs[tag])
        if holder:
            taken.append(tag)
            return f"running elsewhere ({holder}): left to it"
        return None

    def finished(tag, code, seconds):  # called from a worker thread as each run ends
        results = read_results(dirs[tag])
        status = results["status"] if results else "no results.json"
        if code != 0 and (reason := elsewhere(tag)):  # train.py refused: another process claimed it first
            print(f"{tag}: {reason} (claimed as this one started)", flush=True)
        elif code == 0 and status in DONE:
            print(f"{tag}: {status} in {seconds:.0f}s", flush=True)
        elif status == "interrupted":  # stopped by the sweep's signal: not a failure
            print(f"{tag}: interrupted; it resumes on the next invocation", flush=True)
        else:
            print(f"{tag}: FAILED (exit code {code}, status {status}); see {dirs[tag] / 'train.log'}", flush=True)

    jobs, codes = Jobs(args.quiet), {}
    for budget in (False, True):
        batch = [item for run, item in todo if bool(run.budget_minutes) == budget]
        n = 1 if budget else args.jobs
        if batch:
            codes.update(jobs.run_all(batch, n, finished, threads_per_job(n), elsewhere))
    return codes, taken


def write_json_atomic(path: Path, obj: dict):
    """A JSON file, atomically (a reader never sees half of it), through a temporary file of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def write_report(out: Path):
    """RESULTS.md and the plots (study/report.py) at the end of an unsharded sweep (shards would write
    them at once: run the report when every shard is done). One that cannot be made is a note, not a
    failed sweep."""
    from study import report  # matplotlib, only when a report is made
    try:
        report.report(out)
    except (SystemExit, Exception) as e:  # SystemExit: nothing finished to report
        print(f"no report ({type(e).__name__}): {e}; the runs are unaffected", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    p, out = args.preset, Path(args.out)
    common = {"model": p.model, "data_dir": args.data_dir, "batch_size": args.batch_size,
              "max_length": p.max_length, "amp": p.amp, "device": args.device, "pooling": args.pooling,
              # a study's cells draw dropout masks as its committed runs did (torch, before the option)
              "dropout_masks": None if "--dropout-masks" in args.extra else study_masks(out)}
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop the sweep (and its train.py) like Ctrl-C
        if signal.getsignal(sig) is not signal.SIG_IGN:  # but not a hangup under nohup
            signal.signal(sig, signal.default_int_handler)
    code = 0
    try:
        if args.stage == "tune" or (args.stage == "all" and p.tune and not args.rates):
            tuning = tuning_grid(p)
            while True:  # the grid's rates, then one further while the best is at an edge
                code = max(code, run_stage("tune", tuning, args, common))
                tuned = choose_rates(tuning, out, lambda run, r: foreign(r, run, flag_list(common) + args.extra))
                more = [] if tuned["missing"] or args.dry_run else beyond_edges(tuning, tuned["chosen"], p)
                if not more:
                    break
                print("best rate at an edge of those tried: " + ", ".join(f"{r.task}/{r.method} {r.lr:g}" for r in more),
                      flush=True)
                tuning += more
            if not args.dry_run:
                write_json_atomic(out / TUNED, keep_other_choices(out / TUNED, tuned))
            for task, methods in tuned["chosen"].items():
                print(f"tuned rates, {task}: " + ", ".join(f"{m} {lr:g}" for m, lr in methods.items()), flush=True)
            if args.stage == "tune":
                return code
            if tuned["missing"] and not args.dry_run:
                print(f"the main stage waits for the tuning stage: {len(tuned['missing'])} tuning runs unfinished "
                      f"({', '.join(tuned['missing'][:4])}{', ...' if len(tuned['missing']) > 4 else ''})", flush=True)
                return code or 1
        rates = None
        if p.tune:
            rates, problem = read_tuned(Path(args.rates) if args.rates else out / TUNED, p, own=not args.rates)
            if problem and not (args.dry_run and not args.rates):  # (a study still tuning can be dry-run)
                print(f"error: {problem}", file=sys.stderr, flush=True)
                return 2
            if args.rates and not args.dry_run:  # where this study's rates came from, relative to the study
                source = os.path.relpath(Path(args.rates).resolve(), out.resolve())
                write_json_atomic(out / RATES_FROM, {"from": Path(source).as_posix(), "chosen": rates})
        code = max(code, run_stage("main", grid(p, rates), args, common, rates))
        if not (args.dry_run or args.no_report or args.shard_n > 1):
            write_report(out)
        return code
    except KeyboardInterrupt:
        print("sweep interrupted: finished runs are kept; interrupted runs resume on the next invocation",
              flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
