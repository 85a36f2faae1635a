"""Predict with a fine-tuned run: GLUE's submission file for its task, or the label of a text you type.

    python predict.py runs/mrpc-lora-f1-s0/best.safetensors --glue-test [--out DIR]
    python predict.py runs/mrpc-lora-f1-s0/best.safetensors --text "A sentence." "Its paraphrase?"

--glue-test reads GLUE's unlabeled test file (data.py's `predict` split) and writes DIR/MRPC.tsv,
CoLA.tsv or STS-B.tsv (DIR: the checkpoint's directory by default), the files GLUE's server scores:
a header `index<TAB>prediction`, then one row per test example in file order (GLUE numbers them
0..N-1), a class id for MRPC and CoLA, for STS-B a score clipped to GLUE's range [0, 5], written
with 3 decimals as transformers' run_glue does. --text prints the label and every class's
probability (softmax of the logits), or the score. A bad checkpoint, text or data directory ends the
program with one line, `error: ...`, and exit status 1.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

import data
import glue
import saving
from config import CHECKS
from glue.download import ensure_task, resolve_data_dir

DEFAULT_MAX_LENGTH = 128  # train.py's default; a run's own --max-length is read from its results.json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a run's best.safetensors (saving.save_trainable)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--glue-test", action="store_true", help="write GLUE's submission file for the run's task")
    what.add_argument("--text", nargs="+", metavar="SENTENCE",
                      help="one sentence (CoLA) or a pair (MRPC, STS-B): print the label and its probabilities")
    p.add_argument("--out", default="", help="directory for the submission file; default: the checkpoint's")
    p.add_argument("--data-dir", default="", help="GLUE directory; default $GLUE_DIR, else data.py's default")
    p.add_argument("--max-length", type=int, default=0,
                   help="tokens per example; default: the run's (results.json beside the checkpoint), else 128")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    ok, allowed = CHECKS["max_length"]
    if args.max_length and not ok(args.max_length):  # train.py's check (0: the run's own)
        p.error(f"--max-length must be {allowed}, got {args.max_length}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def run_max_length(checkpoint: Path) -> int:
    """The --max-length the run trained with, from results.json beside the checkpoint, else 128."""
    results = checkpoint.parent / "results.json"
    try:
        return int(json.loads(results.read_text())["config"]["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_LENGTH


def load(checkpoint: Path, device) -> tuple:
    """(model in eval mode, tokenizer, glue Task) from a save_trainable file; errors name the file."""
    if not checkpoint.is_file():
        raise ValueError(f"{checkpoint}: no such checkpoint file")
    try:
        model, tokenizer, meta = saving.load_trainable(checkpoint, device)
    except SafetensorError as e:
        raise ValueError(f"{checkpoint}: not a safetensors file ({e})") from None
    if meta["task"] not in glue.TASKS:
        raise ValueError(f"{checkpoint}: task {meta['task']!r} is not a GLUE task of ours {sorted(glue.TASKS)}")
    return model.eval(), tokenizer, glue.get_task(meta["task"])


@torch.inference_mode()
def logits_of(model, split: data.EncodedSplit, batch_size: int, device) -> np.ndarray:
    """(N, L) fp32 logits in the split's order (batches are sorted by length, then put back)."""
    out = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    for batch in data.batches(split, batch_size, shuffle=False):
        b = {k: v.to(device) for k, v in batch.items()}
        out[batch["index"].numpy()] = model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).float().cpu()
    return out


def glue_predictions(task, logits: np.ndarray) -> list:
    """The submission file's prediction column: class ids, or scores clipped to the task's range."""
    if task.is_regression:
        low, high = task.score_range
        return [f"{s:.3f}" for s in np.clip(logits[:, 0], low, high)]
    return [str(int(i)) for i in logits.argmax(-1)]


def write_glue_test(model, tokenizer, task, args, checkpoint: Path) -> Path:
    data_dir = resolve_data_dir(args.data_dir or None)
    ensure_task(task, data_dir)
    split = data.encode_split(task, "test", tokenizer, data_dir, args.max_length)
    assert split.labels is None and len(split) == task.files["test"].examples
    predictions = glue_predictions(task, logits_of(model, split, args.batch_size, args.device))
    out = Path(args.out) if args.out else checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task.dir_name}.tsv"  # the names GLUE's server expects: MRPC.tsv, CoLA.tsv, STS-B.tsv
    path.write_text("index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(predictions)))
    return path


def describe(task, logits: np.ndarray) -> str:
    """'equivalent (1) | not_equivalent 0.1022  equivalent 0.8978', or 'score 3.412 (clipped to [0, 5])'."""
    if task.is_regression:
        low, high = task.score_range
        raw = float(logits[0])
        return f"score {float(np.clip(raw, low, high)):.3f} (raw {raw:.3f}, GLUE's range [{low:g}, {high:g}])"
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    best = int(probs.argmax())
    return f"{task.label_names[best]} ({best}) | " + "  ".join(f"{n} {p:.4f}" for n, p in zip(task.label_names, probs))


def predict_text(model, tokenizer, task, texts: list, args) -> str:
    pair = task.files["test"].text_b is not None
    if len(texts) != (2 if pair else 1):
        raise ValueError(f"--text: {task.name} takes {'a sentence pair: --text A B' if pair else 'one sentence'}, "
                         f"got {len(texts)} text{'s' if len(texts) != 1 else ''}")
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"--text: sentence {empty[0]} is empty")
    enc = tokenizer([texts[0]], [texts[1]] if pair else None, max_length=args.max_length)
    ids, types = (torch.tensor(enc[k], device=args.device) for k in ("input_ids", "token_type_ids"))  # (1, T)
    with torch.inference_mode():
        logits = model(ids, torch.ones_like(ids), types).float().cpu().numpy()[0]  # (L,)
    return describe(task, logits)


def main(argv=None):
    args = parse_args(argv)
    checkpoint = Path(args.checkpoint)
    args.max_length = args.max_length or run_max_length(checkpoint)
    try:
        args.device = torch.device(args.device if args.device != "auto" else
                                   "cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, task = load(checkpoint, args.device)
        if args.glue_test:
            path = write_glue_test(model, tokenizer, task, args, checkpoint)
            print(f"{path}: {task.files['test'].examples} predictions for GLUE's {task.dir_name} test set")
        else:
            print(predict_text(model, tokenizer, task, args.text, args))
    except (ValueError, OSError, RuntimeError) as e:  # the errors load and data raise name their file
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
