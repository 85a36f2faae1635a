"""predict.py: GLUE submission files (format, order, one row per test example, STS-B clipped) from a
tiny trained run, single-text predictions, and one-line errors for bad checkpoints and texts."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import glue
import predict
import train
from adapters import MethodConfig, apply_method
from checkpoint import load_pretrained
from saving import save_trainable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mrpc_run(tmp_path_factory, glue_dir, minilm_dir):
    """A tiny trained run: its best.safetensors, and its results.json beside it (max length 32)."""
    out = tmp_path_factory.mktemp("runs") / "mrpc"
    train.main(["--model", "minilm", "--task", "mrpc", "--method", "lora", "--frac", "0.05", "--epochs", "1",
                "--max-length", "32", "--data-dir", str(glue_dir), "--out", str(out)])
    return out / "best.safetensors"


def head_checkpoint(path, task_name, weight_std, bias):
    """A checkpoint whose head is set by hand (method head): e.g. STS-B scores spread far beyond [0, 5]."""
    task = glue.get_task(task_name)
    torch.manual_seed(0)
    model, _ = load_pretrained("minilm", num_labels=task.num_labels, pooling="cls", verbose=False)
    cfg = MethodConfig("head")
    trainable = apply_method(model, cfg)
    with torch.no_grad():
        model.classifier.weight.normal_(std=weight_std)
        model.classifier.bias.fill_(bias)
    save_trainable(model, trainable, cfg, path, {"base_model": "minilm", "task": task_name})
    return path


def read_tsv(path):
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(r) == 2 for r in rows)
    return rows


def glue_test_indexes(glue_dir, task):
    """The index column of GLUE's test file (its first column, after the header)."""
    text = (glue_dir / task.dir_name / "test.tsv").read_text(encoding="utf-8-sig")
    return [line.split("\t")[0] for line in text.split("\n")[1:] if line]


def test_glue_test_file_mrpc(mrpc_run, glue_dir, tmp_path, capsys):
    predict.main([str(mrpc_run), "--glue-test", "--out", str(tmp_path), "--data-dir", str(glue_dir)])
    task = glue.get_task("mrpc")
    rows = read_tsv(tmp_path / "MRPC.tsv")
    assert len(rows) == task.files["test"].examples == 1725
    assert [i for i, _ in rows] == glue_test_indexes(glue_dir, task)  # 0..1724, GLUE's own numbering
    assert {p for _, p in rows} <= {"0", "1"}
    assert "1725 predictions" in capsys.readouterr().out


def test_predictions_come_back_in_file_order(mrpc_run, glue_dir):
    """Batches are sorted by length; logits_of must put every row back where the file has it."""
    model, tok, task = predict.load(mrpc_run, torch.device("cpu"))
    split = data.encode_split(data.read_task_files(task, glue_dir), "test", tok, 32)
    picked = [0, 1, 2, 500]
    sub = split.select(np.array(picked))
    all_logits = predict.logits_of(model, split.select(np.arange(600)), 64, torch.device("cpu"))  # (600, 2)
    for row, i in enumerate(picked):
        batch = data.collate(sub, np.array([row]))
        with torch.no_grad():
            one = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[0]
        torch.testing.assert_close(torch.from_numpy(all_logits[i]), one, atol=1e-5, rtol=0)
    assert len({tuple(np.round(all_logits[i], 5)) for i in picked}) == 4  # distinct rows: order matters


def test_glue_test_file_stsb_is_clipped(tmp_path, glue_dir):
    checkpoint = head_checkpoint(tmp_path / "stsb.safetensors", "stsb", weight_std=1.0, bias=2.5)
    predict.main([str(checkpoint), "--glue-test", "--data-dir", str(glue_dir), "--max-length", "32"])
    rows = read_tsv(tmp_path / "STS-B.tsv")  # default --out: the checkpoint's directory
    assert len(rows) == 1379 and [i for i, _ in rows] == glue_test_indexes(glue_dir, glue.get_task("stsb"))
    scores = [float(p) for _, p in rows]
    assert all(len(p.split(".")[1]) == 3 for _, p in rows)
    assert min(scores) == 0.0 and max(scores) == 5.0  # the raw scores spread beyond GLUE's range
    assert any(0 < s < 5 for s in scores)


def test_text_prints_label_and_probabilities(mrpc_run, capsys):
    predict.main([str(mrpc_run), "--text", "The cat sat on the mat.", "A cat was sitting on the mat."])
    line = capsys.readouterr().out.strip()
    label, probs = line.split(" | ")
    p = dict(zip(probs.split()[::2], map(float, probs.split()[1::2])))
    assert set(p) == {"not_equivalent", "equivalent"} and abs(sum(p.values()) - 1) < 1e-3
    assert label == f"{max(p, key=p.get)} ({['not_equivalent', 'equivalent'].index(max(p, key=p.get))})"


def test_text_single_sentence_and_score(tmp_path, capsys):
    cola = head_checkpoint(tmp_path / "cola.safetensors", "cola", weight_std=0.0, bias=0.0)
    predict.main([str(cola), "--text", "The book was written by John."])
    assert capsys.readouterr().out.strip() == "unacceptable (0) | unacceptable 0.5000  acceptable 0.5000"
    stsb = head_checkpoint(tmp_path / "stsb.safetensors", "stsb", weight_std=0.0, bias=7.0)
    predict.main([str(stsb), "--text", "A man plays.", "A man is playing."])
    assert capsys.readouterr().out.strip() == "score 5.000 (raw 7.000, GLUE's range [0, 5])"


@pytest.mark.parametrize("texts, message", [
    (["Only one."], "error: --text: mrpc takes a sentence pair: --text A B, got 1 text"),
    (["One.", "Two.", "Three."], "got 3 texts"),
    (["One.", "  "], "error: --text: sentence 2 is empty"),
])
def test_bad_texts_are_one_line_errors(mrpc_run, capsys, texts, message):
    with pytest.raises(SystemExit) as e:
        predict.main([str(mrpc_run), "--text", *texts])
    err = capsys.readouterr().err
    assert e.value.code == 1 and message in err and err.count("\n") == 1


def test_bad_checkpoints_are_one_line_errors(tmp_path, minilm_dir, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    cases = [(tmp_path / "missing.safetensors", "no such checkpoint file"),
             (garbage, "not a readable safetensors file"),
             (minilm_dir / "model.safetensors", "not a save_trainable checkpoint (format 'pt')")]
    for path, message in cases:
        with pytest.raises(SystemExit) as e:
            predict.main([str(path), "--text", "a", "b"])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(f"error: {path}: {message}") and err.count("\n") == 1


def test_command_line_error_has_no_traceback(tmp_path):
    """As a user runs it: exit status 1 and one line on stderr."""
    done = subprocess.run([sys.executable, "predict.py", str(tmp_path / "nope.safetensors"), "--text", "a", "b"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == f"error: {tmp_path / 'nope.safetensors'}: no such checkpoint file\n"


@pytest.mark.parametrize("argv, message", [
    ([], "one of the arguments --glue-test --text is required"),
    (["--glue-test", "--text", "a"], "not allowed with argument"),
    (["--text", "a", "--max-length", "5"], "--max-length must be in 8..512 (below 8"),  # train.py's range
    (["--text", "a", "--max-length", "513"], "--max-length must be in 8..512"),
    (["--glue-test", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
])
def test_bad_flags_are_refused_before_anything_loads(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        predict.parse_args(["best.safetensors", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def run_main(argv, capsys) -> str:
    """predict.main's one error line (exit status 1)."""
    with pytest.raises(SystemExit) as e:
        predict.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_checkpoint_whose_header_was_edited_is_refused(tmp_path, capsys):
    """The issue's case: the task edited in the header would have written another task's submission file."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    path = head_checkpoint(tmp_path / "best.safetensors", "mrpc", 0.02, 0.0)
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    save_file(load_file(str(path)), str(tmp_path / "edited.safetensors"), {**header, "task": "cola"})
    err = run_main([str(tmp_path / "edited.safetensors"), "--text", "a"], capsys)
    assert f"{tmp_path / 'edited.safetensors'}: corrupted: its header" in err
    assert not (tmp_path / "CoLA.tsv").exists()


def test_the_runs_max_length_must_be_readable_and_fit_the_positions(tmp_path, capsys):
    path = head_checkpoint(tmp_path / "best.safetensors", "mrpc", 0.02, 0.0)
    results = tmp_path / "results.json"
    results.write_text('{"config": {"max_length": 1024}}')
    err = run_main([str(path), "--text", "a", "b"], capsys)
    assert f"max_length of {results} 1024 > the 512 positions of the run's model" in err
    results.write_text('{"config": {"max_length": 32')  # cut short
    assert f"error: {results}: not valid JSON" in run_main([str(path), "--text", "a", "b"], capsys)
    results.write_text('[1, 2]')
    assert f"error: {results}: no config.max_length" in run_main([str(path), "--text", "a", "b"], capsys)
    predict.main([str(path), "--text", "a", "b", "--max-length", "32"])  # a flag that fits: the file is not read
    assert "equivalent" in capsys.readouterr().out


def test_a_test_file_with_other_row_count_names_file_and_counts(tmp_path, glue_dir, capsys):
    path = head_checkpoint(tmp_path / "best.safetensors", "mrpc", 0.02, 0.0)
    data_dir = tmp_path / "glue"
    (data_dir / "MRPC").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (data_dir / "MRPC" / name).symlink_to(glue_dir / "MRPC" / name)
    lines = (glue_dir / "MRPC" / "test.tsv").read_text(encoding="utf-8").split("\n")
    (data_dir / "MRPC" / "test.tsv").write_text("\n".join(lines[:-3] + [""]), encoding="utf-8")  # 2 rows fewer
    with pytest.warns(UserWarning, match="differs from GLUE's mrpc test file"):
        err = run_main([str(path), "--glue-test", "--data-dir", str(data_dir), "--max-length", "16",
                        "--out", str(tmp_path)], capsys)
    assert f"{data_dir / 'MRPC' / 'test.tsv'}: 1723 examples, GLUE's MRPC test set has 1725" in err
    assert not (tmp_path / "MRPC.tsv").exists()
