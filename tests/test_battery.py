"""Issue 27, the second hostile battery: a checkpoint header relabelled with an earlier format, a results.json
of another run beside a checkpoint, a 1_Pooling config with strings for booleans, an empty vocabulary, a
directory where a GLUE file goes, and misspelt flags of predict.py, export.py, study.sweep and
glue.download, which are named (with a did-you-mean) before any missing required argument.
(study.report's cases: tests/test_report.py.)"""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import export
import predict
from adapters import MethodConfig, apply_method
from checkpoint import load_pretrained, read_pooling
from glue import download
from saving import TENSORS_ONLY_FORMAT, UNVERIFIED_FORMAT, load_trainable, save_trainable
from study import sweep
from tokenizer import BertTokenizer


@pytest.fixture
def head_run(tmp_path, minilm_dir):
    """An MRPC checkpoint (method head, its classifier set by hand), in a run directory of its own."""
    model, _ = load_pretrained("minilm", num_labels=2, pooling="cls", verbose=False)
    cfg = MethodConfig("head")
    trainable = apply_method(model, cfg)
    with torch.no_grad():
        model.classifier.weight.normal_(std=0.02)
    run = tmp_path / "run"
    run.mkdir()
    save_trainable(model, trainable, cfg, run / "best.safetensors", {"base_model": "minilm", "task": "mrpc"})
    return run / "best.safetensors"


def relabel(path, out, drop=(), **changes):
    """A copy of a save_trainable file with header fields changed or dropped, tensors untouched."""
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    header = {k: v for k, v in {**header, **changes}.items() if k not in drop}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(path)), str(out), header)
    return out


def results_beside(checkpoint, **config):
    (checkpoint.parent / "results.json").write_text(json.dumps({"task": config.get("task"), "config": config}))
    return checkpoint.parent / "results.json"


def error_of(main, argv, capsys, code=1) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code, err
    return err


def test_a_header_downgraded_to_format_2_is_checked_against_its_run(head_run, tmp_path, glue_dir, capsys):
    """H5: format 2 has no header digest; with it deleted and the task edited, predict.py wrote CoLA.tsv from
    an MRPC model. The run's results.json beside it says mrpc: refused, naming both files."""
    results_beside(head_run, task="mrpc", method="head", max_length=32)
    edited = relabel(head_run, head_run.parent / "edited.safetensors", drop=("header_digest",),
                     format=TENSORS_ONLY_FORMAT, task="cola")
    with pytest.warns(UserWarning, match="header cannot be verified"):
        err = error_of(predict.main, [str(edited), "--glue-test", "--data-dir", str(glue_dir), "--out",
                                      str(tmp_path / "out")], capsys)
    assert err.startswith(f"error: {edited}: its header says task 'cola', but {head_run.parent / 'results.json'} "
                          "beside it says 'mrpc'; a bertfit-trainable/2 header carries no digest") and \
        err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    results_beside(head_run, task="cola", method="head", max_length=32)  # the two agree: it loads, unverified
    with pytest.warns(UserWarning, match="header cannot be verified"):
        assert load_trainable(edited)[2]["task"] == "cola"


def test_a_format_relabelled_older_than_its_fields_is_refused(head_run, tmp_path):
    """A format-3 file labelled 2 keeps its header digest, a format-2 file labelled 1 its tensor digest:
    fields only a later format writes. Refused as corrupted: the label would skip their checks."""
    cases = [(relabel(head_run, tmp_path / "a.safetensors", format=TENSORS_ONLY_FORMAT, task="cola"), "header_digest"),
             (relabel(head_run, tmp_path / "b.safetensors", drop=("header_digest",), format=UNVERIFIED_FORMAT),
              "tensor_digest")]
    for path, field in cases:
        with pytest.raises(ValueError, match=f"{path}: corrupted: its header says format 'bertfit-trainable/[12]' "
                                             f"but has the field '{field}', which only a later format writes"):
            load_trainable(path)


def test_a_results_json_of_another_run_beside_the_checkpoint_is_refused(head_run, capsys):
    """P4: predict.py took max_length 6 from a cola run's results.json beside an mrpc checkpoint."""
    results = results_beside(head_run, task="cola", method="bitfit", max_length=6)
    err = error_of(predict.main, [str(head_run), "--text", "A man.", "A man!"], capsys)
    assert err.startswith(f"error: {head_run}: its header says task 'mrpc', but {results} beside it says 'cola'; the "
                          "two belong to different runs") and err.count("\n") == 1, err
    results_beside(head_run, task="mrpc", method="lora", max_length=6)
    assert "says method 'head', but" in error_of(predict.main, [str(head_run), "--text", "a", "b"], capsys)
    results_beside(head_run, task="mrpc", method="head", max_length=32)  # its own run: predicts
    predict.main([str(head_run), "--text", "A man.", "A man!"])
    assert "equivalent" in capsys.readouterr().out


@pytest.mark.parametrize("config, message", [
    ({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": "false"},
     r"pooling_mode_mean_tokens must be true or false \(a JSON boolean\), got 'false'"),
    ({"pooling_mode_cls_token": 1}, "pooling_mode_cls_token must be true or false .*got 1"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, "pooling pooling_mode_max_tokens, "
     "pooling_mode_mean_tokens: supported are"),
])
def test_pooling_config_needs_json_booleans(tmp_path, config, message):
    """M14: "false" is a non-empty string, read as true: the model pooled by mean against its config."""
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"^{tmp_path / '1_Pooling' / 'config.json'}: {message}"):
        read_pooling(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                                    "pooling_mode_max_tokens": False}))
    assert read_pooling(tmp_path) == "mean"


@pytest.mark.parametrize("vocab, message", [("", "no tokens"),
                                            ("[PAD]\nhello\n", r"vocabulary lacks \[CLS\] or \[SEP\]")])
def test_a_vocabulary_without_tokens_is_named(tmp_path, vocab, message):
    """T4: an empty vocab.txt (no tokenizer.json) was a TypeError inside the tokenizers library."""
    (tmp_path / "vocab.txt").write_text(vocab)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'vocab.txt'}: {message}"):
        BertTokenizer.from_dir(tmp_path)


def test_a_directory_where_a_glue_file_goes_is_an_error_naming_it(tmp_path, capsys):
    """G11: MRPC/dev.tsv a directory: the downloader fetched again, placed nothing and said "ready"."""
    (tmp_path / "MRPC" / "dev.tsv").mkdir(parents=True)
    with pytest.raises(download.DownloadError, match=f"^{tmp_path / 'MRPC' / 'dev.tsv'}: exists and is not a "
                                                     "regular file"):
        download.ensure_task("mrpc", tmp_path, "http://127.0.0.1:9/none")  # nothing is fetched: no server needed
    err = error_of(download.main, ["--tasks", "mrpc", "--dir", str(tmp_path), "--base-url", "http://127.0.0.1:9/x"],
                   capsys)
    assert err == f"error: {tmp_path / 'MRPC' / 'dev.tsv'}: exists and is not a regular file; move it away and run " \
                  "again\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["MRPC", "dev.tsv"]


@pytest.mark.parametrize("main, argv, unknown, suggested", [
    (predict.parse_args, ["best.safetensors", "--glue-tst"], "--glue-tst", "--glue-test"),  # F10: was "... required"
    (predict.parse_args, ["best.safetensors", "--glue-test", "--max-lenght", "32"], "--max-lenght 32", "--max-length"),
    (export.parse_args, ["run", "--petf", "out"], "--petf out", "--peft"),  # its required group missing too
    (export.parse_args, ["run", "--peft", "out", "--replce"], "--replce", "--replace"),  # F8
    (sweep.parse_args, ["--grid", "cpu", "--out", "x", "--dry-rn"], "--dry-rn", "--dry-run"),  # F9
    (sweep.parse_args, ["--grd", "cpu", "--out", "x"], "--grd cpu", "--grid"),  # --grid is required
    (download.main, ["--dri", "x"], "--dri x", "--dir"),  # F13
])
def test_a_misspelt_flag_is_named_before_a_missing_required_one(main, argv, unknown, suggested, capsys):
    err = error_of(main, argv, capsys, code=2).strip().splitlines()[-1]
    assert err.endswith(f"error: unrecognized arguments: {unknown}; did you mean {suggested}?"), err
