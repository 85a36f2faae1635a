"""The foundation's claims: our BERT equals transformers' on real weights, loads every checkpoint
layout it promises to, and fails loudly, naming the key, on the ones it must refuse."""
import copy
import csv
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoint import load_pretrained, load_state_dict, resolve_model_dir
from model import BertConfig, BertForSequenceClassification
from tokenizer import BertTokenizer

transformers = pytest.importorskip("transformers")  # reference implementation, tests only


def glue_pairs(glue_dir, n=40):
    """Real sentence pairs from MRPC and STS-B dev, and single CoLA sentences."""
    with open(glue_dir / "MRPC" / "dev.tsv", encoding="utf-8-sig") as f:
        mrpc = [(r[3], r[4]) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:n + 1]]
    with open(glue_dir / "STS-B" / "dev.tsv", encoding="utf-8") as f:
        stsb = [(r[7], r[8]) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:n + 1]]
    with open(glue_dir / "CoLA" / "dev.tsv", encoding="utf-8") as f:
        cola = [r[3] for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]]
    return mrpc + stsb, cola


def pad(enc):
    """Right-pad a tokenizer output into (B, T) tensors plus the attention mask."""
    T = max(len(x) for x in enc["input_ids"])
    out = {k: torch.zeros(len(enc["input_ids"]), T, dtype=torch.long)
           for k in ("input_ids", "token_type_ids", "attention_mask")}
    for i, (ids, types) in enumerate(zip(enc["input_ids"], enc["token_type_ids"])):
        out["input_ids"][i, :len(ids)] = torch.tensor(ids)
        out["token_type_ids"][i, :len(ids)] = torch.tensor(types)
        out["attention_mask"][i, :len(ids)] = 1
    return out


@pytest.fixture(scope="module")
def minilm_cls(minilm_dir):
    model, tok = load_pretrained("minilm", num_labels=3, pooling="cls", verbose=False)
    return model.eval(), tok


@pytest.fixture(scope="module")
def batch(glue_dir, minilm_cls):
    pairs, _ = glue_pairs(glue_dir, n=6)
    b = pad(minilm_cls[1]([a for a, _ in pairs], [b for _, b in pairs], max_length=48))
    assert (b["attention_mask"] == 0).any() and (b["token_type_ids"] == 1).any()  # padding and pairs
    return b


def hf_reference(model, minilm_dir, cls):
    config = transformers.BertConfig.from_pretrained(minilm_dir, num_labels=model.config.num_labels)
    ref = cls(config)
    state = {k: v for k, v in model.state_dict().items()} if cls is not transformers.BertModel else \
        {k.removeprefix("bert."): v for k, v in model.state_dict().items() if k.startswith("bert.")}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("pooler" in k for k in missing), (missing, unexpected)
    return ref.eval()


def test_logits_equal_transformers(minilm_cls, minilm_dir, batch):
    model, _ = minilm_cls
    ref = hf_reference(model, minilm_dir, transformers.BertForSequenceClassification)
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = ref(**batch).logits
    assert ours.shape == (len(batch["input_ids"]), 3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# Equal math is proved in float64: there two correct orders of the same sums agree to ~1e-14, and a
# real difference is far larger (measured: LayerNorm eps 1e-6 for 1e-12, 3e-4; tanh-GELU, 6e-3).
# In float32 each model drifts from the float64 result by up to ~1e-5 after 6 layers on hidden
# values up to ~6 (with transformers 5.25: ours 8.2e-6, theirs 4.3e-6, 1.0e-5 apart), so there the
# tolerance scales with the value: rtol 1e-5 is about 100 float32 ulps.
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float64, 1e-10, 0), (torch.float32, 1e-5, 1e-5)])
def test_hidden_states_equal_transformers(minilm_cls, minilm_dir, batch, dtype, atol, rtol):
    model, _ = minilm_cls
    ref = hf_reference(model, minilm_dir, transformers.BertModel)
    model, ref = copy.deepcopy(model).to(dtype), ref.to(dtype)
    with torch.no_grad():
        ours = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = ref(**batch).last_hidden_state
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol)


def test_mean_pooling_is_masked_mean(minilm_dir, batch):
    model, _ = load_pretrained("minilm", num_labels=2, verbose=False)  # MiniLM declares mean pooling
    model.eval()
    assert model.config.pooling == "mean" and model.bert.pooler is None
    ref = hf_reference(model, minilm_dir, transformers.BertModel)
    with torch.no_grad():
        h = ref(**batch).last_hidden_state  # (B, T, H)
        pooled = torch.stack([h[i, batch["attention_mask"][i].bool()].mean(0) for i in range(len(h))])
        expected = model.classifier(pooled)
        ours = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        # padding must not leak in: extra padding on every row changes nothing
        padded = {k: torch.cat([v, torch.zeros_like(v[:, :7])], 1) for k, v in batch.items()}
        ours_padded = model(padded["input_ids"], padded["attention_mask"], padded["token_type_ids"])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_padded, ours, atol=1e-5, rtol=0)


def test_pooling_default_read_from_checkpoint_and_flag_overrides(minilm_dir, tmp_path):
    assert load_pretrained("minilm", verbose=False)[0].config.pooling == "mean"
    assert load_pretrained("minilm", pooling="cls", verbose=False)[0].config.pooling == "cls"
    plain = tmp_path / "plain"  # same weights without the sentence-transformers pooling config
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(minilm_dir / name, plain / name)
    model, _ = load_pretrained(str(plain), verbose=False)
    assert model.config.pooling == "cls" and model.bert.pooler is not None
    assert load_pretrained(str(plain), pooling="mean", verbose=False)[0].bert.pooler is None


def test_state_dict_keys_are_transformers_keys(tiny_config):
    ours = BertForSequenceClassification(tiny_config).state_dict().keys()
    ref = transformers.BertForSequenceClassification(transformers.BertConfig(**{
        k: getattr(tiny_config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                             "num_attention_heads", "intermediate_size",
                                             "max_position_embeddings", "num_labels")}))
    expected = {k for k in ref.state_dict() if not k.endswith("position_ids")}
    assert set(ours) == expected


def test_tokenizer_equals_transformers(glue_dir, minilm_dir):
    pairs, singles = glue_pairs(glue_dir, n=100)
    ref = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    for tok in (BertTokenizer.from_dir(minilm_dir), BertTokenizer.from_vocab(minilm_dir / "vocab.txt")):
        for max_length in (128, 24):  # 24 forces longest-first truncation of many pairs
            a, b = [p[0] for p in pairs], [p[1] for p in pairs]
            ours = tok(a, b, max_length=max_length)
            theirs = ref(a, b, truncation="longest_first", max_length=max_length)
            assert ours["input_ids"] == theirs["input_ids"]
            assert ours["token_type_ids"] == theirs["token_type_ids"]
            assert tok(singles, max_length=max_length)["input_ids"] == \
                ref(singles, truncation=True, max_length=max_length)["input_ids"]
    assert len(pairs) + len(singles) >= 300


def hub_layout(minilm_dir, tmp_path, dtype=torch.float32):
    """MiniLM saved as bert-base-uncased is on the hub: bert. prefix, gamma/beta, cls.* heads."""
    out = tmp_path / "hub_layout"
    out.mkdir()
    tensors = {}
    for k, v in load_file(minilm_dir / "model.safetensors").items():
        k = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        tensors[k] = v.to(dtype) if v.is_floating_point() else v
    tensors["cls.predictions.bias"] = torch.zeros(30522, dtype=dtype)
    tensors["cls.seq_relationship.weight"] = torch.zeros(2, 384, dtype=dtype)
    save_file(tensors, out / "model.safetensors")
    for name in ("config.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, out / name)
    return out


def test_hub_layout_loads_to_identical_outputs(minilm_cls, minilm_dir, tmp_path, batch):
    model, _ = minilm_cls
    path = hub_layout(minilm_dir, tmp_path)
    other, tok = load_pretrained(str(path), num_labels=3, pooling="cls", verbose=False)
    other.classifier.load_state_dict(model.classifier.state_dict())
    other.eval()
    report = load_state_dict(BertForSequenceClassification(other.config), path / "model.safetensors")
    assert len(report.renamed) == 2 * 6 * 2 + 2  # 2 LayerNorms per layer and the embeddings', weight and bias
    assert "cls.predictions.bias" in report.ignored and report.new == ["classifier.bias", "classifier.weight"]
    assert tok.source.endswith("vocab.txt")
    with torch.no_grad():
        assert torch.equal(other(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}),
                           model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_loads_as_fp32(minilm_cls, minilm_dir, tmp_path, batch, dtype):
    model, _ = minilm_cls
    path = hub_layout(minilm_dir, tmp_path, dtype)
    other, _ = load_pretrained(str(path), num_labels=3, pooling="cls", verbose=False)
    assert all(p.dtype == torch.float32 for p in other.parameters())
    report = load_state_dict(BertForSequenceClassification(other.config), path / "model.safetensors")
    assert report.source_dtypes == [str(dtype).removeprefix("torch."), "int64"]
    other.classifier.load_state_dict(model.classifier.state_dict())
    with torch.no_grad():
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        torch.testing.assert_close(other.eval()(*args), model(*args), atol=0.05, rtol=0)


def broken_copy(minilm_dir, tmp_path, edit):
    out = tmp_path / "broken"
    out.mkdir()
    shutil.copy(minilm_dir / "config.json", out / "config.json")
    shutil.copy(minilm_dir / "tokenizer.json", out / "tokenizer.json")
    tensors = load_file(minilm_dir / "model.safetensors")
    edit(tensors)
    save_file(tensors, out / "model.safetensors")
    return out


def test_shape_mismatch_names_key_and_shapes(minilm_dir, tmp_path):
    path = broken_copy(minilm_dir, tmp_path, lambda t: t.update({"encoder.layer.3.attention.self.key.weight": torch.zeros(384, 380)}))
    with pytest.raises(ValueError, match=r"encoder\.layer\.3\.attention\.self\.key\.weight.*\(384, 380\).*\(384, 384\)"):
        load_pretrained(str(path), verbose=False)


def test_missing_key_is_named(minilm_dir, tmp_path):
    path = broken_copy(minilm_dir, tmp_path, lambda t: t.pop("encoder.layer.5.output.dense.bias"))
    with pytest.raises(ValueError, match=r"missing.*bert\.encoder\.layer\.5\.output\.dense\.bias"):
        load_pretrained(str(path), verbose=False)


def test_unexpected_key_is_named(minilm_dir, tmp_path):
    path = broken_copy(minilm_dir, tmp_path, lambda t: t.update({"encoder.layer.9.extra": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected.*bert\.encoder\.layer\.9\.extra"):
        load_pretrained(str(path), verbose=False)


def test_truncated_safetensors_is_a_clear_error(minilm_dir, tmp_path):
    path = broken_copy(minilm_dir, tmp_path, lambda t: None)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        load_pretrained(str(path), verbose=False)


def test_pickle_only_checkpoint_is_refused(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are not loaded"):
        load_pretrained(str(tmp_path), verbose=False)


def test_hub_id_offline_and_uncached_says_how_to_run_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"google-bert/bert-base-uncased.*local directory.*--model minilm"):
        resolve_model_dir("google-bert/bert-base-uncased")


def test_hub_id_resolves_from_the_hub_cache(minilm_dir, tmp_path, monkeypatch):
    """The real huggingface_hub code path, offline, over a cache laid out as a download leaves it."""
    from huggingface_hub import constants
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--google-bert--bert-base-uncased"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_dir / name, snapshot / name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, tok = load_pretrained("google-bert/bert-base-uncased", verbose=False)
    assert model.config.hidden_size == 384 and model.config.pooling == "cls"
    assert tok(["hello world"])["input_ids"] == [[101, 7592, 2088, 102]]


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        resolve_model_dir(str(tmp_path / "does-not-exist"))


def test_tiny_random_model_classification_and_regression(tiny_config):
    x = torch.randint(1, 100, (3, 10))
    mask = torch.ones_like(x)
    mask[0, 6:] = 0
    assert BertForSequenceClassification(tiny_config)(x, mask).shape == (3, 2)
    tiny_config.num_labels = 1
    assert BertForSequenceClassification(tiny_config)(x, mask).shape == (3, 1)


def test_config_reads_hf_json_and_rejects_bad_values(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, "model_type": "bert",
                                "architectures": ["BertModel"]}))
    assert BertConfig.from_json(path).hidden_size == 64
    with pytest.raises(ValueError, match="pooling 'max'.*allowed"):
        BertConfig.from_json(path, pooling="max")
    path.write_text(json.dumps({"hidden_size": 65, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="not a multiple"):
        BertConfig.from_json(path)


def test_gelu_is_exact_erf_form():
    from model import ACTIVATIONS
    x = torch.tensor([-2.0, -0.5, 0.3, 1.0, 3.0], dtype=torch.float64)
    expected = torch.tensor([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS["gelu"](x), expected)
