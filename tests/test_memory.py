"""The memory account (memory.py): saved bytes counted by hand on tiny models, the rules (parameters
left out, a storage saved twice counted once, weight casts on their own line), the weight, gradient and
optimizer lines against a real AdamW step, and on CUDA the total against the allocator's peak."""
import gc
import weakref

import pytest
import torch
import torch.nn as nn

from adapters import MethodConfig, apply_method
from helpers import tiny
from memory import MEASURED, account, apply, cuda_check, method_accounts, saved_bytes, table
from model import BertConfig, BertForSequenceClassification

F32 = 4  # bytes per fp32 element


def test_hand_counted_linear_gelu_layernorm():
    """y = LayerNorm(GELU(W x + b)), x (3, 4), W (8, 4), everything trainable. Autograd saves:
    x for W's gradient (3*4), the Linear's output for GELU's derivative (3*8), GELU's output for
    LayerNorm's (3*8), and LayerNorm's per-row mean and 1/std (3 each); W, gamma, beta are parameters."""
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8))
    x = torch.randn(3, 4)
    assert saved_bytes(lambda: model(x).sum(), model) == ((3 * 4 + 3 * 8 + 3 * 8 + 3 + 3) * F32, 0)


def test_a_frozen_linear_saves_no_input():
    """Linear -> GELU -> Linear. Full: x (W1's gradient), h = W1 x + b1 (GELU's), g = GELU(h) (W2's).
    BitFit (weights frozen, biases train): a frozen W needs no input for its gradient, so x and g are not
    saved; h still is, because b1's gradient passes through GELU's derivative."""
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    full = saved_bytes(lambda: model(x).sum(), model)
    for linear in (model[0], model[2]):
        linear.weight.requires_grad_(False)
    bitfit = saved_bytes(lambda: model(x).sum(), model)
    assert full == ((3 * 4 + 3 * 8 + 3 * 8) * F32, 0)
    assert bitfit == (3 * 8 * F32, 0)


def test_a_storage_saved_twice_is_counted_once():
    x = torch.randn(3, 4, requires_grad=True)
    # x * x saves x twice; sin saves a view of x: the same storage, one count
    assert saved_bytes(lambda: (x * x).sum() + x.view(-1).sin().sum(), nn.Module()) == (3 * 4 * F32, 0)


def test_counting_leaves_no_graph_alive():
    """The hooks live in every node of the graph; nothing they reach may hold a saved tensor afterwards
    (that cycle runs through C++, where Python's collector cannot break it)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    refs = []

    def forward():
        h = model[1](model[0](torch.randn(3, 4)))  # tanh saves its own output
        refs.append(weakref.ref(h))
        return model[2](h).sum()
    assert saved_bytes(forward, model) == ((3 * 4 + 3 * 8) * F32, 0)  # x for W1, h for tanh and W2
    gc.collect()
    assert refs[0]() is None


def test_parameters_buffers_and_their_views_are_left_out():
    model = nn.Linear(4, 8)
    model.register_buffer("gain", torch.randn(3, 8))
    x = torch.randn(3, 4, requires_grad=True)
    # linear saves W and x; x @ W.T saves x and a view of W; y * gain saves the buffer only (gain has no grad)
    assert saved_bytes(lambda: (model(x) * model.gain).sum() + (x @ model.weight.T).sum(), model) == (3 * 4 * F32, 0)


def test_autocast_copies_of_weights_are_their_own_line():
    """Under bf16 autocast: the first Linear's input does not need a gradient, so it saves only the bf16
    copy of x (3*4*2); the second saves its bf16 input (3*8*2) and the bf16 copy of W2 (2*8*2), which is
    a weight cast, not an activation."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    x = torch.randn(3, 4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float().sum()
    assert saved_bytes(step, model) == ((3 * 4 + 3 * 8) * 2, 2 * 8 * 2)


def _bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("fused", [False, True])
def test_weights_gradients_and_optimizer_state_match_a_real_adamw_step(tiny_config, fused):
    model = tiny(tiny_config, "cls")
    trainable = apply_method(model, MethodConfig(method="lora"))
    acct = account(model, trainable, batch=2, length=8, method="lora")
    assert acct.frozen_weights + acct.trainable_weights == _bytes(model.parameters())
    assert acct.trainable_weights == _bytes(p for _, p in trainable) < acct.frozen_weights
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-3, fused=fused)
    ids = torch.randint(5, 100, (2, 8))
    model(ids).sum().backward()
    opt.step()
    assert acct.gradients == _bytes(p.grad for _, p in trainable)
    assert acct.optimizer_state == _bytes(t for s in opt.state.values() for t in s.values())  # exp_avg(_sq), step
    assert acct.total == sum(acct.record()[line] for line in acct.LINES) == acct.record()["total"]


def test_measuring_leaves_the_random_stream_and_the_mode_alone(tiny_config):
    model = tiny(tiny_config, "cls").eval()
    trainable = apply_method(model, MethodConfig(method="full"))
    state = torch.get_rng_state()
    account(model, trainable, batch=2, length=8)  # dropout draws masks, from a forked generator
    assert torch.equal(torch.get_rng_state(), state) and not model.training


def test_frozen_methods_save_fewer_activations_than_full(tiny_config):
    """On a tiny BERT: BitFit's frozen Linears save no inputs for weight gradients; the head alone saves
    almost nothing of the encoder (no parameter before the head needs a gradient)."""
    accts = {a.method: a for a in method_accounts(tiny(tiny_config, "cls"), ("full", "bitfit", "head"), 2, 8)}
    assert accts["head"].activations < accts["bitfit"].activations < accts["full"].activations
    assert accts["head"].activations < 2 * 8 * tiny_config.hidden_size * F32  # far less than one (B, T, H) per layer


def test_every_measured_method_gets_an_account(tiny_config):
    accts = method_accounts(tiny(tiny_config, "mean"), MEASURED, batch=2, length=8)
    assert [a.method for a in accts] == list(MEASURED)
    by = {a.method: a for a in accts}
    assert by["qlora"].frozen_weights < by["lora"].frozen_weights  # query and value in 4 bits
    assert by["qlora"].trainable_weights == by["lora"].trainable_weights  # the same A, B and head
    rows = table(accts).splitlines()
    assert len(rows) == 2 + len(MEASURED) and rows[2].split()[0] == "full"


def test_a_stale_trainable_list_is_refused(tiny_config):
    model = tiny(tiny_config, "cls")
    trainable = apply_method(model, MethodConfig(method="bitfit"))
    model.classifier.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="disagree"):
        account(model, trainable, batch=2, length=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares with CUDA's allocator: needs a GPU")
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_account_against_cuda_peak(method):
    """What one step adds at its peak against the account's step lines (gradients, activations, casts).
    The band is loose: the account counts gradients and activations as if live at once and leaves out
    temporaries, and it has not yet been measured on a GPU (none was lent when this was written)."""
    config = BertConfig(vocab_size=7000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=256)
    model = BertForSequenceClassification(config)
    result = cuda_check(model, apply(model, method), batch=16, length=128)
    print({k: v for k, v in result.items() if k != "account"})
    assert result["before_step"] >= result["account_resident"]
    assert 0.7 < result["step_ratio"] < 1.3
