"""dropout.py's claims: the fast masks keep 1 - p of the elements, are reproducible from the seed and differ
between seeds; `torch` mode is bit for bit the code before issue 31 (nn.Dropout and SDPA's dropout_p);
fast attention is the explicit formula with our mask; evaluation drops nothing in either mode."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dropout
from adapters import MethodConfig, apply_method
from model import BertForSequenceClassification, BertSelfAttention, Dropout, attention_with_own_mask
from helpers import batch


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_within_4_standard_deviations(p):
    n = 4_000_000
    rate = dropout.MaskStream(0).keep((n,), p).double().mean().item()
    assert abs(rate - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)  # 4 sd: 6.0e-4 at p = 0.1


def test_keep_probability_is_exact_to_1e4():
    """16-bit uniforms: P(keep) = t / 65536 is within 2**-17 of 1 - p for every p (8 bits would not do)."""
    worst = max(abs(dropout.keep_threshold(p) / dropout.LEVELS - (1 - p)) for p in torch.linspace(0, 1, 10001).tolist())
    assert 7e-6 < worst <= 2**-17 < 1e-4  # the bound is reached, not just met by luck


def test_fast_dropout_drops_and_scales_like_nn_dropout():
    layer = Dropout(0.25)
    layer.masks = dropout.MaskStream(1)
    y = layer.train()(torch.ones(1000, 1000))
    assert torch.equal(y.unique(), F.dropout(torch.ones(1000, 1000), 0.25).unique())  # {0, 1 / 0.75} in fp32
    assert abs((y == 0).double().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 1e6)
    x = torch.randn(50, 60).bfloat16()  # in bf16 too: x times the mask, scaled in x's dtype as torch scales
    layer.masks = dropout.MaskStream(4)
    assert torch.equal(layer(x), x * dropout.MaskStream(4).keep(x.shape, 0.25).to(x.dtype).div_(0.75))


def test_same_seed_same_masks_other_seed_other_masks():
    a, b, c = dropout.MaskStream(7), dropout.MaskStream(7), dropout.MaskStream(8)
    for shape in [(3, 5, 7), (1000,)]:
        m = a.keep(shape, 0.1)
        assert m.shape == shape and torch.equal(m, b.keep(shape, 0.1))
        assert not torch.equal(m, c.keep(shape, 0.1))
    # the stream is not the one torch.manual_seed(7) restarts (that one draws the init and the data order)
    def words(generator):
        return torch.empty(4, dtype=torch.int64).random_(-2**63, None, generator=generator)
    assert not torch.equal(words(torch.Generator().manual_seed(7)), words(dropout.MaskStream(7).generator))


class OldSelfAttention(nn.Module):
    """BertSelfAttention as model.py had it before issue 31: SDPA with its own dropout_p."""

    def __init__(self, new: BertSelfAttention):
        super().__init__()
        self.num_heads, self.query, self.key, self.value = new.num_heads, new.query, new.key, new.value
        self.dropout_p = new.dropout.p

    def forward(self, x, mask, prefix=None):
        B, T, H = x.shape
        N = self.num_heads
        q, k, v = (proj(x).view(B, T, N, H // N).transpose(1, 2) for proj in (self.query, self.key, self.value))
        if prefix is not None:
            pk, pv = (p.to(k.dtype).expand(B, -1, -1, -1) for p in prefix)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, H)


def old_model(model):
    """A copy of `model` built the old way: plain nn.Dropout and OldSelfAttention."""
    old = copy.deepcopy(model)
    for name, m in list(old.named_modules()):
        parent, _, child = name.rpartition(".")
        if isinstance(m, BertSelfAttention):
            setattr(old.get_submodule(parent), child, OldSelfAttention(m))
        elif isinstance(m, Dropout):
            setattr(old.get_submodule(parent), child, nn.Dropout(m.p))
    assert not any(isinstance(m, (Dropout, BertSelfAttention)) for m in old.modules())
    return old


def train_step_outputs(model, ids, mask, labels, amp):
    """Logits and every gradient of one training-mode forward and backward, from torch's seed 123."""
    model.train().zero_grad()
    torch.manual_seed(123)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = model(ids, mask)
    F.cross_entropy(logits.float(), labels).backward()
    return logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


METHODS = [MethodConfig("full"), MethodConfig("lora", lora_dropout=0.1, lora_targets=("query", "value")),
           MethodConfig("prefix", prefix_length=3, prefix_hidden=16)]


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cfg", METHODS, ids=lambda c: c.method)
def test_torch_mode_is_bit_identical_to_the_old_code(tiny_config, cfg, amp):
    model = BertForSequenceClassification(tiny_config)
    apply_method(model, cfg)
    assert dropout.set_masks(model, "torch") > 0 and dropout.mode_of(model) == "torch"
    ids, mask, labels = batch(tiny_config.vocab_size)
    logits, grads = train_step_outputs(model, ids, mask, labels, amp)
    old_logits, old_grads = train_step_outputs(old_model(model), ids, mask, labels, amp)
    assert torch.equal(logits, old_logits)
    assert grads.keys() == old_grads.keys() and all(torch.equal(grads[n], old_grads[n]) for n in grads)
    # the comparison can fail: fast masks give other logits from the same torch seed
    dropout.set_masks(model, "fast", seed=0)
    assert not torch.equal(train_step_outputs(model, ids, mask, labels, amp)[0], old_logits)


def explicit_attention(q, k, v, mask, keep, p):
    """softmax(q k^T / sqrt(D) + mask) * keep / (1 - p) @ v, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
    return (torch.softmax(scores, -1) * keep / (1 - p)) @ v


def test_fast_attention_equals_the_formula_with_its_mask():
    B, N, T, D, p = 3, 4, 9, 8, 0.3
    q, k, v = (torch.randn(B, N, T, D) for _ in range(3))
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    mask[1, ..., 6:] = False  # a padded example
    layer = Dropout(p).train()
    layer.masks = dropout.MaskStream(5)
    y = attention_with_own_mask(q, k, v, mask, layer)
    keep = dropout.MaskStream(5).keep((B, N, T, T), p)  # the same seed draws the same mask
    assert torch.allclose(y.double(), explicit_attention(q, k, v, mask, keep, p), atol=1e-6)
    # without dropout the formula is SDPA's
    assert torch.allclose(attention_with_own_mask(q, k, v, mask, layer.eval()),
                          F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 in, bf16 out, as SDPA under autocast
        y = attention_with_own_mask(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, layer.train())
    assert y.dtype == torch.bfloat16


def test_fast_mode_attention_layer_uses_our_mask(tiny_config):
    """BertSelfAttention in fast mode, training on a CPU, takes its attention mask from the stream."""
    attn = BertForSequenceClassification(tiny_config).bert.encoder.layer[0].attention.self.train()
    attn.dropout.masks = dropout.MaskStream(2)
    x, mask = torch.randn(2, 6, tiny_config.hidden_size), torch.ones(2, 1, 1, 6, dtype=torch.bool)
    B, T, H, N = 2, 6, tiny_config.hidden_size, attn.num_heads
    q, k, v = (proj(x).view(B, T, N, H // N).transpose(1, 2) for proj in (attn.query, attn.key, attn.value))
    keep = dropout.MaskStream(2).keep((B, N, T, T), attn.dropout.p)
    expected = explicit_attention(q, k, v, mask, keep, attn.dropout.p).transpose(1, 2).reshape(B, T, H)
    assert torch.allclose(attn(x, mask).double(), expected, atol=1e-6)


@pytest.mark.parametrize("mode", dropout.MODES)
def test_eval_applies_no_dropout(tiny_config, mode):
    model = BertForSequenceClassification(tiny_config)
    apply_method(model, MethodConfig("lora", lora_dropout=0.1))
    no_dropout = copy.deepcopy(model)
    for m in no_dropout.modules():
        if isinstance(m, Dropout):
            m.p = 0.0
    dropout.set_masks(model, mode, seed=0)
    ids, mask, _ = batch(tiny_config.vocab_size)
    before, torch_rng = dropout.get_state(model), torch.get_rng_state()
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, mask), no_dropout.train()(ids, mask))  # p = 0 trains as eval
    assert torch.equal(torch.get_rng_state(), torch_rng)  # no mask drawn
    assert (before is None) == (mode == "torch") and (before is None or torch.equal(dropout.get_state(model), before))


def test_set_masks_reaches_every_dropout_and_says_when_it_cannot(tiny_config):
    model = BertForSequenceClassification(tiny_config)
    L = tiny_config.num_hidden_layers
    assert dropout.set_masks(model, "fast", seed=1) == 1 + 3 * L + 1  # embeddings, 3 per layer, the head
    assert len({id(m.masks) for _, m in dropout.dropouts(model)}) == 1  # one stream, shared
    apply_method(model, MethodConfig("lora", lora_dropout=0.1))  # LoRA's dropouts come in torch mode
    with pytest.raises(ValueError, match="call set_masks after apply_method"):
        dropout.mode_of(model)
    assert dropout.set_masks(model, "fast", seed=1) == 1 + 3 * L + 1 + 2 * L  # LoRA on query and value
    with pytest.raises(ValueError, match="allowed"):
        dropout.set_masks(model, "quick")
    model.dropout = nn.Dropout(0.1)
    with pytest.raises(TypeError, match="^dropout is a plain nn.Dropout"):
        dropout.set_masks(model, "fast")


def test_resumed_stream_draws_what_the_uninterrupted_one_draws(tiny_config):
    model = BertForSequenceClassification(tiny_config)
    dropout.set_masks(model, "fast", seed=3)
    state = dropout.get_state(model).clone()
    first = dropout.stream_of(model).keep((5, 7), 0.1)
    dropout.set_masks(model, "fast", seed=3)
    dropout.stream_of(model).keep((100,), 0.1)  # drawn after the "checkpoint"
    dropout.set_state(model, state)
    assert torch.equal(dropout.stream_of(model).keep((5, 7), 0.1), first)
    with pytest.raises(ValueError, match="present"):
        dropout.set_state(BertForSequenceClassification(tiny_config), state)  # a torch-mode model


def test_auto_masks_are_fast_on_a_cpu_torch_on_cuda_and_what_a_resumed_run_recorded():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dropout.resolve("auto", cpu) == "fast" and dropout.resolve("auto", cuda) == "torch"
    assert dropout.resolve("auto", cpu, {"config": {"task": "mrpc"}}) == "torch"  # a run from before the option
    assert dropout.resolve("auto", cuda, {"config": {"dropout_masks": "fast"}}) == "fast"
    assert dropout.resolve("torch", cpu) == "torch" and dropout.resolve("fast", cuda, {"config": {}}) == "fast"
    assert dropout.resolve("auto", cpu, {"status": "unreadable"}) == "fast"  # nothing recorded to follow


def test_a_run_records_its_masks_and_resume_refuses_others(tmp_path, glue_dir):
    import rundir
    import train
    from config import parse_args
    argv = ["--model", "minilm", "--task", "mrpc", "--method", "head", "--frac", "0.03", "--epochs", "1",
            "--max-length", "32", "--amp", "off", "--data-dir", str(glue_dir), "--out", str(tmp_path / "r")]
    assert train.main(argv)["config"]["dropout_masks"] == "fast"  # auto, on this CPU
    with pytest.raises(rundir.RunDirError, match=r"dropout_masks 'fast' \(asked 'torch'\)"):
        rundir.claim_out_dir(parse_args([*argv, "--resume", "--dropout-masks", "torch"]))
