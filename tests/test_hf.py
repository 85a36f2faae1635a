"""hf.py and saving.export_merged: our runs load in transformers and PEFT with our logits, and a PEFT
adapter trained elsewhere loads into our model with PEFT's logits. transformers and peft are the
reference implementations here (test dependencies only)."""
import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import glue
from adapters import MethodConfig, apply_method, trainable_params
from adapters import mergeable_layers
from checkpoint import load_pretrained
from model import BertForSequenceClassification
from saving import export_merged, export_peft, import_peft

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ATOL = 1e-5  # fp32, the same weights through two implementations
TEXTS = (["A man is playing a guitar on the stage.", "Stocks fell.", "The cat sat on the mat near the door."],
         ["Someone plays the guitar.", "Shares dropped sharply in early trading on Monday.", "A cat sat."])


@pytest.fixture(scope="module")
def minilm_cls(minilm_dir):
    """{num_labels: (model, tokenizer)} with BERT's [CLS] pooler, loaded once; tests deep-copy."""
    torch.manual_seed(0)  # the new classifier; a module fixture is built before the per-test seed
    return {L: load_pretrained("minilm", num_labels=L, pooling="cls", verbose=False) for L in (1, 2)}


def encode(tok):
    """Three real sentence pairs of different lengths, right-padded: (input_ids, attention_mask, token_type_ids)."""
    enc = tok(*TEXTS, max_length=32)
    T = max(len(ids) for ids in enc["input_ids"])
    ids, mask, types = (torch.zeros(len(enc["input_ids"]), T, dtype=torch.long) for _ in range(3))
    for i, (a, b) in enumerate(zip(enc["input_ids"], enc["token_type_ids"])):
        ids[i, :len(a)], types[i, :len(a)], mask[i, :len(a)] = torch.tensor(a), torch.tensor(b), 1
    assert (mask == 0).any() and (types == 1).any()
    return ids, mask, types


def ours(model, batch):
    model.eval()
    with torch.no_grad():
        return model(*batch)


def theirs(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch[0], attention_mask=batch[1], token_type_ids=batch[2]).logits


def trained(base, cfg):
    """A copy of `base` with the method applied and every trainable tensor moved, as if trained (LoRA's B
    is no longer zero, the (IA)^3 vectors no longer one, the head no longer the pretrained one)."""
    model = copy.deepcopy(base)
    apply_method(model, cfg)
    with torch.no_grad():
        for _, p in trainable_params(model):
            p.add_(torch.randn_like(p) * 0.05)
    return model


# ------------------------------------------------------------------------------ export to PEFT
@pytest.mark.parametrize("method, labels", [("lora", 2), ("ia3", 2), ("lora", 1)])
def test_export_peft_loads_in_peft_with_our_logits(minilm_cls, minilm_dir, tmp_path, method, labels):
    base, tok = minilm_cls[labels]
    # output.dense but not attention.output.dense: a PEFT target list of suffixes would take both
    targets = ("query", "value", "intermediate.dense", "output.dense")
    model = trained(base, MethodConfig(method, lora_targets=targets))
    out = export_peft(model, tmp_path / "adapter", base="minilm")
    config = json.loads((out / "adapter_config.json").read_text())
    pooler_trained = model.bert.pooler.dense.weight.requires_grad
    assert config["peft_type"] == method.upper() and config["task_type"] == "SEQ_CLS"
    assert config["modules_to_save"] == ["classifier"] + (["bert.pooler"] if pooler_trained else [])
    assert config["base_model_name_or_path"] == str(minilm_dir.resolve())
    keys = set(load_file(str(out / "adapter_model.safetensors")))
    suffix = {"lora": (".lora_A.weight", ".lora_B.weight"), "ia3": (".ia3_l",)}[method]
    n_layers = {"lora": 6 * len(targets), "ia3": 6 * 3}[method]
    adapter_keys = {k for k in keys if k.endswith(suffix)}
    assert len(adapter_keys) == n_layers * len(suffix)
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    hf_base = transformers.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=labels)
    reference = peft.PeftModel.from_pretrained(hf_base, out)
    placed = {n.replace(".default", "") for n, _ in reference.named_parameters() if ".lora_" in n or ".ia3_l" in n}
    assert placed == adapter_keys  # PEFT put its layers exactly where ours are, and nowhere else
    batch = encode(tok)
    diff = (theirs(reference, batch) - ours(model, batch)).abs().max().item()
    assert diff <= ATOL, diff
    assert (ours(model, batch) - ours(base, batch)).abs().max() > 1e-2  # the adapter is not a no-op


def test_export_peft_as_the_issue_writes_it(minilm_cls, minilm_dir, tmp_path):
    """PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base), out): two labels
    need no num_labels; and a LoRA layer that is merged exports the same adapter."""
    base, tok = minilm_cls[2]
    model = trained(base, MethodConfig("lora"))
    for _, m in mergeable_layers(model):
        m.merge()
    out = export_peft(model, tmp_path / "adapter", base="minilm")
    reference = peft.PeftModel.from_pretrained(transformers.BertForSequenceClassification.from_pretrained(
        json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]), out)
    batch = encode(tok)
    assert (theirs(reference, batch) - ours(model, batch)).abs().max() <= ATOL


def tiny(config, pooling="cls"):
    return BertForSequenceClassification(dataclasses.replace(config, pooling=pooling))


@pytest.mark.parametrize("pooling, method, message", [
    ("mean", "lora", "mean-pooled model has no transformers head"),
    ("cls", "prompt", "before \\[CLS\\]; ours go after it"),
    ("cls", "prefix", "shifts the real tokens' positions"),
    ("cls", "adapter", "no bottleneck adapter"),
    ("cls", "bitfit", "use saving.export_merged"),
    ("cls", "full", "use saving.export_merged"),
    ("cls", "bitfit+lora", "no place for .* trainable tensors of this model \\(bert.embeddings.LayerNorm.bias"),
    ("cls", "ia3+lora", "one adapter type"),
])
def test_export_peft_refuses_what_peft_parametrises_otherwise(tiny_config, tmp_path, pooling, method, message):
    model = tiny(tiny_config, pooling)
    apply_method(model, MethodConfig(method, lora_targets=("query",), prompt_length=2, prefix_length=2,
                                     prefix_hidden=8))
    with pytest.raises(ValueError, match=message):
        export_peft(model, tmp_path / "nope", base="unused")
    assert not (tmp_path / "nope").exists()


# ---------------------------------------------------------------------------- import from PEFT
@pytest.mark.parametrize("modules_to_save", [None, ["bert.pooler"]])
def test_import_peft_lora_gives_peft_logits(minilm_cls, minilm_dir, tmp_path, modules_to_save):
    """A LoRA adapter made with peft itself (B randomized, so not a no-op; dropout, which eval ignores;
    a trained pooler when modules_to_save names it) loads into our model with PEFT's logits."""
    hf_base = transformers.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1,
                             target_modules=["query", "value", "intermediate.dense"], modules_to_save=modules_to_save)
    reference = peft.get_peft_model(hf_base, config)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    reference.save_pretrained(tmp_path / "adapter")
    model, tok, meta = import_peft(tmp_path / "adapter", task="mrpc")
    assert not model.training  # eval mode: lora_dropout 0.1 would make two calls on one input differ
    assert (meta["method"], meta["task"], meta["num_labels"], meta["pooling"]) == ("lora", "mrpc", 2, "cls")
    cfg = meta["method_config"]
    assert (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (4, 8.0, 0.1)
    assert cfg["lora_targets"] == ("query", "value", "intermediate.dense")
    batch = encode(tok)
    diff = (theirs(reference, batch) - ours(model, batch)).abs().max().item()
    assert diff <= ATOL, diff
    plain, _ = load_pretrained("minilm", num_labels=2, pooling="cls", verbose=False)
    assert (ours(plain, batch)[:, 0] - ours(model, batch)[:, 0]).abs().max() > 1e-3  # not just the base
    pooled = torch.equal(model.bert.pooler.dense.weight, plain.bert.pooler.dense.weight)
    assert pooled == (modules_to_save is None)


def test_export_then_import_is_exact(minilm_cls, tmp_path):
    base, tok = minilm_cls[2]
    for method in ("lora", "ia3"):
        model = trained(base, MethodConfig(method, lora_targets=("key", "output.dense")))
        back, _, meta = import_peft(export_peft(model, tmp_path / method, base="minilm"))
        assert meta["method"] == method
        assert torch.equal(ours(back, encode(tok)), ours(model, encode(tok)))


def test_import_peft_refusals_name_the_problem(minilm_cls, tmp_path):
    base, _ = minilm_cls[2]
    good = export_peft(trained(base, MethodConfig("lora")), tmp_path / "good", base="minilm")
    config = json.loads((good / "adapter_config.json").read_text())
    tensors = load_file(str(good / "adapter_model.safetensors"))

    def variant(name, config_changes=None, tensors_now=None):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({**config, **(config_changes or {})}))
        save_file(tensors if tensors_now is None else tensors_now, str(d / "adapter_model.safetensors"))
        return d

    with pytest.raises(FileNotFoundError, match="adapter_config.json does not exist"):
        import_peft(tmp_path / "missing")
    with pytest.raises(ValueError, match="use_dora = True; our LoRA"):
        import_peft(variant("dora", {"use_dora": True}))
    with pytest.raises(ValueError, match="peft_type 'PREFIX_TUNING': allowed 'LORA', 'IA3'"):
        import_peft(variant("prefix", {"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ValueError, match="holds no classifier"):
        import_peft(variant("headless", tensors_now={k: v for k, v in tensors.items() if "classifier" not in k}))
    pooler_lora = {**tensors, "base_model.model.bert.pooler.dense.lora_A.weight": torch.zeros(8, 384)}
    with pytest.raises(ValueError, match="LoRA on bert.pooler.dense \\(the adapter's tensors\\): ours goes only on"):
        import_peft(variant("pooler_lora", tensors_now=pooler_lora))
    layer0 = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
    with pytest.raises(ValueError, match="disagree on bert.encoder.layer.0.attention.self.query \\(only selected"):
        import_peft(variant("subset", tensors_now={k: v for k, v in tensors.items() if k != layer0}))
    b0 = layer0.replace("lora_A", "lora_B")
    with pytest.raises(ValueError, match=f"keys missing from the adapter \\['{b0}'\\]"):
        import_peft(variant("half", tensors_now={k: v for k, v in tensors.items() if k != b0}))
    with pytest.raises(ValueError, match=f"shape mismatch for '{layer0}': adapter \\(8, 5\\), model \\(8, 384\\)"):
        import_peft(variant("shape", tensors_now={**tensors, layer0: torch.zeros(8, 5)}))


LAYER0_QUERY = r"bert\.encoder\.layer\.0\.attention\.self\.query"


@pytest.mark.parametrize("changes, drop, message", [
    ({"r": "8"}, None, r"r = '8': expected int"),
    ({"lora_alpha": True}, None, r"lora_alpha = True: expected int or float"),
    ({"target_modules": ["query", 3]}, None, r"target_modules = \['query', 3\]: expected str or a list of strings"),
    ({"modules_to_save": "classifier"}, None, r"modules_to_save = 'classifier': expected a list of strings or null"),
    ({"lora_dropout": 1.5}, None, r"lora_dropout = 1.5: must be in \[0, 1\)"),
    ({"r": 0}, None, r"r = 0: must be >= 1"),
    ({"task_type": "CAUSAL_LM"}, None, r"task_type = 'CAUSAL_LM'"),
    ({}, "r", r"no 'r' field \(a PEFT LORA config requires it\)"),
    ({}, "target_modules", r"no 'target_modules' field"),
    ({"target_modules": "(query"}, None, r"target_modules '\(query' is not a valid regular expression"),
    ({"target_modules": ["LayerNorm"]}, None, r"matches bert.embeddings.LayerNorm, a LayerNorm: PEFT and we adapt Linear"),
    ({"target_modules": ["dense"]}, None, r"LoRA on bert.pooler.dense \(target_modules \['dense'\]\)"),
    ({"target_modules": "nothing"}, None, r"target_modules 'nothing' matches no module of the model"),
    ({"target_modules": ["query"]}, None, r"disagree on bert.encoder.layer.0.attention.self.value \(not selected"),
    ({"target_modules": [".*query", "value"]}, None, r"disagree on"),  # a list entry is a name, not a pattern
    ({"target_modules": LAYER0_QUERY}, None, r"disagree on bert.encoder.layer.0.attention.self.value"),
    ({"modules_to_save": ["classifier", "bert.pooler"]}, None, r"lists bert.pooler, but the tensors lack it"),
])
def test_import_peft_checks_the_config_as_peft_does(minilm_cls, tmp_path, changes, drop, message):
    """Each field PEFT requires, with its JSON type and range; target_modules by PEFT's matching rule (a string:
    a regex matched in full; a list: a name or a '.'-suffix), against the model and against the tensors."""
    base, _ = minilm_cls[2]
    good = export_peft(trained(base, MethodConfig("lora")), tmp_path / "good", base="minilm")
    config = {**json.loads((good / "adapter_config.json").read_text()), **changes}
    config.pop(drop, None)
    (good / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as error:
        import_peft(good)
    assert str(good / "adapter_config.json") in str(error.value)


def test_import_peft_checks_tensors_layers_and_the_task(minilm_cls, tmp_path):
    """Non-finite tensors, an adapter on some layers only, a classifier the task's labels do not fit, and a
    config that is not a JSON object: each refused naming the file; the good adapter loads in eval mode."""
    base, _ = minilm_cls[2]
    good = export_peft(trained(base, MethodConfig("lora")), tmp_path / "good", base="minilm")
    config = json.loads((good / "adapter_config.json").read_text())
    tensors = load_file(str(good / "adapter_model.safetensors"))
    model, _, _ = import_peft(good, task="mrpc")
    assert not model.training
    with pytest.raises(ValueError, match=r"the classifier has 2 outputs, task stsb has 1 labels"):
        import_peft(good, task="stsb")
    key = "base_model.model.bert.encoder.layer.2.attention.self.value.lora_B.weight"
    for bad in (float("nan"), float("inf")):
        save_file({**tensors, key: torch.full_like(tensors[key], bad)}, str(good / "adapter_model.safetensors"))
        with pytest.raises(ValueError, match=f"adapter_model.safetensors: tensor '{key}' is not finite"):
            import_peft(good)
    layer0 = {k: v for k, v in tensors.items() if "layer." not in k or "layer.0." in k}  # layer 0 alone
    save_file(layer0, str(good / "adapter_model.safetensors"))
    (good / "adapter_config.json").write_text(json.dumps(
        {**config, "target_modules": r"bert\.encoder\.layer\.0\.attention\.self\.(query|value)"}))
    with pytest.raises(ValueError, match=r"selects \['attention.self.query', 'attention.self.value'\] in some "
                                         r"layers only \(e.g. not bert.encoder.layer.1.attention.self.query\)"):
        import_peft(good)
    (good / "adapter_config.json").write_text(json.dumps([config]))
    with pytest.raises(ValueError, match="adapter_config.json: expected a JSON object of PEFT config fields, got a list"):
        import_peft(good)


def test_export_into_a_used_directory_needs_replace(minilm_cls, tmp_path):
    """An export into a directory that holds anything is refused; replace=True clears the previous export's
    files first (a stale tokenizer.json would outlive it); a directory that is not an export is never cleared."""
    base, tok = minilm_cls[2]
    model = trained(base, MethodConfig("lora"))
    out = export_merged(model, tmp_path / "merged", tok)
    with pytest.raises(ValueError, match=f"{out}: not empty .*pass replace=True"):
        export_merged(model, out)
    export_merged(model, out, replace=True)  # no tokenizer this time: the old one must go
    assert sorted(str(f.relative_to(out)) for f in out.rglob("*")) == \
        ["1_Pooling", "1_Pooling/config.json", "config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="not empty"):
        export_peft(model, out, base="minilm")
    export_peft(model, out, base="minilm", replace=True)  # a merged export replaced by an adapter
    assert sorted(f.name for f in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"{out}: does not look like an export \\(it holds notes.txt\\)"):
        export_peft(model, out, base="minilm", replace=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="does not look like an export"):
        export_merged(model, run, replace=True)
    assert (out / "notes.txt").is_file() and (run / "results.json").is_file()


# ------------------------------------------------------------------------ merged, in transformers
@pytest.mark.parametrize("task_name", ["mrpc", "stsb"])
def test_export_merged_loads_in_transformers(minilm_cls, tmp_path, task_name):
    task = glue.get_task(task_name)
    base, tok = minilm_cls[task.num_labels]
    model = trained(base, MethodConfig("lora", lora_targets=("query", "value", "output.dense")))
    out = export_merged(model, tmp_path / "merged", tok, task=task)
    reference = transformers.BertForSequenceClassification.from_pretrained(out)
    c = reference.config
    assert c.num_labels == task.num_labels
    if task.is_regression:
        assert c.problem_type == "regression"
    else:
        assert c.problem_type == "single_label_classification"
        assert c.id2label == {0: "not_equivalent", 1: "equivalent"}
        assert c.label2id == {"not_equivalent": 0, "equivalent": 1}
    batch = encode(tok)
    diff = (theirs(reference, batch) - ours(model, batch)).abs().max().item()
    assert diff <= ATOL, diff


def test_export_merged_of_a_mean_pooled_model_warns(tiny_config, tmp_path):
    """transformers would pool [CLS]: the export is for our loader, and says so."""
    with pytest.warns(UserWarning, match="would pool \\[CLS\\]"):
        export_merged(tiny(tiny_config, "mean"), tmp_path / "mean")
    config = json.loads((tmp_path / "mean" / "config.json").read_text())
    assert config["problem_type"] == "single_label_classification" and config["id2label"] == {"0": "LABEL_0",
                                                                                               "1": "LABEL_1"}
