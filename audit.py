"""The audit of a method: what trains, grouped and counted, and the proof that nothing else moved.

`audit` counts trainable / total parameters per group (embeddings, attention, FFN, LayerNorm,
biases, adapters, LoRA, prompt, prefix, IA3, pooler, head) from the very list apply_method returned,
and for hybrids what each part claims. `assert_optimizer_matches` checks, by identity, that the
optimizer holds exactly that list. `fingerprint` hashes every frozen parameter and buffer before
training; `verify_frozen` compares them bit for bit afterwards.
"""
import hashlib
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from adapters import ADAPTER_PARAMS, mergeable_layers, method_patterns
from ia3 import IA3_PARAMS
from lora import LORA_PARAMS
from prompts import PREFIX_PARAMS, PROMPT_PARAMS
from qlora import NF4_PARAMS

# Every parameter by kind: a second view, independent of the method table (adapters.TRAINABLE), which
# is what makes the audit an audit: it counts what trains in each kind whatever the method claims. The
# backbone's kinds are spelled here; what a method inserts is named by the module that inserts it.
GROUPS = (  # disjoint by construction: every parameter must match exactly one (checked in group_of)
    ("embeddings", r"^bert\.embeddings\.(word|position|token_type)_embeddings\.weight$"),
    ("attention", r"^bert\.encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight$"),
    ("FFN", r"^bert\.encoder\.layer\.\d+\.(intermediate|output)\.dense\.weight$"),
    ("LayerNorm", r"^bert\..*\.LayerNorm\.weight$"),  # gains (gamma); LayerNorm biases are "biases"
    ("biases", r"^bert\.(embeddings|encoder)\.(.+\.)?(query|key|value|dense|LayerNorm)\.bias$"),  # backbone's
    ("adapters", ADAPTER_PARAMS),  # adapter weights and their own biases
    ("LoRA", LORA_PARAMS),
    ("prompt", PROMPT_PARAMS),
    ("prefix", PREFIX_PARAMS),  # the MLP and its embedding, or the merged prefixes
    ("IA3", IA3_PARAMS),
    ("4-bit weights", NF4_PARAMS),  # QLoRA's frozen NF4 codes (two weights a byte) and their scales
    ("pooler", r"^bert\.pooler\.dense\.(weight|bias)$"),  # BERT's pretrained pooler ([CLS] pooling only)
    ("head", r"^classifier\.(weight|bias)$"),  # the task head
)


def group_of(name: str) -> str:
    matches = [group for group, pattern in GROUPS if re.search(pattern, name)]
    if len(matches) != 1:
        raise ValueError(f"parameter {name!r} matches audit groups {matches}, not exactly one: fix audit.GROUPS")
    return matches[0]


@dataclass
class Audit:
    method: str  # "" when not given
    pooling: str  # "cls" or "mean": the pooling in force
    rows: list  # [(group, trainable, total)] in GROUPS order, groups the model lacks left out
    trainable: int
    total: int  # every parameter, the added adapter / LoRA ones included (as PEFT counts)
    trainable_bytes: int  # tensor bytes save_trainable writes (plus a header of a few KB)
    parts: list = ()  # hybrids: [(part, claimed, claimed by no other part)], then ("shared", n, n)

    def line(self) -> str:
        return (f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                f"trainable%: {100 * self.trainable / self.total:.4f}")

    def table(self) -> str:
        out = [f"method {self.method or '?'}, pooling {self.pooling}",
               f"{'group':<11}{'trainable':>13}{'total':>13}{'%':>9}"]
        for group, t, n in self.rows:
            out.append(f"{group:<11}{t:>13,}{n:>13,}{100 * t / n if n else 0:>9.2f}")
        if self.parts:
            out.append(f"{'part':<11}{'claims':>13}{'alone':>13}")
            out += [f"{part:<11}{claimed:>13,}{alone:>13,}" for part, claimed, alone in self.parts]
        out.append(self.line())
        return "\n".join(out)


def audit(model: nn.Module, trainable: list, method: str = "", train_pooler: bool = False) -> Audit:
    """Count trainable / total parameters per group from the list apply_method returned; asserts
    that list is exactly the parameters with requires_grad. train_pooler: MethodConfig's, for the
    hybrids' parts table."""
    ids = {id(p) for _, p in trainable}
    flagged = {id(p) for p in model.parameters() if p.requires_grad}
    if ids != flagged:
        raise ValueError("the trainable list and requires_grad disagree: was a flag changed after apply_method?")
    counts = {g: [0, 0] for g, _ in GROUPS}
    for name, p in model.named_parameters():
        row = counts[group_of(name)]
        row[0], row[1] = row[0] + (p.numel() if id(p) in ids else 0), row[1] + p.numel()
    rows = [(g, t, n) for g, (t, n) in counts.items() if n]
    return Audit(method, model.config.pooling, rows, sum(r[1] for r in rows), sum(r[2] for r in rows),
                 checkpoint_size_bytes(trainable), hybrid_parts(trainable, method, train_pooler))


def hybrid_parts(trainable: list, method: str, train_pooler: bool = False) -> list:
    """What each part of a hybrid contributes: [(part, trainable params its row claims, those no other
    part claims)], then ("shared", n, n) for the params several parts claim (the head at least).
    With train_pooler the pooler's pattern is a part of its own, "pooler"."""
    if not method or "+" not in method:
        return []
    rows_of = {}  # part -> its patterns, in order
    for part, pattern in method_patterns(method, train_pooler):
        rows_of.setdefault(part, []).append(pattern)
    parts = list(rows_of)
    claims = [(p.numel(), [part for part in parts if any(re.search(pat, n) for pat in rows_of[part])])
              for n, p in trainable]
    rows = [(part, sum(k for k, c in claims if part in c), sum(k for k, c in claims if c == [part])) for part in parts]
    shared = sum(k for k, c in claims if len(c) > 1)
    return rows + [("shared", shared, shared)]


def checkpoint_size_bytes(trainable: list) -> int:
    """Bytes of tensor data in a save_trainable checkpoint (the safetensors header adds a few KB)."""
    return sum(p.numel() * p.element_size() for _, p in trainable)


def assert_optimizer_matches(optimizer: torch.optim.Optimizer, trainable: list):
    """The optimizer holds exactly the audited parameters, by identity, each once."""
    held = [p for group in optimizer.param_groups for p in group["params"]]
    held_ids, audited = {id(p) for p in held}, {id(p): n for n, p in trainable}
    missing = [n for i, n in audited.items() if i not in held_ids]
    extra = [tuple(p.shape) for p in held if id(p) not in audited]
    if missing or extra or len(held) != len(held_ids):
        raise ValueError(f"optimizer != audited trainable list: missing {missing}, "
                         f"{len(extra)} extra (shapes {extra[:5]}), {len(held) - len(held_ids)} duplicates")


# ------------------------------------------------------------------- frozen-weights proof
def tensor_digest(t: torch.Tensor) -> str:
    """dtype, shape and sha256 of the raw bytes: equal digests mean bit-identical tensors."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()  # hashed in place, no copy
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}:{hashlib.sha256(raw).hexdigest()}"


def _require_unmerged(model):
    merged = [n for n, m in mergeable_layers(model) if m.merged]
    if merged:  # merging writes W + dW (or l * W) into the frozen weight; the proof is about W itself
        raise RuntimeError(f"LoRA / (IA)^3 layers are merged ({merged[0]}, ...): call adapters.unmerge(model) first")


def fingerprint(model: nn.Module) -> dict:
    """{name: digest} for every frozen parameter and every buffer. Take it after apply_method and
    before training; the model must be unmerged (LoRA merge changes the base weights)."""
    _require_unmerged(model)
    fp = {n: tensor_digest(p) for n, p in model.named_parameters() if not p.requires_grad}
    fp.update({n: tensor_digest(b) for n, b in model.named_buffers()})
    return fp


def verify_frozen(model: nn.Module, fp: dict) -> dict:
    """{"verdict": "passed", "checked": n} or {"verdict": "failed", "checked": n, "moved": [names]}.
    Must run unmerged (LoRA merge/unmerge restores W bit for bit, so after unmerge it passes)."""
    _require_unmerged(model)
    now = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    moved = [n for n, d in fp.items() if n not in now or tensor_digest(now[n]) != d]
    if moved:
        return {"verdict": "failed", "checked": len(fp), "moved": moved}
    return {"verdict": "passed", "checked": len(fp)}
