"""GLUE data for fine-tuning: read a task's TSV files exactly, carve the splits, tokenize once, batch.

Splits protocol (the same for every task, method, --frac and seed):
  test        GLUE's dev file. It has labels and every reported score is measured on it; GLUE's
              own test labels are private.
  validation  10% of GLUE's train file, carved once: stratified by label (STS-B: by score, in 5
              bins of width 1), drawn with the fixed SPLIT_SEED and never with the run seed, so it
              is identical for every --frac, method and seed. For early stopping and model selection.
  train pool  The other 90% of GLUE's train file.
  train       A --frac subset of the pool, stratified the same way and drawn with the run seed: one
              seeded permutation per stratum, of which the first round(frac * n) are taken (at
              least 1). For one seed the subsets are nested: frac 0.3 ⊂ 0.5 ⊂ 0.7 ⊂ 1.0.
  predict     GLUE's test file, unlabeled; only for writing prediction files.

Files are read byte-exactly: UTF-8 with an optional BOM (MRPC), split on '\\n' and '\\t' with no
quoting (sentences contain '"'), a missing final newline accepted (CoLA dev). A malformed row is an
error that names the file and line; nothing is silently dropped.
"""
import hashlib
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from glue import Task
from glue.download import ensure_task, resolve_data_dir
from glue.task import SPLITS

SPLIT_SEED = 1234  # draws the validation split; fixed forever, never the run seed
VAL_FRACTION = 0.1
SCORE_BINS = 5  # strata of a regression score: equal-width bins over Task.score_range
BUCKET_CHUNK = 50  # length-bucketing sorts chunks of this many batches
CACHE_VERSION = b"bertfit-encoded-v1"  # change when the cache layout or parsing changes


@dataclass
class Example:
    text_a: str
    text_b: str | None  # None for single-sentence tasks (CoLA)
    label: int | float | None  # class id, score (STS-B), or None in GLUE's unlabeled test files
    line: int  # 1-based line number in the file


def _parse_label(raw: str, task: Task, where: str):
    if task.is_regression:
        low, high = task.score_range
        try:
            score = float(raw)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number") from None
        if not low <= score <= high:  # NaN fails this too
            raise ValueError(f"{where}: score {score} outside [{low}, {high}]")
        return score
    allowed = [str(i) for i in range(task.num_labels)]
    if raw not in allowed:
        raise ValueError(f"{where}: label {raw!r} not in {allowed}")
    return int(raw)


def read_split(task: Task, split: str, data_dir) -> list[Example]:
    """Every example of one of GLUE's files ("train", "dev", "test") as Examples, in file order."""
    if split not in task.files:
        raise ValueError(f"split {split!r}: allowed {list(task.files)}")
    spec = task.files[split]
    path = Path(data_dir) / task.dir_name / spec.name
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # drops MRPC's BOM
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 ({e.reason})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; CoLA's dev.tsv has none
    examples = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) != spec.num_columns:
            raise ValueError(f"{where}: expected {spec.num_columns} tab-separated columns, got {len(fields)}")
        if spec.header and number == 1:
            continue
        text_a = fields[spec.text_a]
        text_b = None if spec.text_b is None else fields[spec.text_b]
        if not text_a.strip() or (text_b is not None and not text_b.strip()):
            raise ValueError(f"{where}: empty sentence")
        label = None if spec.label is None else _parse_label(fields[spec.label], task, where)
        examples.append(Example(text_a, text_b, label, number))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


@dataclass
class TaskFiles:
    """A task's files, found and parsed once (read_task_files); load_task_data tokenizes them."""
    task: Task
    data_dir: Path
    raw: dict  # split -> the file's bytes: part of the tokenization cache's key
    examples: dict  # split -> [Example] in file order


def read_task_files(task: Task, data_dir_arg=None) -> TaskFiles:
    """Before the model loads: make sure the task's files are there and parse every row (a malformed
    one fails now, naming file:line). An explicit directory (--data-dir or $GLUE_DIR) is never
    downloaded into: a missing file is an error that names it and the command that fetches it. Only
    the default directory is filled by glue.download.ensure_task."""
    data_dir = resolve_data_dir(data_dir_arg)
    source = "--data-dir" if data_dir_arg else "$GLUE_DIR" if os.environ.get("GLUE_DIR") else None
    if source:
        if not data_dir.is_dir():
            raise FileNotFoundError(f"{source} {data_dir} is not a directory")
        missing = [spec.name for spec in task.files.values() if not (data_dir / task.dir_name / spec.name).is_file()]
        if missing:
            raise FileNotFoundError(f"{data_dir / task.dir_name}: no {', '.join(missing)} in the data directory "
                                    f"given by {source}; fetch it with `python -m glue.download --tasks "
                                    f"{task.name} --dir {data_dir}`")
    ensure_task(task, data_dir)
    raw = {split: (data_dir / task.dir_name / task.files[split].name).read_bytes() for split in SPLITS}
    return TaskFiles(task, data_dir, raw, {split: read_split(task, split, data_dir) for split in SPLITS})


@dataclass
class EncodedSplit:
    input_ids: list  # per example: [CLS] A [SEP] (B [SEP]) token ids, unpadded, at most max_length
    token_type_ids: list  # per example: 0 for A, 1 for B
    labels: np.ndarray | None  # (N,) int64 class ids or float32 scores; None for GLUE's test files
    lines: np.ndarray  # (N,) line number of each example in its source file
    pad_id: int  # the tokenizer's [PAD] id, used by `batches`
    source: str  # e.g. "MRPC/train.tsv"

    def __len__(self) -> int:
        return len(self.input_ids)

    def select(self, indices) -> "EncodedSplit":
        """The examples at `indices` (positions in this split), in that order."""
        return EncodedSplit([self.input_ids[i] for i in indices], [self.token_type_ids[i] for i in indices],
                            None if self.labels is None else self.labels[indices], self.lines[indices],
                            self.pad_id, self.source)


def _tokenize(files: TaskFiles, split: str, tokenizer, max_length: int) -> EncodedSplit:
    task, examples = files.task, files.examples[split]
    texts_b = None if task.files[split].text_b is None else [e.text_b for e in examples]
    encoded = tokenizer([e.text_a for e in examples], texts_b, max_length=max_length)
    labels = None
    if task.files[split].label is not None:
        labels = np.array([e.label for e in examples], dtype=np.float32 if task.is_regression else np.int64)
    return EncodedSplit(encoded["input_ids"], encoded["token_type_ids"], labels,
                        np.array([e.line for e in examples], dtype=np.int64), tokenizer.pad_token_id,
                        f"{task.dir_name}/{task.files[split].name}")


def _save(path: Path, split: EncodedSplit):
    """Write the cache file atomically: a temporary file in the same directory, then a rename."""
    lengths = [len(ids) for ids in split.input_ids]
    arrays = dict(input_ids=np.concatenate([np.asarray(x, np.int32) for x in split.input_ids]),
                  token_type_ids=np.concatenate([np.asarray(x, np.int8) for x in split.token_type_ids]),
                  offsets=np.concatenate([[0], np.cumsum(lengths)]), lines=split.lines,
                  pad_id=np.array(split.pad_id), source=np.array(split.source))
    if split.labels is not None:
        arrays["labels"] = split.labels
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared like the data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only when writing failed
            os.unlink(tmp)


def _load(path: Path) -> EncodedSplit:
    """A cache file _save wrote; one that is truncated, not an npz, or whose arrays do not fit together
    raises (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError), and encode_split rebuilds it."""
    with np.load(path, allow_pickle=False) as z:
        offsets, ids, types, lines = z["offsets"], z["input_ids"], z["token_type_ids"], z["lines"]
        labels = z["labels"] if "labels" in z else None
        n = len(offsets) - 1
        if n < 0 or offsets[-1] != len(ids) or len(types) != len(ids) or len(lines) != n or \
                (labels is not None and len(labels) != n) or (np.diff(offsets) < 0).any():
            raise ValueError("its arrays do not fit together")
        bounds = list(zip(offsets[:-1], offsets[1:]))
        return EncodedSplit([ids[a:b].tolist() for a, b in bounds], [types[a:b].tolist() for a, b in bounds],
                            labels, lines, int(z["pad_id"]), str(z["source"]))


def _tokenizer_identity(tokenizer) -> bytes:
    """The tokenizer's serialization without its truncation setting, which each BertTokenizer call
    sets for itself (max_length is a separate part of the cache key). Read from a copy: the
    tokenizer itself is left as it was."""
    copy = Tokenizer.from_str(tokenizer.tok.to_str())
    copy.no_truncation()
    return copy.to_str().encode()


def encode_split(files: TaskFiles, split: str, tokenizer, max_length: int = 128, cache_dir=None) -> EncodedSplit:
    """Tokenize one of GLUE's files once per (file contents, tokenizer, max_length): cached on disk in
    cache_dir (default data_dir/.cache), keyed by a sha256 of the tokenizer's serialization
    (`tokenizer.tok.to_str()`), max_length, the task's reading rules and the file's bytes."""
    task, data_dir, raw = files.task, files.data_dir, files.raw[split]
    spec = task.files[split]
    rules = repr((task.name, task.num_labels, task.score_range, spec)).encode()
    key = hashlib.sha256(b"\0".join([CACHE_VERSION, _tokenizer_identity(tokenizer), str(max_length).encode(),
                                     rules, raw])).hexdigest()
    path = Path(cache_dir or data_dir / ".cache") / f"{task.name}-{split}-{key[:20]}.npz"
    encoded = None
    if path.is_file():
        try:
            encoded = _load(path)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:  # cut short, overwritten
            warnings.warn(f"{path}: corrupt tokenization cache entry ({type(e).__name__}: {e}); rebuilding it")
    if encoded is None:
        encoded = _tokenize(files, split, tokenizer, max_length)
        try:
            _save(path, encoded)
        except OSError as e:  # a read-only data directory only costs the disk cache
            warnings.warn(f"{path}: cannot write the tokenization cache ({e})")
    return encoded


def strata(task: Task, labels: np.ndarray) -> np.ndarray:
    """Stratum of each example: its class, or its score bin (SCORE_BINS equal bins) for regression."""
    if not task.is_regression:
        return labels.astype(np.int64)
    low, high = task.score_range
    return np.clip(((labels - low) / (high - low) * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)


def stratified_subset(groups: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Sorted positions of round(frac * n) members (at least 1) of every group, drawn by one seeded
    permutation per group. The permutations do not depend on frac, so subsets are nested in frac."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    rng = np.random.default_rng(seed)
    keep = []
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        keep.append(members[:max(1, int(np.floor(frac * members.size + 0.5)))])
    return np.sort(np.concatenate(keep))


@dataclass
class TaskData:
    task: Task
    train: EncodedSplit  # the --frac subset of the train pool
    val: EncodedSplit  # fixed 10% of GLUE's train file
    test: EncodedSplit  # GLUE's dev file
    predict: EncodedSplit  # GLUE's test file, labels None
    pool_size: int  # examples in the train pool (GLUE train minus validation)


def load_task_data(files: TaskFiles, tokenizer, max_length: int = 128, frac: float = 1.0, seed: int = 0,
                   cache_dir=None) -> TaskData:
    """All splits of a task (its files as read_task_files found them), tokenized, per the protocol in
    this module's docstring."""
    task = files.task
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    encoded = {split: encode_split(files, split, tokenizer, max_length, cache_dir) for split in SPLITS}
    full = encoded["train"]
    val_idx = stratified_subset(strata(task, full.labels), VAL_FRACTION, SPLIT_SEED)
    pool_idx = np.setdiff1d(np.arange(len(full)), val_idx)
    train_idx = pool_idx[stratified_subset(strata(task, full.labels[pool_idx]), frac, seed)]
    return TaskData(task, full.select(train_idx), full.select(val_idx), encoded["dev"], encoded["test"],
                    len(pool_idx))


def collate(split: EncodedSplit, index: np.ndarray) -> dict:
    """Pad the examples at `index` to the longest of them (B examples, T its length)."""
    lengths = [len(split.input_ids[i]) for i in index]
    input_ids = np.full((len(index), max(lengths)), split.pad_id, dtype=np.int64)  # (B, T)
    token_type_ids = np.zeros_like(input_ids)  # (B, T)
    attention_mask = np.zeros_like(input_ids)  # (B, T), 1 on real tokens
    for row, (i, n) in enumerate(zip(index, lengths)):
        input_ids[row, :n] = split.input_ids[i]
        token_type_ids[row, :n] = split.token_type_ids[i]
        attention_mask[row, :n] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
             "token_type_ids": torch.from_numpy(token_type_ids),
             "index": torch.as_tensor(index, dtype=torch.long)}  # (B,) positions in the split
    if split.labels is not None:
        batch["labels"] = torch.from_numpy(split.labels[index])  # (B,) int64, or float32 for regression
    return batch


def batches(split: EncodedSplit, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
            rank: int = 0, world_size: int = 1, bucket: bool = True) -> list:
    """One epoch of padded batches (see `collate`; "index" holds positions in `split`).

    shuffle=True (training): a permutation seeded by (seed, epoch); with bucket=True it is sorted by
    length within chunks of BUCKET_CHUNK * batch_size examples, so a batch holds similar lengths
    (batching "by approximate sequence length", Vaswani et al., 2017, sec. 5.1), then cut into
    batches whose order is shuffled. With world_size > 1 every global batch is split across
    the ranks (rank r takes its examples r, r + world_size, ...), so each step of a DDP run sees
    the same examples as the single-process step, and every rank takes the same number of steps;
    a last batch smaller than world_size is dropped.
    shuffle=False (evaluation): longest first, every example exactly once over all ranks; ranks may
    differ by one batch."""
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, "
                         f"got batch_size {batch_size}, rank {rank}, world_size {world_size}")
    lengths = np.array([len(ids) for ids in split.input_ids])
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(split))
        if bucket:
            chunk = BUCKET_CHUNK * batch_size
            order = np.concatenate([c[np.argsort(lengths[c], kind="stable")]
                                    for c in np.split(order, range(chunk, len(order), chunk))])
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        groups = [g[rank::world_size] for g in groups if len(g) >= world_size]
        if not groups:
            raise ValueError(f"{split.source}: {len(split)} examples are fewer than {world_size} ranks")
        return [collate(split, g) for g in groups]
    else:
        order = np.argsort(-lengths, kind="stable")
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [collate(split, g) for g in groups[rank::world_size]]


def padding_fraction(batch_list) -> float:
    """Pad tokens / all tokens over the batches: the compute spent on padding."""
    real = sum(int(b["attention_mask"].sum()) for b in batch_list)
    total = sum(b["attention_mask"].numel() for b in batch_list)
    return 1 - real / total
