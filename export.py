"""Turn a run's checkpoint into a directory that Hugging Face's libraries load, from the command line:

    python export.py runs/mrpc-lora-f1-s0 --peft exports/mrpc-lora        (a PEFT adapter directory)
    python export.py runs/mrpc-lora-f1-s0 --merged exports/mrpc-merged    (a plain transformers checkpoint)
    python export.py runs/mrpc-lora-f1-s0/best.safetensors --peft exports/mrpc-lora --replace

The first argument is a run directory (its best.safetensors is read) or a checkpoint file written by
saving.save_trainable. --peft writes adapter_config.json and adapter_model.safetensors (hf.export_peft:
LoRA and (IA)^3 runs with --pooling cls; hf.py's docstring says why the other methods have no PEFT
form); load it with

    PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(BASE, num_labels=L), DIR)

--merged folds LoRA and (IA)^3 into the base weights and writes model.safetensors, config.json and
tokenizer.json (saving.export_merged: every method but adapters, soft prompts and prefixes); load it
with BertForSequenceClassification.from_pretrained(DIR), or with checkpoint.load_pretrained(DIR), which
also honours a mean pooling that transformers would not. An output directory that holds anything is
refused unless --replace is given, and then only when it holds a previous export, which is cleared
first (hf.export_dir). Every anticipated failure is one line, `error: ...`, exit status 1 (--debug:
the traceback).
"""
import argparse
import warnings
from pathlib import Path

from safetensors import SafetensorError

import glue
import saving
from config import run_cli
from flags import Parser


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="export.py", description=__doc__.split("\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=__doc__[__doc__.index("The first argument"):])
    p.add_argument("run", metavar="RUN_DIR_or_CHECKPOINT", help="a run directory or its best.safetensors")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--peft", metavar="OUT_DIR", help="write a PEFT adapter directory (LoRA, (IA)^3)")
    what.add_argument("--merged", metavar="OUT_DIR", help="write a merged transformers checkpoint directory")
    p.add_argument("--replace", action="store_true", help="replace a previous export in OUT_DIR")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    return p.parse_args(argv)


def checkpoint_of(run: Path) -> Path:
    """The checkpoint file a run directory (or the file itself) names; ValueError naming what is missing."""
    path = run / "best.safetensors" if run.is_dir() else run
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file" + (" (has the run finished an epoch?)" if run.is_dir()
                                                                else " (a run directory or its best.safetensors)"))
    return path


def export(args) -> str:
    """Write the export; -> the line that says what was written and how to load it."""
    path = checkpoint_of(Path(args.run))
    try:
        model, tokenizer, meta = saving.load_trainable(path)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from None
    labels, base = meta["num_labels"], meta["base_model"]
    try:
        if args.peft:
            out = saving.export_peft(model, args.peft, base=base, replace=args.replace)
            return (f"wrote {out}: a PEFT adapter of the {meta['task']} {meta['method']} run {path}; load it with "
                    f"PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(BASE, "
                    f"num_labels={labels}), {str(out)!r}), BASE as adapter_config.json's base_model_name_or_path")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = saving.export_merged(model, args.merged, tokenizer, task=glue.get_task(meta["task"]),
                                       replace=args.replace)
        for w in caught:
            print(f"note: {w.message}")
        return (f"wrote {out}: the {meta['task']} {meta['method']} run {path}, merged into {base}'s weights; "
                f"load it with BertForSequenceClassification.from_pretrained({str(out)!r})")
    except ValueError as e:  # the API's refusals name its argument; here it is a flag
        only = "the run's best.safetensors is its only form (predict.py reads it)"
        raise ValueError(str(e).replace("replace=True", "--replace").replace("saving.export_merged", "--merged")
                         .replace("use save_trainable", only)) from None


def main(argv=None):
    print(export(parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
