"""Where a CPU training step goes, per method: torch.profiler's events sorted into parts that sum to the step.

  python -m study.breakdown --model minilm --methods full bitfit lora --amp bf16 --dropout-masks fast

Each method trains a few steps on real GLUE batches (MRPC, batch 32, length-bucketed as train.py makes them),
first untimed (every batch shape once: oneDNN builds its kernels on a shape's first use), then each batch
timed without the profiler and profiled, three times each in alternation; the fastest of each counts.
Every profiled event's self time (its time less its children's) goes to exactly one part, so the parts
sum to the profiled step exactly; the table sets that sum beside the measured step (the profiler's own
overhead, and the machine's noise, are the difference) and names the time no operator accounts for,
`unattributed`: Python between operators and the autograd engine's own work.

How an event is sorted (`category`, over the event and its enclosing events):
  optimizer      anything inside the optimizer phase: unscale, gradient clipping, AdamW, zero_grad
  dropout masks  anything inside aten::bernoulli_ (torch's masks, SDPA's included) or dropout::masks
                 (dropout.MaskStream's), whatever encloses it
  otherwise the outermost enclosing operator with a rule decides:
  matmul         aten::mm / addmm: forward; in the backward pass, by what the product sums over:
                 the rows (B*T tokens, or B pooled examples) is a weight gradient, a feature width
                 an input gradient (a batch whose rows equal a layer's width would make the two
                 indistinguishable: `usable_batches` leaves such batches out)
  attention      SDPA, our attention_with_own_mask, and the batched products and softmax of attention
  casts/copies   aten::to / _to_copy / copy_ / clone / contiguous: autocast's casts, gradient casts
  elementwise+norm  every other operator: LayerNorm, GELU, adds, dropout's multiply, embeddings, loss
Numbers are CPU time on the thread that runs the step (the autograd engine runs a CPU backward on it).
"""
import argparse
import copy
import math
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

import adapters
import data
import dropout
import glue
from checkpoint import load_pretrained
from config import run_cli
from lora import LoRALinear
from precision import autocast, grad_scaler, keep_frozen_in_compute_dtype, pick_amp

STEP, FORWARD = "breakdown::step", "breakdown::forward"  # record_function scopes of train_step
BACKWARD, OPTIMIZER = "breakdown::backward", "breakdown::optimizer"
PARTS = ("matmul fwd", "matmul input-grad", "matmul weight-grad", "attention", "dropout masks",
         "elementwise+norm", "casts/copies", "optimizer", "unattributed")
# One step's time varies by up to 10 % between runs of it on a shared 2-core VM: 5 batches, each timed
# once and profiled once, put the parts at 0.92-1.08 of the measured step; these gave 0.995-1.044
STEPS = 10  # batches per method
REPEATS = 3  # runs of each batch per kind (timed, profiled); the fastest of each kind counts
MASKS = re.compile(r"^(aten::bernoulli_?|dropout::masks)$")
MATMUL = re.compile(r"^aten::(mm|addmm)$")
RULES = (  # (part, anchored pattern over event names): the outermost enclosing event that matches decides
    ("matmul", MATMUL),
    ("attention", re.compile(r"^(aten::(scaled_dot_product_attention|_scaled_dot_product_\w+|bmm|baddbmm|softmax|"
                             r"_softmax|_softmax_backward_data)|attention_with_own_mask)$")),
    ("casts/copies", re.compile(r"^aten::(to|_to_copy|copy_|clone|contiguous)$")),
)
FRAMEWORK = re.compile(r"^(breakdown::(step|forward|backward)|autograd::engine::evaluate_function: .*|.*Backward\d*|"
                       r"torch::autograd::AccumulateGrad)$")  # own time: Python and the autograd engine


def chain(event) -> list:
    """The event and the events enclosing it, outermost first."""
    out = []
    while event is not None:
        out.append(event)
        event = event.cpu_parent
    return out[::-1]


def contraction(event) -> int:
    """The length a matrix product sums over: mm(a (n, k), b (k, m)) or addmm(c, a (n, k), b (k, m)) -> k."""
    shapes = event.input_shapes
    return shapes[0][1] if event.name == "aten::mm" else shapes[1][1]


def matmul_part(kernel, in_backward: bool, rows: set, widths: set) -> str:
    """Forward, or in the backward pass a weight gradient (sums over rows) or an input gradient (over a width)."""
    if not in_backward:
        return "matmul fwd"
    k = contraction(kernel)
    if k in rows and k in widths:
        raise ValueError(f"a backward matmul sums over {k}, both a row count and a layer width: "
                         "leave such batches out (usable_batches)")
    return "matmul weight-grad" if k in rows else "matmul input-grad"


def category(event, rows: set, widths: set) -> str:
    """The part an event's self time belongs to (the module docstring says how)."""
    names = [e.name for e in chain(event)]
    if OPTIMIZER in names:
        return "optimizer"
    if any(MASKS.match(n) for n in names):
        return "dropout masks"
    for e in chain(event):
        part = next((p for p, pattern in RULES if pattern.match(e.name)), None)
        if part == "matmul":
            return matmul_part(e, BACKWARD in names, rows, widths)
        if part:
            return part
    return "unattributed" if FRAMEWORK.match(event.name) else "elementwise+norm"


def categorized(events, rows: set, widths: set) -> list:
    """[(event, part)] for every event inside a STEP scope; events outside the steps are left out."""
    return [(e, category(e, rows, widths)) for e in events if chain(e)[0].name == STEP]


def parts_of(events, rows: set, widths: set) -> dict:
    """{part: microseconds}: the events' self times summed by part."""
    parts = dict.fromkeys(PARTS, 0.0)
    for e, part in categorized(events, rows, widths):
        parts[part] += e.self_cpu_time_total
    return parts


def widths_of(model: nn.Module) -> set:
    """Every width a matrix product of the model's layers sums over: Linear in/out features, LoRA ranks."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {w for m in linears for w in (m.in_features, m.out_features)} | \
           {m.r for m in model.modules() if isinstance(m, LoRALinear)}


def distinct_batches(batches: list, widths: set, extra_rows=0) -> list:
    """The batches whose row counts (B, and B * (T + extra_rows) for soft-prompt tokens) are no layer width."""
    def rows(b):
        B, T = b["input_ids"].shape
        return {B, B * (T + extra_rows)}
    return [b for b in batches if not rows(b) & widths]


def usable_batches(model, batches: list, steps: int) -> list:
    """The first `steps` of `batches` whose rows are no layer width of `model` (its soft prompt's V
    virtual tokens counted); an error when none is left."""
    prompt = model.bert.embeddings.prompt
    kept = distinct_batches(batches, widths_of(model), 0 if prompt is None else prompt.weight.shape[0])[:steps]
    if not kept:
        raise ValueError(f"none of {len(batches)} batches has row counts distinct from the layer widths "
                         f"{sorted(widths_of(model))}")
    return kept


def train_step(model, params, optimizer, scaler, batch, amp_dtype):
    """One step as study/bench.py times it, in the three named phases the categories read."""
    device = torch.device("cpu")
    with record_function(STEP):
        with record_function(FORWARD), autocast(device, amp_dtype):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        with record_function(BACKWARD):
            scaler.scale(F.cross_entropy(logits.float(), batch["labels"])).backward()
        with record_function(OPTIMIZER):
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)


def row_counts(model):
    """Forward pre-hooks that collect the rows (product of the leading dims) every Linear multiplies."""
    rows = set()
    hooks = [m.register_forward_pre_hook(lambda _, args: rows.add(args[0].numel() // args[0].shape[-1]))
             for m in model.modules() if isinstance(m, nn.Linear)]
    return rows, hooks


def profiled(model, trainable: list, batches: list, amp_dtype, repeats: int = REPEATS) -> tuple:
    """Train `model` (on the CPU) on each batch 1 + 2 x `repeats` times: once untimed (a pass over all
    of them first), then, in turn, timed without the profiler and profiled, `repeats` times each; the
    fastest of each kind counts (a step slowed by another process is not the step's time), and the two
    kinds swap places from one batch to the next (timed first on even batches), so that neither a
    machine whose speed drifts nor the step that comes second is credited to one kind. Returns the
    counted profiled steps' events, the row counts the Linears saw, and the mean timed step in seconds."""
    model.train()
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    scaler = grad_scaler(torch.device("cpu"), amp_dtype)
    for b in batches:  # untimed: every shape once
        train_step(model, params, optimizer, scaler, b, amp_dtype)
    rows, hooks = row_counts(model)  # on in both kinds of step: the same work
    measured, events = 0.0, []
    for i, b in enumerate(batches):
        fastest, fastest_profiled, kept = math.inf, math.inf, []
        for timed in ((True, False) if i % 2 == 0 else (False, True)) * repeats:
            if timed:
                start = time.perf_counter()  # CPU work is synchronous: the clock needs no synchronisation
                train_step(model, params, optimizer, scaler, b, amp_dtype)
                fastest = min(fastest, time.perf_counter() - start)
                continue
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                train_step(model, params, optimizer, scaler, b, amp_dtype)
            run = prof.events()
            microseconds = step_microseconds(run)
            if microseconds < fastest_profiled:
                fastest_profiled, kept = microseconds, run
        measured += fastest
        events += kept
    for h in hooks:
        h.remove()
    return events, rows, measured / len(batches)


def step_microseconds(events) -> float:
    """The profiled steps' own time: their STEP scopes' total."""
    return sum(e.cpu_time_total for e in events if e.name == STEP)


def measure_parts(model, trainable: list, batches: list, amp_dtype, steps: int = STEPS) -> dict:
    """The measured step (no profiler), the profiled step and {part: seconds}, means per step over the
    first `steps` usable batches (see `profiled`, `usable_batches`). Trains `model` on the CPU."""
    batches = usable_batches(model, batches, steps)
    events, rows, measured = profiled(model, trainable, batches, amp_dtype)
    parts = {k: v * 1e-6 / len(batches) for k, v in parts_of(events, rows, widths_of(model)).items()}
    step = step_microseconds(events) * 1e-6 / len(batches)
    return {"step_seconds": measured, "profiled_step_seconds": step, "parts_seconds": parts,
            "parts_sum_vs_step": sum(parts.values()) / measured, "steps": len(batches)}


def table(rows: list) -> str:
    """One column per method: each part in ms and % of the parts' sum, then the sum and the measured step."""
    head = f"{'part (ms per step, % of sum)':30}" + "".join(f"{r['method']:>18}" for r in rows)
    lines = [head]
    for part in PARTS:
        cells = [(1e3 * r["parts_seconds"][part], 100 * r["parts_seconds"][part] / sum(r["parts_seconds"].values()))
                 for r in rows]
        lines.append(f"{part:30}" + "".join(f"{ms:11.1f} {pct:5.1f}%" for ms, pct in cells))
    lines.append(f"{'sum of parts (profiled step)':30}" + "".join(f"{1e3 * sum(r['parts_seconds'].values()):11.1f}"
                                                                   f"{'':7}" for r in rows))
    lines.append(f"{'measured step, no profiler':30}" + "".join(f"{1e3 * r['step_seconds']:11.1f}{'':7}" for r in rows))
    lines.append(f"{'sum / measured':30}" + "".join(f"{r['parts_sum_vs_step']:11.3f}{'':7}" for r in rows))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="minilm", help="checkpoint directory, 'minilm' or a hub id")
    p.add_argument("--task", default="mrpc", help="GLUE task whose batches are trained on")
    p.add_argument("--methods", nargs="+", default=["full", "bitfit", "lora", "adapter", "head"],
                   help="methods to break down (adapters.MethodConfig checks the names)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example after truncation")
    p.add_argument("--steps", type=int, default=STEPS, help="batches, each trained on untimed, timed and profiled")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"), help="autocast precision on the CPU")
    p.add_argument("--dropout-masks", default="torch", choices=dropout.MODES, help="torch's masks or dropout.py's")
    p.add_argument("--cast-frozen", action=argparse.BooleanOptionalAction, default=True,
                   help="under bf16, store frozen Linear weights in bf16 once (precision.keep_frozen_in_compute_dtype)")
    p.add_argument("--data-dir", default="", help="GLUE directory; '' = $GLUE_DIR, else ~/.cache/bertfit/glue_data")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError(f"--steps and --batch-size must be >= 1, got {args.steps}, {args.batch_size}")
    amp_dtype = pick_amp(args.amp, torch.device("cpu"))
    torch.manual_seed(0)
    base, tokenizer = load_pretrained(args.model, num_labels=2, verbose=False)
    files = data.read_task_files(glue.get_task(args.task), args.data_dir or None)
    task_data = data.load_task_data(files, tokenizer, max_length=args.max_length, frac=1.0, seed=0)
    all_batches = data.batches(task_data.train, args.batch_size, shuffle=True, seed=0, epoch=0)
    rows = []
    for method in args.methods:
        cfg = adapters.MethodConfig(method=method)
        model = copy.deepcopy(base)
        trainable = adapters.apply_method(model, cfg)
        dropout.set_masks(model, args.dropout_masks, seed=0)
        if args.cast_frozen:
            keep_frozen_in_compute_dtype(model, amp_dtype)
        rows.append({"method": method, **measure_parts(model, trainable, all_batches, amp_dtype, args.steps)})
    print(f"{args.model}, {args.task}, batch {args.batch_size}, {amp_dtype or 'fp32'}, dropout masks "
          f"{args.dropout_masks}, frozen cast {'on' if args.cast_frozen and amp_dtype else 'off'}, "
          f"{torch.get_num_threads()} threads")
    print(table(rows))
    return rows


if __name__ == "__main__":
    run_cli(main)
