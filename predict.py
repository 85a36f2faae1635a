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
from config import value_problems
from flags import Parser

DEFAULT_MAX_LENGTH = 128  # train.py's default; a run's own --max-length is read from its results.json


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="predict.py", description=__doc__.split("\n")[0])
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
    for problem in value_problems("max_length", args.max_length)[:1] if args.max_length else []:
        p.error(problem)  # train.py's check (0: the run's own)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def run_max_length(checkpoint: Path) -> int:
    """The --max-length the run trained with, from results.json beside the checkpoint; 128 when there is
    none. A results.json that cannot say (not JSON, no config.max_length) is an error naming it: a
    guess would tokenize differently from training."""
    results = checkpoint.parent / "results.json"
    if not results.is_file():
        return DEFAULT_MAX_LENGTH
    try:
        value = json.loads(results.read_text())["config"]["max_length"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{results}: not valid JSON ({e}); pass --max-length") from None
    except (KeyError, TypeError):
        raise ValueError(f"{results}: no config.max_length (not a results.json of train.py?); pass --max-length") \
            from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{results}: config.max_length {value!r} is not a positive integer; pass --max-length")
    return value


def check_max_length(model, max_length: int, checkpoint: Path):
    """The tokens of an example (with a soft prompt's virtual tokens) must fit the position table."""
    prompt = model.bert.embeddings.prompt
    virtual = 0 if prompt is None else prompt.weight.shape[0]
    positions = model.config.max_position_embeddings
    if max_length + virtual > positions:
        source = "--max-length" if checkpoint is None else f"max_length of {checkpoint.parent / 'results.json'}"
        raise ValueError(f"{source} {max_length}{f' + {virtual} virtual tokens' if virtual else ''} > the "
                         f"{positions} positions of the run's model")


def load(checkpoint: Path, device) -> tuple:
    """(model in eval mode, tokenizer, glue Task) from a save_trainable file; errors name the file. A
    results.json beside it must be its run's (the same task and method), or both files are named."""
    if not checkpoint.is_file():
        raise ValueError(f"{checkpoint}: no such checkpoint file")
    try:
        model, tokenizer, meta = saving.load_trainable(checkpoint, device)
    except SafetensorError as e:
        raise ValueError(f"{checkpoint}: not a safetensors file ({e})") from None
    if meta["task"] not in glue.TASKS:
        raise ValueError(f"{checkpoint}: task {meta['task']!r} is not a GLUE task of ours {sorted(glue.TASKS)}")
    # the results.json beside it gives the default --max-length: it must be this checkpoint's run
    saving.check_run_beside(checkpoint, meta["task"], meta["method"], "; the two belong to different runs (or one "
                            "was edited), and predict.py reads max_length from it: move it away or pass the right "
                            "checkpoint")
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
    files = data.read_task_files(task, args.data_dir or None)  # the task's files, found and parsed once
    split = data.encode_split(files, "test", tokenizer, args.max_length)
    expected = task.files["test"].examples
    if split.labels is not None or len(split) != expected:  # GLUE's server scores rows by index: all of them
        raise ValueError(f"{files.data_dir / task.dir_name / task.files['test'].name}: {len(split)} examples, "
                         f"GLUE's {task.dir_name} test set has {expected}: a submission must predict every one")
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
    try:
        given = args.max_length
        args.max_length = given or run_max_length(checkpoint)
        args.device = torch.device(args.device if args.device != "auto" else
                                   "cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, task = load(checkpoint, args.device)
        check_max_length(model, args.max_length, None if given else checkpoint)
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
