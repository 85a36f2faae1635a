"""Prompt and prefix tuning: attention with prefixes by hand, padding, merge, the hard-prompt equivalence,
the init's vocabulary, checkpoints."""
import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from adapters import MethodConfig, apply_method, trainable_params
from helpers import MINILM, POOLINGS, batch, count_union, logits, step_and_check, tiny
from prompts import PROMPT_INIT_IDS, PrefixEncoder, merge_prefix
from saving import export_merged, load_trainable, save_trainable


# --------------------------------------------------------------------------------- prefix
def test_prefix_attention_by_hand(tiny_config):
    """Each query attends over [P prefixes; T keys] with the padding mask extended by True."""
    model = tiny(tiny_config, "cls").eval()
    attn = model.bert.encoder.layer[0].attention.self
    B, T, H, N, P = 2, 5, 32, 4, 3
    D = H // N
    x = torch.randn(B, T, H)
    pk, pv = torch.randn(N, P, D), torch.randn(N, P, D)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()  # (B, T)
    mask = torch.cat([torch.ones(B, P, dtype=torch.bool), real], 1)[:, None, None, :]  # (B, 1, 1, P + T)
    q, k, v = (proj(x).view(B, T, N, D).transpose(1, 2) for proj in (attn.query, attn.key, attn.value))
    k, v = torch.cat([pk.expand(B, -1, -1, -1), k], 2), torch.cat([pv.expand(B, -1, -1, -1), v], 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask, -math.inf)  # (B, N, T, P + T)
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
    torch.testing.assert_close(attn(x, mask, (pk, pv)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_prefix_padding_merge_and_checkpoints(minilm, tmp_path, pooling):
    base = minilm[pooling][0]
    model = copy.deepcopy(base)
    cfg = MethodConfig("prefix", prefix_length=4, prefix_hidden=32)
    trainable = apply_method(model, cfg)
    ids, mask, labels = batch(30522)
    ref = logits(model, ids, mask)  # at init, before a large step makes the prefixes swamp the real keys
    assert (ref - logits(base, ids, mask)).abs().max() > 1e-3  # the prefixes are in the forward path
    padded = (F.pad(ids, (0, 5)), F.pad(mask, (0, 5)))  # 5 more padding positions: nothing changes
    torch.testing.assert_close(logits(model, *padded), ref, atol=1e-5, rtol=1e-5)
    short = logits(model, ids[1:, :8], mask[1:, :8])  # the padded row without its padding
    torch.testing.assert_close(short, ref[1:], atol=1e-5, rtol=1e-5)
    step_and_check(model, trainable, ids, mask, labels)
    ref = logits(model, ids, mask)
    save_trainable(model, trainable, cfg, tmp_path / "mlp.safetensors", {"base_model": "minilm", "task": "MRPC"})
    loaded, _, _ = load_trainable(tmp_path / "mlp.safetensors")  # the training form, MLP and all
    assert torch.equal(logits(loaded, ids, mask), ref)

    assert merge_prefix(model) and merge_prefix(model)  # twice == once
    prefix = model.bert.encoder.prefix
    assert isinstance(prefix, PrefixEncoder) and prefix.kv.shape == (6, 2, 12, 4, 32)  # (layers, 2, N, P, D)
    assert {n for n, _ in prefix.named_parameters()} == {"kv"}  # the MLP is gone
    assert torch.equal(logits(model, ids, mask), ref)
    with pytest.raises(ValueError, match="trainable_params"):  # the old list names tensors the model dropped
        save_trainable(model, trainable, cfg, tmp_path / "stale.safetensors", {"base_model": "minilm"})
    merged = trainable_params(model)
    assert sum(p.numel() for _, p in merged) == count_union(MINILM, "prefix", pooling, P=4, merged=True)
    save_trainable(model, merged, cfg, tmp_path / "kv.safetensors", {"base_model": "minilm"})
    assert "bert.encoder.prefix.kv" in load_file(str(tmp_path / "kv.safetensors"))
    assert not any(".hidden." in k for k in load_file(str(tmp_path / "kv.safetensors")))
    loaded, _, meta = load_trainable(tmp_path / "kv.safetensors")
    assert loaded.bert.encoder.prefix.merged and torch.equal(logits(loaded, ids, mask), ref)
    with pytest.raises(ValueError, match="prefixes cannot be merged"):
        export_merged(model, tmp_path / "nope")


# --------------------------------------------------------------------------------- prompt
def test_prompt_init_is_distinct_vocabulary_words(minilm):
    model = copy.deepcopy(minilm["mean"][0])
    apply_method(model, MethodConfig("prompt"))
    words = model.bert.embeddings.word_embeddings.weight
    rows = model.bert.embeddings.prompt.weight
    assert rows.shape == (20, 384) and rows.requires_grad and not words.requires_grad
    lo, hi = PROMPT_INIT_IDS
    found = [int((words[lo:hi] == r).all(1).nonzero()[0]) + lo for r in rows]
    assert len(set(found)) == 20  # 20 different words, all among the 5,000 most frequent
    assert rows.data_ptr() != words.data_ptr()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_prompt_is_a_hard_prompt_after_cls(minilm, pooling):
    """With its vectors set to the embeddings of words w, the prompt model computes exactly what the base
    model computes on [CLS] w x..., and returns the states of [CLS] x... only: pooling sees real tokens."""
    base = minilm[pooling][0]
    model = copy.deepcopy(base)
    apply_method(model, MethodConfig("prompt", prompt_length=3))
    w = torch.tensor([2023, 2003, 1037])
    with torch.no_grad():
        model.bert.embeddings.prompt.weight.copy_(base.bert.embeddings.word_embeddings.weight[w])
    ids, mask, _ = batch(30522)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1  # a sentence pair: the prompt takes [CLS]'s segment A
    hard = lambda x, fill: torch.cat([x[:, :1], fill.expand(2, 3), x[:, 1:]], 1)  # noqa: E731
    ids_h, mask_h, types_h = hard(ids, w), hard(mask, torch.ones(3, dtype=mask.dtype)), hard(types, 0 * w)
    model.eval(), base.eval()
    with torch.no_grad():
        h = model.bert(ids, mask, types)  # (B, T, H)
        h_hard = base.bert(ids_h, mask_h, types_h)  # (B, 3 + T, H)
    assert h.shape == (2, 12, 384)
    assert torch.equal(h, torch.cat([h_hard[:, :1], h_hard[:, 4:]], 1))
    expected = model.classifier(model.pool(h, mask))  # pooled over the real tokens' states only
    assert torch.equal(logits(model, ids, mask, types), expected)
    if pooling == "cls":  # the pooler reads [CLS], the same state as the hard-prompted base model's
        assert torch.equal(logits(model, ids, mask, types), logits(base, ids_h, mask_h, types_h))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_prompt_padding_step_and_checkpoint(minilm, tmp_path, pooling):
    base = minilm[pooling][0]
    model = copy.deepcopy(base)
    cfg = MethodConfig("prompt", prompt_length=5)
    trainable = apply_method(model, cfg)
    ids, mask, labels = batch(30522)
    for trained in (False, True):  # at init, and after a large step
        if trained:
            step_and_check(model, trainable, ids, mask, labels)
        ref = logits(model, ids, mask)
        padded = (F.pad(ids, (0, 5)), F.pad(mask, (0, 5)))  # 5 more padding positions: nothing changes
        torch.testing.assert_close(logits(model, *padded), ref, atol=1e-5, rtol=1e-5)
        short = logits(model, ids[1:, :8], mask[1:, :8])  # the padded row without its padding
        torch.testing.assert_close(short, ref[1:], atol=1e-5, rtol=1e-5)
    save_trainable(model, trainable, cfg, tmp_path / "p.safetensors", {"base_model": "minilm"})
    expected = {"bert.embeddings.prompt.weight", "classifier.weight", "classifier.bias"}
    expected |= {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} if pooling == "cls" else set()
    assert set(load_file(str(tmp_path / "p.safetensors"))) == expected
    loaded, _, _ = load_trainable(tmp_path / "p.safetensors")
    assert torch.equal(logits(loaded, ids, mask), ref)
    with pytest.raises(ValueError, match="soft prompts cannot be merged"):
        export_merged(model, tmp_path / "nope")


def test_prompt_too_long_is_named(tiny_config):
    model = tiny(tiny_config, "cls")  # 64 positions
    apply_method(model, MethodConfig("prompt", prompt_length=60))
    with pytest.raises(ValueError, match="12 tokens \\+ 60 prompt tokens > max_position_embeddings 64"):
        model(*batch(tiny_config.vocab_size)[:2])
    small = tiny(dataclasses.replace(tiny_config, vocab_size=100), "cls")  # no silent fallback to other words
    with pytest.raises(ValueError, match="word embeddings 1996..6995 .* vocabulary has only 100"):
        apply_method(small, MethodConfig("prompt"))
