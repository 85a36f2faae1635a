"""Measure each method's training and evaluation speed on real GLUE batches, in one run.

  python -m study.bench --model minilm --methods full bitfit adapter lora head --compare-hf
  python -m study.bench --model minilm --methods prompt prefix ia3 bitfit+lora --steps 10

Per method: median training-step time (device-synchronized, warm-up steps left out), real
(non-pad) tokens/s over the measured steps, evaluation tokens/s (inference mode, larger
batches), peak memory (CUDA), trainable parameters and optimizer-state bytes. Ratios against
our own full fine-tuning come from the same run, on the same machine.

--compare-hf runs the same measurement on transformers' BertForSequenceClassification (peft for
LoRA) with the same weights, batch size and dtype, for the methods in HF_REFERENCE. The reference
gets its usual data pipeline: random batches padded to their longest sequence
(DataCollatorWithPadding); ours gets length-bucketed batches. Both see the same examples;
throughput counts real tokens only.
--model bert-base-random builds BERT-base's config with random weights: speed only.

--memory prints each method's training-memory bill instead (memory.py: frozen and trainable weights,
gradients, AdamW state, saved activations, weight casts, buffers) at --batch-size x --max-length and at
the task's median length-bucketed batch length. --breakdown adds, per method, where a step's time goes
(study/breakdown.py: matmuls forward / input-gradient / weight-gradient, attention, dropout masks,
elementwise, optimizer, casts; CPU). Each model draws its dropout masks as train.py would
(--dropout-masks) and, under bf16, keeps its frozen Linear weights in bf16, as train.py does.
"""
import argparse
import gc
import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import adapters
import data
import dropout
import glue
import memory
from model import BertConfig, BertForSequenceClassification, encoder_flops_per_token
from runinfo import SyncTimer, environment, reset_peak_memory, synchronize, write_json
from tokenizer import BertTokenizer
from checkpoint import load_pretrained, minilm_dir
from config import TrainConfig, run_cli
from precision import AMP_CHOICES, autocast, grad_scaler, keep_frozen_in_compute_dtype, pick_amp, pick_device
from study import breakdown

HF_REFERENCE = ("full", "bitfit", "lora", "head")  # methods hf_model builds the reference way
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}  # dense


def build(model_name, pooling):
    if model_name == "bert-base-random":
        model = BertForSequenceClassification(BertConfig(num_labels=2, pooling=pooling or "cls"))
        return model, BertTokenizer.from_dir(minilm_dir())  # MiniLM ships bert-base-uncased's vocabulary
    return load_pretrained(model_name, num_labels=2, pooling=pooling, verbose=False)


def optimizer_state_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.ndim > 0)


def hf_model(ours, method_cfg):
    """transformers' BERT with our weights, the same method applied its usual way (peft for LoRA)."""
    import transformers
    c = ours.config
    ref = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, num_labels=c.num_labels,
        attn_implementation="sdpa"))
    ref.load_state_dict(ours.state_dict(), strict=True)
    method = method_cfg.method
    if method == "lora":
        import peft
        return peft.get_peft_model(ref, peft.LoraConfig(
            task_type="SEQ_CLS", r=method_cfg.lora_r, lora_alpha=method_cfg.lora_alpha,
            lora_dropout=method_cfg.lora_dropout, target_modules=list(method_cfg.lora_targets),
            modules_to_save=["classifier"] + (["pooler"] if method_cfg.train_pooler else [])))
    head = ("classifier.",) + (("bert.pooler.",) if method_cfg.train_pooler else ())  # adapters.HEAD, POOLER
    for name, p in ref.named_parameters():
        p.requires_grad = (method == "full" or name.startswith(head)
                           or (method == "bitfit" and name.endswith(".bias")))  # the pooler's bias too
    return ref


def hf_batches(split, batch_size, pad_id, seed):
    """The reference pipeline: a random permutation cut into batches, each padded to its longest."""
    order = list(range(len(split)))
    random.Random(seed).shuffle(order)
    out = []
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        T = max(len(split.input_ids[j]) for j in idx)
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        types = torch.zeros_like(ids)
        for r, j in enumerate(idx):
            ids[r, :len(split.input_ids[j])] = torch.tensor(split.input_ids[j])
            types[r, :len(split.token_type_ids[j])] = torch.tensor(split.token_type_ids[j])
        out.append({"input_ids": ids, "attention_mask": (ids != pad_id).long(), "token_type_ids": types,
                    "labels": torch.as_tensor(split.labels[idx], dtype=torch.long)})
    return out


def warm_up_batches(first: list, timed: list) -> list:
    """What runs untimed before `timed`: the usual first batches, then one batch of every shape in
    `timed` that they lack. A GPU prepares its kernels on the first use of a shape (oneDNN on a CPU
    too), and length-bucketed batches have many shapes: on an H100 in bf16, full fine-tuning timed
    first in a process took 198.5 ms a step, timed again 42.1 ms, when only 3 steps warmed up."""
    seen = {tuple(b["input_ids"].shape) for b in first}
    more = []
    for b in timed:
        shape = tuple(b["input_ids"].shape)
        if shape not in seen:
            seen.add(shape)
            more.append(b)
    return first + more


def measure(model, trainable, train_batches, eval_batches, args, device, amp_dtype, is_hf=False):
    model.to(device).train()
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(params, lr=args.lr or 1e-4, fused=device.type in ("cuda", "cpu"))
    scaler = grad_scaler(device, amp_dtype)  # fp16 trains with loss scaling, as in train.py
    fwd = torch.compile(model) if args.compile else model

    def logits_of(b):
        out = fwd(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        return out.logits if is_hf else out

    reset_peak_memory(device)
    step_times, tokens = [], 0
    timed = train_batches[args.warmup:args.warmup + args.steps]
    untimed = warm_up_batches(train_batches[:args.warmup], timed)
    for i, batch in enumerate(untimed + timed):
        b = {k: v.to(device) for k, v in batch.items() if k != "index"}
        timer = SyncTimer(device)
        with autocast(device, amp_dtype):
            logits = logits_of(b)
        scaler.scale(F.cross_entropy(logits.float(), b["labels"])).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        seconds = timer.elapsed()
        if i >= len(untimed):
            step_times.append(seconds)
            tokens += int(batch["attention_mask"].sum())
    model.eval()
    eval_tokens, eval_seconds = 0, 0.0
    with torch.inference_mode(), autocast(device, amp_dtype):
        for batch in warm_up_batches([], eval_batches):
            logits_of({k: v.to(device) for k, v in batch.items() if k not in ("index", "labels")})
        timer = SyncTimer(device)
        for batch in eval_batches:
            logits_of({k: v.to(device) for k, v in batch.items() if k not in ("index", "labels")})
            eval_tokens += int(batch["attention_mask"].sum())
        eval_seconds = timer.elapsed()
    synchronize(device)
    return {"step_seconds_median": float(np.median(step_times)), "steps": len(step_times),
            "train_tokens_per_second": tokens / sum(step_times),
            "eval_tokens_per_second": eval_tokens / eval_seconds,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
            "trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in model.parameters()),
            "optimizer_state_bytes": optimizer_state_bytes(optimizer)}


def mfu(row, config, device, seq_len):
    """Model-FLOPs utilisation: 3x the forward FLOPs per real token (forward + backward) over peak."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    if peak is None:
        return None
    return 3 * encoder_flops_per_token(config, seq_len) * row["train_tokens_per_second"] / (peak * 1e12)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: X)' to every flag's help, except where the help says what '' means and for switches."""

    def _get_help_string(self, action):
        if action.default is False or action.default in ("", None):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--model", default="minilm", help="checkpoint directory, 'minilm', a hub id, or "
                   "bert-base-random (BERT-base's shape with random weights: speed only)")
    p.add_argument("--task", default="mrpc", choices=sorted(glue.TASKS), help="GLUE task whose batches are measured")
    p.add_argument("--methods", nargs="+", default=list(adapters.METHODS), type=adapters.method_flag,
                   help=f"methods to measure: {adapters.METHOD_HELP}")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="cls by default, so that our model and transformers' compute the same thing")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, default=128, help="evaluation batch size")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example after truncation")
    p.add_argument("--steps", type=int, default=30,
                   help="measured training steps per method (more than an epoch has: the whole epoch)")
    p.add_argument("--warmup", type=int, default=3,
                   help="training steps run first and left out of the timing (then, untimed, one of each batch "
                        "shape they lack)")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="autocast precision (fp16: with a GradScaler, CUDA only)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--lr", type=float, default=0.0, help="AdamW learning rate; 0 = 1e-4 (speed does not depend on it)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--compare-hf", action="store_true",
                   help=f"also measure transformers (+ peft for LoRA) for {', '.join(HF_REFERENCE)}")
    p.add_argument("--data-dir", default="", help="GLUE directory; '' = $GLUE_DIR, else ~/.cache/bertfit/glue_data")
    p.add_argument("--out", default="", help="JSON file of the results; '' = bench-<device>.json")
    p.add_argument("--dropout-masks", nargs="+", default=["auto"], choices=("auto", "torch", "fast"),
                   help="as train.py's (auto = fast on a CPU, torch on CUDA); several: each method is measured "
                        "under each in turn, and the table gives fast against torch")
    p.add_argument("--memory", action="store_true", help="print each method's memory bill instead of timing it")
    p.add_argument("--breakdown", action="store_true",
                   help="also split each method's step into parts with the profiler (CPU)")
    return p


def parse_args(argv=None):
    """CLI -> args; values are range-checked with train.py's checks (config.TrainConfig) where the flags
    mean the same, so a bad value fails before anything loads."""
    p = build_parser()
    args = p.parse_args(argv)
    problems = TrainConfig(**{name: getattr(args, name) for name in
                              ("model", "batch_size", "eval_batch_size", "max_length", "lr", "device")}).problems()
    problems += [f"--steps must be >= 1, got {args.steps}" if args.steps < 1 else None,
                 f"--warmup must be >= 0 steps, got {args.warmup}" if args.warmup < 0 else None]
    for problem in [x for x in problems if x][:1]:
        p.error(problem)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    amp_dtype = pick_amp(args.amp, device)
    torch.manual_seed(0)
    base, tokenizer = build(args.model, args.pooling)
    files = data.read_task_files(glue.get_task(args.task), args.data_dir or None)
    task_data = data.load_task_data(files, tokenizer, max_length=args.max_length, frac=1.0, seed=0)
    ours_train = data.batches(task_data.train, args.batch_size, shuffle=True, seed=0, epoch=0)
    ours_eval = data.batches(task_data.test, args.eval_batch_size, shuffle=False)
    hf_train = hf_batches(task_data.train, args.batch_size, tokenizer.pad_token_id, seed=0)
    hf_eval = hf_batches(task_data.test, args.eval_batch_size, tokenizer.pad_token_id, seed=0)
    mean_len = float(np.mean([len(x) for x in task_data.train.input_ids]))
    if args.memory:
        return memory_tables(base, args, amp_dtype, ours_train, device)
    rows = []
    for method, masks in [(m, dropout.resolve(x, device)) for m in args.methods for x in args.dropout_masks]:
        cfg = adapters.MethodConfig(method=method)
        model, trainable = prepared(base, cfg, masks, amp_dtype)
        row = {"method": method, "stack": "bertfit", "dropout_masks": masks,
               **measure(model, trainable, ours_train, ours_eval, args, device, amp_dtype)}
        row["mfu"] = mfu(row, base.config, device, mean_len)
        if args.breakdown:
            row["breakdown"] = breakdown.measure_parts(*prepared(base, cfg, masks, amp_dtype), ours_train, amp_dtype)
        rows.append(row)
        print(json.dumps(row))
        del model, trainable  # freed before the next model is measured: peak memory counts one model at a time
        gc.collect()  # (AdamW's first use leaves a reference cycle through measure's frame)
        # no adapter, prompt, prefix, (IA)^3 or hybrid reference; measured once, with the first masks
        if args.compare_hf and method in HF_REFERENCE and masks == dropout.resolve(args.dropout_masks[0], device):
            torch.manual_seed(0)
            ref = hf_model(model_fresh(base), cfg)
            ref_trainable = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
            rows.append({"method": method, "stack": "hf",
                         **measure(ref, ref_trainable, hf_train, hf_eval, args, device, amp_dtype, is_hf=True)})
            print(json.dumps(rows[-1]))
            del ref, ref_trainable
            gc.collect()
    result = {"model": args.model, "task": args.task, "batch_size": args.batch_size, "max_length": args.max_length,
              "environment": environment(device, amp_dtype), "rows": rows, "ratios": ratios(rows),
              "padding_fraction": {"bertfit": data.padding_fraction(ours_train), "hf": data.padding_fraction(hf_train)}}
    out = Path(args.out or f"bench-{device.type}.json")
    write_json(out, result)
    print_table(result)
    if args.breakdown:
        print("\nwhere a training step's time goes (torch.profiler; study/breakdown.py)")
        print(breakdown.table([{"method": r["method"], **r["breakdown"]} for r in rows if "breakdown" in r]))
    print(f"wrote {out}")
    return result


def prepared(base, cfg, masks: str, amp_dtype) -> tuple:
    """A fresh copy of `base` with the method applied, as train.py prepares it: its dropout masks, and
    frozen Linear weights kept in bf16 under bf16 autocast. -> (model, trainable)."""
    model = model_fresh(base)
    trainable = adapters.apply_method(model, cfg)
    dropout.set_masks(model, masks, seed=0)
    keep_frozen_in_compute_dtype(model, amp_dtype)
    return model, trainable


def memory_tables(base, args, amp_dtype, train_batches, device) -> dict:
    """--memory: each method's bill (memory.account) at --max-length and at the median bucketed length."""
    bucketed = int(np.median([b["input_ids"].shape[1] for b in train_batches]))
    result = {"model": args.model, "task": args.task, "batch_size": args.batch_size,
              "environment": environment(device, amp_dtype), "tables": {}}
    for length in dict.fromkeys((args.max_length, bucketed)):
        accounts = memory.method_accounts(base.to(device), args.methods, args.batch_size, length, amp_dtype)
        result["tables"][str(length)] = [a.record() for a in accounts]
        what = "--max-length" if length == args.max_length else f"{args.task}'s median bucketed batch"
        print(f"\n{args.model}, batch {args.batch_size}, length {length} ({what}), "
              f"{result['environment']['dtype']}, activations as saved on {device.type}")
        print(memory.table(accounts))
    if "qlora" in args.methods:
        print(memory.quantized_report(base))
    out = Path(args.out or f"bench-memory-{device.type}.json")
    write_json(out, result)
    print(f"wrote {out}")
    return result


def model_fresh(base):
    model = BertForSequenceClassification(base.config)
    model.load_state_dict(base.state_dict())
    return model


def ratios(rows):
    """Step time and peak memory against our full fine-tuning, tokens/s against the reference; a method
    measured twice (--methods full bitfit full) is compared by its first row."""
    ours, hf = {}, {}
    for r in rows:
        (ours if r["stack"] == "bertfit" else hf).setdefault(r["method"], r)
    out = {}
    if "full" in ours:
        for m, r in ours.items():
            out[f"{m}_step_vs_full"] = r["step_seconds_median"] / ours["full"]["step_seconds_median"]
            if r["peak_memory_bytes"] and ours["full"]["peak_memory_bytes"]:
                out[f"{m}_memory_vs_full"] = r["peak_memory_bytes"] / ours["full"]["peak_memory_bytes"]
    for m in hf.keys() & ours.keys():
        out[f"{m}_tokens_per_second_vs_hf"] = ours[m]["train_tokens_per_second"] / hf[m]["train_tokens_per_second"]
    return {**out, **mask_ratios(rows)}


def mask_ratios(rows):
    """Training throughput (real tokens/s, the mean over a method's repeated rows) of each method against
    full fine-tuning's under the same dropout masks, and of fast masks against torch's per method."""
    speed = {}
    for r in rows:
        if r["stack"] == "bertfit" and "dropout_masks" in r:
            speed.setdefault((r["method"], r["dropout_masks"]), []).append(r["train_tokens_per_second"])
    mean = {k: sum(v) / len(v) for k, v in speed.items()}
    out = {f"{m}_throughput_vs_full[{x}]": v / mean["full", x] for (m, x), v in mean.items()
           if m != "full" and ("full", x) in mean}
    out.update({f"{m}_fast_vs_torch_throughput": v / mean[m, "torch"] for (m, x), v in mean.items()
                if x == "fast" and (m, "torch") in mean})
    return out


def print_table(result):
    env = result["environment"]
    print(f"\n{result['model']} on {env['device_name']}, {env['dtype']}, batch {result['batch_size']}")
    print(f"{'method':14} {'stack':8} {'masks':6} {'step ms':>8} {'train tok/s':>12} {'eval tok/s':>11} "
          f"{'peak MiB':>9} {'trainable':>11} {'optim MiB':>9} {'MFU':>6}")
    for r in result["rows"]:
        mem = f"{r['peak_memory_bytes'] / 2**20:9.0f}" if r["peak_memory_bytes"] else f"{'-':>9}"
        mfu_ = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") else f"{'-':>6}"
        print(f"{r['method']:14} {r['stack']:8} {r.get('dropout_masks', '-'):6} {1e3 * r['step_seconds_median']:8.1f} "
              f"{r['train_tokens_per_second']:12.0f} {r['eval_tokens_per_second']:11.0f} {mem} "
              f"{r['trainable']:11,d} {r['optimizer_state_bytes'] / 2**20:9.1f} {mfu_}")
    for k, v in result["ratios"].items():
        print(f"  {k}: {v:.2f}")
    padding = result["padding_fraction"]
    print(f"  padding fraction: bertfit {padding['bertfit']:.3f}, hf {padding['hf']:.3f}")


if __name__ == "__main__":
    run_cli(main)
