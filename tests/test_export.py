"""export.py, as a user runs it from outside the repository: a real run's checkpoint becomes a PEFT
adapter that peft + transformers load with our logits, and a merged directory that transformers loads
with our logits; the API's refusals come back as one `error:` line naming the flag (issue 28 item 5)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from adapters import MethodConfig, apply_method
from checkpoint import load_pretrained
from saving import load_trainable, save_trainable

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "export.py"
ATOL = 1e-5  # fp32, the same weights through two implementations (test_hf.py)
TEXTS = (["A man is playing a guitar on the stage.", "Stocks fell."],
         ["Someone plays the guitar.", "Shares dropped sharply in early trading on Monday."])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, glue_dir, minilm_dir):
    """A tiny real LoRA run with the [CLS] pooler (transformers' head), as test_predict.py makes one."""
    out = tmp_path_factory.mktemp("runs") / "mrpc-lora"
    train.main(["--model", "minilm", "--task", "mrpc", "--method", "lora", "--pooling", "cls", "--frac", "0.05",
                "--epochs", "1", "--max-length", "32", "--data-dir", str(glue_dir), "--out", str(out)])
    return out


def export(*argv, cwd):
    """`python /path/to/export.py ...` from `cwd`, with no PYTHONPATH: as a user outside the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(EXPORT), *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def logits_pair(ours, theirs, tokenizer):
    enc = tokenizer(*TEXTS, max_length=32)
    T = max(len(x) for x in enc["input_ids"])
    ids, mask, types = (torch.zeros(2, T, dtype=torch.long) for _ in range(3))  # (B, T), right-padded
    for i, (a, b) in enumerate(zip(enc["input_ids"], enc["token_type_ids"])):
        ids[i, :len(a)], types[i, :len(a)], mask[i, :len(a)] = torch.tensor(a), torch.tensor(b), 1
    theirs.eval()
    with torch.no_grad():
        return ours(ids, mask, types), theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


def test_help_works_from_another_directory(tmp_path):
    shown = export("--help", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: export.py"), shown.stderr
    assert "--peft OUT_DIR" in shown.stdout and "--replace" in shown.stdout


def test_peft_export_round_trips_through_peft(lora_run, tmp_path, minilm_dir):
    done = export(lora_run, "--peft", "adapter", cwd=tmp_path)  # a relative OUT_DIR: the user's directory
    assert done.returncode == 0, done.stderr
    out = tmp_path / "adapter"
    assert done.stdout.startswith("wrote adapter: a PEFT adapter of the mrpc lora run")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(minilm_dir.resolve())
    ours, tokenizer, _ = load_trainable(lora_run / "best.safetensors")
    hf_base = transformers.BertForSequenceClassification.from_pretrained(config["base_model_name_or_path"],
                                                                         num_labels=2)
    mine, theirs = logits_pair(ours, peft.PeftModel.from_pretrained(hf_base, out), tokenizer)
    assert (mine - theirs).abs().max().item() <= ATOL


def test_merged_export_round_trips_through_transformers(lora_run, tmp_path):
    done = export(lora_run / "best.safetensors", "--merged", tmp_path / "merged", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'merged'}: the mrpc lora run" in done.stdout and "note:" not in done.stdout
    reference = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert reference.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    ours, tokenizer, _ = load_trainable(lora_run / "best.safetensors")
    mine, theirs = logits_pair(ours, reference, tokenizer)
    assert (mine - theirs).abs().max().item() <= ATOL
    ours_again, _ = load_pretrained(tmp_path / "merged", num_labels=2, verbose=False)  # and our own loader
    again, _ = logits_pair(ours_again.eval(), reference, tokenizer)
    assert (again - mine).abs().max().item() <= ATOL


def test_a_used_directory_needs_replace_and_replace_clears_it(lora_run, tmp_path):
    out = tmp_path / "adapter"
    assert export(lora_run, "--peft", out, cwd=tmp_path).returncode == 0
    again = export(lora_run, "--merged", out, cwd=tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr and again.stderr.count("\n") == 1
    assert again.stderr.startswith(f"error: {out}: not empty (adapter_config.json, adapter_model.safetensors); "
                                   "pass --replace to replace a previous export")
    replaced = export(lora_run, "--merged", out, "--replace", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()  # nothing stale left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not an export")
    refused = export(lora_run, "--peft", tmp_path / "mine", "--replace", cwd=tmp_path)
    assert refused.returncode == 1 and "does not look like an export (it holds notes.txt), so even --replace " \
        "does not clear it" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").is_file()


def test_refusals_are_one_line_naming_the_flag(tmp_path, minilm_dir):
    """A mean-pooled run has no transformers head; a full fine-tuning run has no PEFT form; a missing
    checkpoint is named. Each: exit status 1, one line, nothing written."""
    model, _ = load_pretrained("minilm", num_labels=2, pooling="mean", verbose=False)
    cfg = MethodConfig("lora")
    save_trainable(model, apply_method(model, cfg), cfg, tmp_path / "mean.safetensors",
                   {"base_model": "minilm", "task": "mrpc"})
    model, _ = load_pretrained("minilm", num_labels=2, pooling="cls", verbose=False)
    cfg = MethodConfig("bitfit")
    save_trainable(model, apply_method(model, cfg), cfg, tmp_path / "bitfit.safetensors",
                   {"base_model": "minilm", "task": "mrpc"})
    for argv, message in [
        (["mean.safetensors", "--peft", "out"], "error: pooling 'mean': transformers' BertForSequenceClassification"),
        (["bitfit.safetensors", "--peft", "out"], "(full, bitfit, head): use --merged for a plain transformers"),
        (["nope", "--merged", "out"], "error: nope: no such checkpoint file"),
    ]:
        done = export(*argv, cwd=tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()
    merged = export("mean.safetensors", "--merged", "out", cwd=tmp_path)  # allowed, with the warning as a note
    assert merged.returncode == 0 and "note: " in merged.stdout and "would pool [CLS]" in merged.stdout
