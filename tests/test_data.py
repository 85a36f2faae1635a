"""data.py on the real GLUE files (counts, first rows, label spaces, the splits protocol, batching,
the tokenization cache) and on small malformed files made here, whose errors must name file and line."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from data import batches, encode_split, load_task_data, padding_fraction, read_split, read_task_files, strata
from glue import TASKS, get_task
from glue.download import resolve_data_dir
from tokenizer import BertTokenizer

COUNTS = {"mrpc": (3668, 408, 1725), "cola": (8551, 1043, 1063), "stsb": (5749, 1500, 1379)}


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return BertTokenizer.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("token_cache")  # never write into the shared data directory


@pytest.fixture(scope="module")
def load(tok, glue_dir, cache_dir):
    return lambda task, **kw: load_task_data(read_task_files(get_task(task), glue_dir), tok, cache_dir=cache_dir, **kw)


def test_get_task_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"'rte'.*\['cola', 'mrpc', 'stsb'\]"):
        get_task("rte")
    assert {n: (t.num_labels, t.is_regression, t.headline) for n, t in TASKS.items()} == {
        "mrpc": (2, False, "f1"), "cola": (2, False, "matthews"), "stsb": (1, True, "pearson")}
    assert set(get_task("mrpc").compute_metrics([[0.2, 0.8], [0.9, 0.1]], [1, 1])) == {"accuracy", "f1"}
    assert set(get_task("cola").compute_metrics([1, 0], [1, 1])) == {"matthews", "accuracy"}
    assert set(get_task("stsb").compute_metrics([[1.0], [2.5]], [1.0, 3.0])) == {"pearson", "spearman"}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_match_glue(name, glue_dir):
    task = get_task(name)
    for split, count in zip(("train", "dev", "test"), COUNTS[name]):
        examples = read_split(task, split, glue_dir)
        assert len(examples) == count == task.files[split].examples
        assert all(e.label is None for e in examples) == (split == "test")


def test_first_rows_bom_and_missing_final_newline(glue_dir):
    first = read_split(get_task("mrpc"), "train", glue_dir)[0]  # header (with BOM) on line 1
    assert (first.label, first.line) == (1, 2) and first.text_a.startswith("Amrozi accused his brother , whom")
    assert first.text_b.startswith("Referring to him as only \" the witness \"")  # quotes kept: no quoting
    first = read_split(get_task("cola"), "train", glue_dir)[0]  # no header
    assert first == data.Example("Our friends won't buy this analysis, let alone the next one we propose.",
                                 None, 1, 1)
    last = read_split(get_task("cola"), "dev", glue_dir)[-1]  # CoLA dev has no final newline: its last row still counts
    assert last.line == 1043 and not (glue_dir / "CoLA" / "dev.tsv").read_bytes().endswith(b"\n")
    assert read_split(get_task("cola"), "test", glue_dir)[0].text_a == "Bill whistled past the house."
    first = read_split(get_task("stsb"), "train", glue_dir)[0]
    assert first == data.Example("A plane is taking off.", "An air plane is taking off.", 5.0, 2)


def test_label_spaces_and_balance(glue_dir):
    for name, split, positives in (("mrpc", "train", 2474), ("mrpc", "dev", 279), ("cola", "train", 6023),
                                   ("cola", "dev", 721)):
        labels = [e.label for e in read_split(get_task(name), split, glue_dir)]
        assert set(labels) == {0, 1} and sum(labels) == positives
    scores = [e.label for e in read_split(get_task("stsb"), "train", glue_dir)]
    assert min(scores) == 0.0 and max(scores) == 5.0


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_splits_protocol(name, load):
    task = get_task(name)
    full = {frac: {seed: load(name, frac=frac, seed=seed) for seed in (0, 1)} for frac in (0.3, 0.5, 0.7, 1.0)}
    d = full[1.0][0]
    n_train_file = COUNTS[name][0]
    val_lines = set(d.val.lines)
    # validation: 10% of the train file, the same for every fraction and seed
    assert abs(len(d.val) - 0.1 * n_train_file) <= 3
    assert all(list(full[f][s].val.lines) == list(d.val.lines) for f in full for s in (0, 1))
    # train pool and validation partition GLUE's train file; the test split is GLUE's dev file
    assert val_lines.isdisjoint(d.train.lines) and len(d.train) + len(d.val) == n_train_file
    assert d.train.source.endswith("train.tsv") and d.test.source.endswith("dev.tsv")
    assert (len(d.test), len(d.predict), d.predict.labels) == (COUNTS[name][1], COUNTS[name][2], None)
    for seed in (0, 1):  # nested, and sized round(frac * pool) up to rounding per stratum
        lines = [set(full[f][seed].train.lines) for f in (0.3, 0.5, 0.7, 1.0)]
        assert lines[0] < lines[1] < lines[2] < lines[3]
        for f, subset in zip((0.3, 0.5, 0.7), lines):
            assert abs(len(subset) - f * d.pool_size) <= 3
    assert set(full[0.3][0].train.lines) != set(full[0.3][1].train.lines)  # the run seed matters
    # stratified: every stratum's share in the subset and in validation is the pool's share
    pool_share = np.bincount(strata(task, d.train.labels)) / len(d.train)
    for part in (full[0.3][0].train, full[0.3][1].train, d.val):
        share = np.bincount(strata(task, part.labels), minlength=pool_share.size) / len(part)
        np.testing.assert_allclose(share, pool_share, atol=0.01)


def test_no_mrpc_pair_shared_between_train_and_test(glue_dir):
    pairs = lambda split: {(e.text_a, e.text_b) for e in read_split(get_task("mrpc"), split, glue_dir)}
    assert not pairs("train") & pairs("dev")


def test_bucketing_cuts_padding(load):
    train = load("mrpc").train
    bucketed = padding_fraction(batches(train, 32, shuffle=True, seed=0))
    random = padding_fraction(batches(train, 32, shuffle=True, seed=0, bucket=False))
    print(f"MRPC train, batch 32, max_length 128: padding {bucketed:.3f} bucketed, {random:.3f} random")
    assert bucketed < 0.5 * random


def test_training_batches(load):
    split = load("stsb", frac=0.3).train
    epoch0 = batches(split, 16, shuffle=True, seed=3, epoch=0)
    b = epoch0[0]
    assert b["input_ids"].dtype == b["attention_mask"].dtype == b["token_type_ids"].dtype == torch.long
    assert b["labels"].dtype == torch.float32 and b["labels"].shape == (b["input_ids"].shape[0],)
    assert (b["input_ids"][b["attention_mask"] == 0] == split.pad_id).all()
    assert (b["attention_mask"].sum(1) == torch.tensor([len(split.input_ids[i]) for i in b["index"]])).all()
    seen = torch.cat([x["index"] for x in epoch0])
    assert sorted(seen.tolist()) == list(range(len(split)))  # one rank: every example once per epoch
    again = batches(split, 16, shuffle=True, seed=3, epoch=0)
    assert all(torch.equal(x["index"], y["index"]) for x, y in zip(epoch0, again))
    epoch1 = batches(split, 16, shuffle=True, seed=3, epoch=1)
    assert not torch.equal(epoch0[0]["index"], epoch1[0]["index"])
    lengths = [x["input_ids"].shape[1] for x in epoch0[:10]]
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)  # batch order shuffled
    shards = [batches(split, 16, shuffle=True, seed=3, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    indices = [set(torch.cat([x["index"] for x in s]).tolist()) for s in shards]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    full_batches = [b for b in epoch0 if len(b["index"]) >= 3]  # a smaller last batch is dropped
    for step, single in enumerate(full_batches):  # each DDP step splits the single-process step's batch
        together = torch.cat([s[step]["index"] for s in shards])
        assert sorted(together.tolist()) == sorted(single["index"].tolist())


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches_cover_every_example_once(load, world_size):
    split = load("cola").test
    index = torch.cat([b["index"] for r in range(world_size)
                       for b in batches(split, 64, shuffle=False, rank=r, world_size=world_size)])
    assert sorted(index.tolist()) == list(range(len(split)))
    one_rank = batches(split, 64, shuffle=False)
    widths = [b["input_ids"].shape[1] for b in one_rank]
    assert widths == sorted(widths, reverse=True) and one_rank[0]["labels"].dtype == torch.long


def test_predict_batches_have_no_labels(load):
    assert "labels" not in batches(load("mrpc").predict, 32, shuffle=False)[0]


def test_tokenization_cache(tok, glue_dir, tmp_path, monkeypatch):
    tok(["set truncation to another length"], max_length=17)  # a call must not change the cache key
    data._tokenizer_identity(tok)
    assert tok.tok.truncation["max_length"] == 17  # the key is read from a copy: the tokenizer is as it was
    first = encode_split(read_task_files(get_task("cola"), glue_dir), "dev", tok, 64, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("cola-dev-*.npz"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")
    monkeypatch.setattr(BertTokenizer, "__call__", no_tokenizing)
    from_disk = encode_split(read_task_files(get_task("cola"), glue_dir), "dev", tok, 64, cache_dir=tmp_path)
    assert from_disk is not first and from_disk.input_ids == first.input_ids
    assert from_disk.token_type_ids == first.token_type_ids and (from_disk.labels == first.labels).all()
    assert (from_disk.lines == first.lines).all() and from_disk.source == first.source
    with pytest.raises(AssertionError, match="tokenized again"):  # another max_length is another key
        encode_split(read_task_files(get_task("cola"), glue_dir), "dev", tok, 32, cache_dir=tmp_path)


def test_load_task_data_fetches_missing_files(tok, glue_dir, tmp_path, monkeypatch):
    calls = []

    def fake_ensure(task, data_dir):  # stands in for the download: copies the real files
        calls.append(task.name)
        (data_dir / task.dir_name).mkdir(parents=True)
        for spec in task.files.values():
            source = glue_dir / task.dir_name / spec.name
            (data_dir / task.dir_name / spec.name).write_bytes(source.read_bytes())
    monkeypatch.setattr(data, "ensure_task", fake_ensure)
    monkeypatch.delenv("GLUE_DIR", raising=False)  # only the default directory is downloaded into
    monkeypatch.setattr(data, "resolve_data_dir", lambda arg=None: tmp_path / "glue")
    d = load_task_data(read_task_files(get_task("cola")), tok, frac=0.5)
    assert calls == ["cola"] and len(d.predict) == 1063 and (tmp_path / "glue" / ".cache").is_dir()


def test_resolve_data_dir(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/from/env")
    assert resolve_data_dir("/from/arg") == Path("/from/arg") and resolve_data_dir() == Path("/from/env")
    monkeypatch.delenv("GLUE_DIR")
    assert resolve_data_dir() == Path(os.path.expanduser("~/.cache/bertfit/glue_data"))


def test_bad_fraction_is_refused(load):
    with pytest.raises(ValueError, match=r"frac must be in \(0, 1\]"):
        load("mrpc", frac=0.0)


COLA_OK = "gj04\t1\t\tGood sentence.\ngj04\t0\t*\tBad sentence the.\n"
STSB_HEADER = "\t".join(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                         "sentence1", "sentence2", "score"]) + "\n"


@pytest.mark.parametrize("task,text,line,message", [
    ("cola", COLA_OK + "gj04\t1\tonly three columns\n", 3, "expected 4 tab-separated columns, got 3"),
    ("cola", COLA_OK + "gj04\t1\t\tA sentence.\textra\n", 3, "expected 4 tab-separated columns, got 5"),
    ("cola", "gj04\t2\t\tA sentence.\n", 1, "label '2' not in ['0', '1']"),
    ("cola", "gj04\tyes\t\tA sentence.\n", 1, "label 'yes'"),
    ("cola", COLA_OK + "gj04\t1\t\t  \n", 3, "empty sentence"),
    ("cola", COLA_OK + "\n" + COLA_OK, 3, "got 1"),  # a blank line is a malformed row, never skipped
    ("stsb", STSB_HEADER + "0\tg\tf\ty\t0\tn\tn\tA man.\tA dog.\t5.5\n", 2, "score 5.5 outside [0.0, 5.0]"),
    ("stsb", STSB_HEADER + "0\tg\tf\ty\t0\tn\tn\tA man.\tA dog.\tfive\n", 2, "score 'five' is not a number"),
    ("stsb", STSB_HEADER + "0\tg\tf\ty\t0\tn\tn\tA man.\t\t1.0\n", 2, "empty sentence"),
])
def test_malformed_rows_name_file_and_line(tmp_path, task, text, line, message):
    path = tmp_path / get_task(task).dir_name / "train.tsv"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        read_split(get_task(task), "train", tmp_path)
    assert f"{path}:{line}: " in str(error.value) and message in str(error.value)


def test_wellformed_small_file_without_final_newline(tmp_path):
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_bytes(COLA_OK.rstrip("\n").encode())
    examples = read_split(get_task("cola"), "train", tmp_path)
    assert [(e.label, e.line, e.text_a) for e in examples] == [(1, 1, "Good sentence."),
                                                              (0, 2, "Bad sentence the.")]
