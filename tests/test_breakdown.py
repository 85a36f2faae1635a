"""study/breakdown.py's claims on a tiny BERT: the parts sum to the profiled step; every matrix product
lands in the part it is (forward, input gradient, weight gradient) as counted by hand from what each
method trains; every dropout mask, torch's or ours, lands in `dropout masks`; batches whose rows equal a
layer width are left out, and one that slipped through is an error, not a guess."""
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import dropout
from adapters import MethodConfig, apply_method
from helpers import tiny
from precision import keep_frozen_in_compute_dtype
from study import breakdown

B, T = 3, 7  # rows 3 and 21: no width of the tiny model (32, 64, 2, LoRA's 8)


def batches(vocab_size, n=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, min(vocab_size, 2000), (B, T), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.tensor([0, 1, 1])})
    return out


def profile_method(config, method, masks="torch", amp_dtype=None):
    model = tiny(config, "cls")
    trainable = apply_method(model, MethodConfig(method, lora_targets=("query", "value")))
    dropout.set_masks(model, masks, seed=0)
    keep_frozen_in_compute_dtype(model, amp_dtype)
    bs = batches(config.vocab_size)
    events, rows, measured = breakdown.profiled(model, trainable, bs, amp_dtype)
    return model, events, rows, measured, len(bs)


@pytest.mark.parametrize("method, masks, amp", [("full", "torch", None), ("bitfit", "fast", torch.bfloat16),
                                                ("lora", "fast", None)])
def test_parts_sum_to_the_profiled_step(tiny_config, method, masks, amp):
    model, events, rows, measured, n = profile_method(tiny_config, method, masks, amp)
    assert rows == {B * T, B}  # what the Linears multiplied: tokens, and the pooled [CLS] rows
    parts = breakdown.parts_of(events, rows, breakdown.widths_of(model))
    steps = [e for e in events if e.name == breakdown.STEP]
    assert len(steps) == n and set(parts) == set(breakdown.PARTS)
    assert sum(parts.values()) == pytest.approx(sum(e.cpu_time_total for e in steps), rel=1e-9)
    assert all(parts[p] > 0 for p in ("matmul fwd", "attention", "dropout masks", "optimizer", "elementwise+norm"))
    assert measured > 0


LINEARS = 2 * 6 + 2  # per layer q, k, v, attention output, FFN in, FFN out; the pooler; the classifier


@pytest.mark.parametrize("method, forward, input_grad, weight_grad", [
    ("full", LINEARS, LINEARS, LINEARS),  # the first layer's input is trainable embeddings: all 14
    ("bitfit", LINEARS, LINEARS, 1),  # only the classifier's weight trains
    ("head", LINEARS, 0, 1),  # nothing before the classifier trains: no input gradient at all
    ("lora", LINEARS + 8, LINEARS - 3 + 8 - 2, 1 + 8),  # + x A^T and (x A^T) B^T on q, v of 2 layers
])
def test_matmuls_land_in_their_part(tiny_config, method, forward, input_grad, weight_grad):
    """Counts per step by hand. LoRA: layer 0's inputs are the frozen embeddings' output, so its q, k, v
    and its two x A^T have no input gradient; the classifier, A and B have weight gradients."""
    model, events, rows, _, n = profile_method(tiny_config, method)
    kernels = Counter(part for e, part in breakdown.categorized(events, rows, breakdown.widths_of(model))
                      if breakdown.MATMUL.match(e.name))
    assert kernels == {p: k * n for p, k in [("matmul fwd", forward), ("matmul input-grad", input_grad),
                                             ("matmul weight-grad", weight_grad)] if k}


@pytest.mark.parametrize("masks, scope", [("torch", "aten::bernoulli_"), ("fast", "dropout::masks")])
def test_every_mask_lands_in_dropout_masks(tiny_config, masks, scope):
    model, events, rows, _, n = profile_method(tiny_config, "full", masks)
    found = [part for e, part in breakdown.categorized(events, rows, breakdown.widths_of(model)) if e.name == scope]
    assert found == ["dropout masks"] * (1 + 3 * tiny_config.num_hidden_layers + 1) * n  # SDPA's masks too


def test_batches_whose_rows_equal_a_width_are_left_out(tiny_config):
    widths = breakdown.widths_of(tiny(tiny_config, "cls"))
    assert widths == {32, 64, 2}  # hidden, FFN, labels
    ok = batches(tiny_config.vocab_size, 1)[0]  # rows 3 and 21
    tokens = {"input_ids": torch.ones(4, 8, dtype=torch.long)}  # 32 token rows: the hidden width
    pooled = {"input_ids": torch.ones(2, 9, dtype=torch.long)}  # 2 pooled rows: the label count
    short = {"input_ids": torch.ones(4, 3, dtype=torch.long)}  # 12 rows, but 4 * (3 + 5) = 32 with a prompt of 5
    assert breakdown.distinct_batches([ok, tokens, pooled, short], widths) == [ok, short]
    assert breakdown.distinct_batches([ok, short], widths, extra_rows=5) == [ok]
    model = tiny(tiny_config, "cls")
    apply_method(model, MethodConfig("prompt", prompt_length=5))  # V = 5 virtual tokens: `short` clashes
    assert breakdown.usable_batches(model, [short, ok, ok], steps=1) == [ok]
    with pytest.raises(ValueError, match="none of 2 batches"):
        breakdown.usable_batches(model, [short, pooled], steps=3)


def test_a_product_over_a_row_count_that_is_also_a_width_is_an_error():
    mm = SimpleNamespace(name="aten::mm", input_shapes=[[32, 21], [21, 32]])  # sums over 21
    assert breakdown.matmul_part(mm, True, rows={21, 3}, widths={32}) == "matmul weight-grad"
    assert breakdown.matmul_part(mm, True, rows={3}, widths={21, 32}) == "matmul input-grad"
    assert breakdown.matmul_part(mm, False, rows={21}, widths={21}) == "matmul fwd"
    with pytest.raises(ValueError, match="sums over 21, both a row count and a layer width"):
        breakdown.matmul_part(mm, True, rows={21}, widths={21})


def test_each_batch_is_timed_and_profiled_in_turn_and_the_fastest_of_each_kind_counts(tiny_config, monkeypatch):
    """Timed and profiled steps alternate, their order swapping from batch to batch; the measured step is
    the fastest timed run's, and the events kept are the fastest profiled run's (one STEP per batch)."""
    model = tiny(tiny_config, "cls")
    trainable = apply_method(model, MethodConfig("bitfit"))
    bs = batches(tiny_config.vocab_size, n=2)
    kinds, real_step = [], breakdown.train_step
    clock = iter([0.0, 5.0, 10.0, 12.0, 20.0, 29.0, 30.0, 34.0])  # timed runs of batch 0: 5, 2; batch 1: 9, 4
    monkeypatch.setattr(breakdown.time, "perf_counter", lambda: next(clock))

    def step(*args):
        kinds.append("profiled" if torch.autograd.profiler._is_profiler_enabled else "timed")
        real_step(*args)
    monkeypatch.setattr(breakdown, "train_step", step)
    profiled_runs, profiled_us = [], iter([7.0, 3.0, 1.0, 8.0])  # profiled runs of batch 0: 7, 3; batch 1: 1, 8

    def step_us(events):
        profiled_runs.append(events)
        return next(profiled_us)
    monkeypatch.setattr(breakdown, "step_microseconds", step_us)
    events, _, measured = breakdown.profiled(model, trainable, bs, None, repeats=2)
    assert kinds == ["timed"] * 2 + ["timed", "profiled"] * 2 + ["profiled", "timed"] * 2  # untimed pass first
    assert measured == pytest.approx((2.0 + 4.0) / 2)
    assert events == profiled_runs[1] + profiled_runs[2]
    assert len([e for e in events if e.name == breakdown.STEP]) == 2
