"""Helpers the method tests share: dimensions for counting by hand, tiny models, a batch, and the
proof that one large step moves every trainable tensor and no frozen one."""
import dataclasses

import torch
import torch.nn.functional as F

from audit import assert_optimizer_matches, fingerprint, verify_frozen
from lora import LORA_TARGETS
from model import BertForSequenceClassification

POOLINGS = ("mean", "cls")
CORE = ("full", "bitfit", "adapter", "lora", "head")
NEW = ("prompt", "prefix", "ia3")
HYBRIDS = ("bitfit+lora", "adapter+bitfit", "bitfit+ia3", "prefix+prompt", "ia3+lora+prompt")
SMALL = dict(prompt_length=5, prefix_length=4, prefix_hidden=32, lora_targets=("query",))  # fits ia3+lora
ALL_TARGETS = tuple(LORA_TARGETS)
MINILM = dict(H=384, I=1536, L=6, V=30522, P=512, T=2)  # all-MiniLM-L6-v2's config.json
BERT_BASE = dict(H=768, I=3072, L=12, V=30522, P=512, T=2)  # BertConfig() defaults


def count_union(d, method, pooling, V=20, P=20, h=512, r=8, m=64, labels=2, merged=False):
    """Trainable parameters of a method (a hybrid: of the union), from the dimensions alone."""
    H, I, L = d["H"], d["I"], d["L"]
    head = H * labels + labels + (H * H + H if pooling == "cls" else 0)  # classifier (+ pooler dense)
    biases = L * (4 * H + I + H + 2 * H) + H  # q,k,v,attn-out; FFN in, out; two LayerNorms; embedding LN
    ln_gains = L * 2 * H + H  # LayerNorm weights; their biases are in `biases`
    own = {
        "prompt": V * H,  # V vectors of size H
        "prefix": L * 2 * P * H if merged else P * H + (H * h + h) + (h * L * 2 * H + L * 2 * H),  # P' + MLP
        "ia3": L * (H + H + I),  # l_k, l_v, l_ff per layer
        "lora": L * 2 * (r * H + H * r),  # A (r, H) and B (H, r) on query and value
        "adapter": L * 2 * (H * m + m + m * H + H) + ln_gains,  # plus LayerNorm gains (biases: below)
        "bitfit": 0,
    }
    parts = method.split("+")
    n = sum(own[p] for p in parts) + head
    if "bitfit" in parts:
        n += biases  # every backbone bias, the LayerNorms' included
    elif "adapter" in parts:
        n += L * 2 * H + H  # the LayerNorms' biases
    return n


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(config, pooling):
    return BertForSequenceClassification(dataclasses.replace(config, pooling=pooling))


def batch(vocab_size, pad_from=8):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, min(vocab_size, 2000), (2, 12), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, pad_from:] = 0  # one padded row, so the mean pooling's mask matters
    return ids, mask, torch.tensor([0, 1])


def logits(model, ids, mask, types=None):
    model.eval()
    with torch.no_grad():
        return model(ids, mask, types)


def step_and_check(model, trainable, ids, mask, labels):
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable}
    fp = fingerprint(model)
    assert set(fp) == set(frozen)  # the model has no buffers; every frozen parameter is covered
    # lr 1e-2, not 1.0: Adam moves every parameter with a gradient by about lr, so any leak into a
    # frozen tensor still shows, while at 1.0 the first step could saturate [CLS] pooling's tanh to
    # exactly +-1 and leave LoRA's A with a zero gradient on the second (1 head init in 12 did).
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-2, weight_decay=0.0)
    assert_optimizer_matches(opt, trainable)
    model.train()
    for _ in range(2):  # LoRA's A gets a gradient only once B != 0, i.e. on the second step
        opt.zero_grad()
        F.cross_entropy(model(ids, mask), labels).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), f"frozen {n} moved"
    assert [n for n, p in trainable if torch.equal(p, before[n])] == []
    assert verify_frozen(model, fp) == {"verdict": "passed", "checked": len(frozen)}
