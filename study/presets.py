"""What the study runs: the presets (the paper's grid on BERT-base, the CPU study on MiniLM, ...),
one Run per configuration, the main grid and the tuning stage's grid, and shards of them.
Running them is study/sweep.py's job; this module needs nothing but the standard library.

The grid is methods x tasks x fractions x seeds fixed-epoch runs, in directories
`{task}-{method}-f{frac}-s{seed}`, plus one time-budget run per method x task on all the training
data with the first seed, `{task}-{method}-budget{minutes}-s{seed}`, whose epoch cap is set high so
that the budget, not the epoch count, ends it. The tuning stage trains each task x method at every
rate of TUNE_LRS, in `tune/{task}-{method}-f1-s{seed}-lr{lr}`, and one rate further while the best
is at an edge of those tried (beyond_edges).
"""
from dataclasses import dataclass
from pathlib import Path

# The tuning stage's rates: three log-spaced rates (1-2-5 or half-decade steps) spanning each
# method's published range for BERT-base. Full fine-tuning: BERT (Devlin et al. 2019, sec. A.3:
# 2e-5..5e-5) up to the 1e-4 that small models such as MiniLM are fine-tuned with. BitFit: Ben Zaken
# et al. (2022, sec. 3.1: 1e-4..1e-3) and one half-decade above, where BitFit on small models still
# gains. Adapters: Houlsby et al. (2019, sec. 3.1: 3e-5..3e-3), the inner three half-decades. LoRA:
# Hu et al. (2021, tab. 9: 4e-4..5e-4 on RoBERTa-base) a half-decade either side. The other families
# around their starting points (optim.DEFAULT_LR). A hybrid tunes over its lowest part's rates, as
# optim.default_lr takes the lowest part's rate.
TUNE_LRS = {"full": (2e-5, 5e-5, 1e-4), "bitfit": (3e-4, 1e-3, 3e-3), "adapter": (1e-4, 3e-4, 1e-3),
            "lora": (2e-4, 6e-4, 2e-3), "head": (3e-4, 1e-3, 3e-3), "prompt": (1e-3, 3e-3, 1e-2),
            "prefix": (1e-4, 3e-4, 1e-3), "ia3": (1e-3, 3e-3, 1e-2)}


@dataclass(frozen=True)
class Preset:
    methods: tuple  # fine-tuning methods (adapters.METHODS, or hybrids such as "bitfit+lora")
    tasks: tuple  # GLUE tasks (glue.TASKS)
    fracs: tuple  # fractions of the training pool; nested, so 0.3 is a subset of 0.5
    seeds: tuple  # one fixed-epoch run per seed
    epochs: int  # epochs of a fixed-epoch run
    budget_minutes: float  # training minutes of a time-budget run; 0 = no budget runs
    budget_epochs: int  # epoch cap of a time-budget run, high enough that the budget binds first
    model: str = None  # --model; None = train.py's default (google-bert/bert-base-uncased)
    max_length: int = None  # --max-length; None = train.py's default (128)
    tune: bool = True  # the main grid's rates come from the tuning stage (False: train.py's defaults)
    amp: str = None  # --amp; None = train.py's default (auto: bf16 where the hardware has it, else fp32)


PRESETS = {
    # arXiv 2401.04051's protocol: 20 epochs per run, 5 seeds, 10-minute budget runs, BERT-base.
    # The cap is generous because a fast GPU gets through a small task's epoch (MRPC: 104 steps of
    # 32) in seconds; an estimate, not a measurement: check epochs < cap in the budget table.
    "paper": Preset(methods=("full", "bitfit", "adapter", "lora"), tasks=("mrpc", "cola", "stsb"),
                    fracs=(0.3, 0.5, 0.7, 1.0), seeds=(0, 1, 2, 3, 4), epochs=20,
                    budget_minutes=10, budget_epochs=1000),
    # The CPU study on MiniLM (6 layers, hidden 384): the paper's grid with 3 seeds, in fp32 (amp off):
    # with auto, a CPU with native bf16 would train in bf16 and one without in fp32, and a study run
    # across machines would mix the two (this project's machines have been of both kinds). 6 epochs: in the
    # 10-minute runs of the first CPU study (full fine-tuning at 2e-5, schedule over the budget) the
    # validation score of full fine-tuning levelled off by epoch 3-4 on MRPC, 5-6 on STS-B, and
    # gained under 1 point per 2 epochs on CoLA after epoch 5 (the budget runs' evals, in
    # results/superseded/cpu-minilm-3epochs/*-full-budget10-s0/results.json).
    # Measured again on the tuned protocol with 12 epochs at 100% (results/gpu-minilm-epochs12, 3 seeds):
    # within 1 point of the best by epoch 3.7 (MRPC), 5.0 (CoLA), 3.7 (STS-B), CoLA flat from epoch 5 to 12.
    "cpu": Preset(methods=("full", "bitfit", "adapter", "lora"), tasks=("mrpc", "cola", "stsb"),
                  fracs=(0.3, 0.5, 0.7, 1.0), seeds=(0, 1, 2), epochs=6, budget_minutes=10, budget_epochs=100,
                  model="minilm", amp="off"),
    # The survey's other families on the CPU study's protocol: soft prompts, prefixes, (IA)^3, and two
    # hybrids (Xu et al. 2023, arXiv 2312.12148). Run it into the same --out as "cpu" to compare: it
    # tunes its own methods into that study's tuned.json, keeping cpu's choices (tuning.keep_other_choices),
    # and report.py compares only runs of one protocol (claims.protocol), so its epochs are cpu's.
    "families": Preset(methods=("prompt", "prefix", "ia3", "bitfit+lora", "adapter+bitfit"),
                       tasks=("mrpc", "cola", "stsb"), fracs=(0.3, 1.0), seeds=(0, 1), epochs=6,
                       budget_minutes=10, budget_epochs=100, model="minilm", amp="off"),
    # Seconds, not minutes: checks that the sweep, train.py and report.py fit together.
    # 66 and 132 training examples of 16 tokens; evaluating 774 examples per run is most of the work.
    "smoke": Preset(methods=("bitfit", "lora"), tasks=("mrpc",), fracs=(0.02, 0.04), seeds=(0,), epochs=1,
                    budget_minutes=0.01, budget_epochs=100, model="minilm", max_length=16, tune=False),
}


@dataclass(frozen=True)
class Run:
    """One configuration of the grid: what train.py is told beyond the sweep's common flags."""
    task: str
    method: str
    frac: float
    seed: int
    epochs: int
    budget_minutes: float = 0.0  # > 0: a time-budget run
    lr: float = None  # --lr; None = train.py's default for the method
    tuning: bool = False  # a run of the tuning stage: its directory is under tune/ and names its rate

    @property
    def name(self) -> str:
        kind = f"budget{self.budget_minutes:g}" if self.budget_minutes else f"f{self.frac:g}"
        return f"{self.task}-{self.method}-{kind}-s{self.seed}" + (f"-lr{self.lr:g}" if self.tuning else "")

    def directory(self, out: Path) -> Path:
        return out / "tune" / self.name if self.tuning else out / self.name

    def train_args(self) -> list:
        args = ["--task", self.task, "--method", self.method, "--frac", f"{self.frac:g}",
                "--seed", str(self.seed), "--epochs", str(self.epochs)]
        args += ["--lr", f"{self.lr:g}"] if self.lr is not None else []
        return args + (["--time-budget", f"{self.budget_minutes:g}"] if self.budget_minutes else [])


def grid(p: Preset, rates: dict = None) -> list:
    """Every configuration of a preset's main grid, in a fixed order: seed-major, so that a sweep
    stopped halfway has every cell with its first seeds; the time-budget runs last. `rates`
    (task -> method -> lr, from tuned.json) sets each run's --lr; None leaves train.py's default."""
    lr = lambda task, method: rates[task][method] if rates else None  # noqa: E731
    runs = [Run(task, method, frac, seed, p.epochs, lr=lr(task, method))
            for seed in p.seeds for task in p.tasks for method in p.methods for frac in p.fracs]
    if p.budget_minutes:
        runs += [Run(task, method, 1.0, p.seeds[0], p.budget_epochs, p.budget_minutes, lr=lr(task, method))
                 for task in p.tasks for method in p.methods]
    return runs


def tune_lrs(method: str) -> tuple:
    """TUNE_LRS of a method; a hybrid ("bitfit+lora") takes its lowest part's rates."""
    return min((TUNE_LRS[part] for part in method.split("+")), key=min)


def tuning_grid(p: Preset) -> list:
    """The tuning stage: each task x method x rate once, on all the training data, first seed,
    the main grid's epochs; task-major so that one task's choices are complete first."""
    return [Run(task, method, 1.0, p.seeds[0], p.epochs, lr=lr, tuning=True)
            for task in p.tasks for method in p.methods for lr in tune_lrs(method)]


EDGE_STEPS = 2  # rates tried beyond an edge of TUNE_LRS at most, on each side


def beyond_edges(tuning: list, chosen: dict, p: Preset) -> list:
    """A chosen rate at an edge of those tried says the best may lie beyond it: one more run, a step
    further (the ratio of the two outermost rates on that side, rounded to one significant digit),
    up to EDGE_STEPS steps past the range of TUNE_LRS. -> the new tuning Runs (none once every
    choice is inside its range, or the steps are used up)."""
    more = []
    for task, methods in chosen.items():
        for method, lr in methods.items():
            tried = sorted({r.lr for r in tuning if (r.task, r.method) == (task, method)})
            base = tune_lrs(method)
            if len(tried) < 2 or lr not in (tried[0], tried[-1]):
                continue
            up = lr == tried[-1]
            outside = sum(x > max(base) if up else x < min(base) for x in tried)
            if outside >= EDGE_STEPS:
                continue
            step = tried[-1] / tried[-2] if up else tried[0] / tried[1]
            nxt = float(f"{lr * step:.0e}")  # one significant digit: 2e-3 x 3.33 -> 7e-3
            if nxt not in tried:  # (a step that rounds back to a rate tried would never end)
                more.append(Run(task, method, 1.0, p.seeds[0], p.epochs, lr=nxt, tuning=True))
    return more


def shard(runs: list, i: int, n: int) -> list:
    """The i-th of n disjoint slices (0 <= i < n), round-robin so that each slice gets a mix of
    tasks and methods; the union over i = 0..n-1 is `runs`, each configuration exactly once."""
    if not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {i}/{n}")
    return runs[i::n]
