"""Weight surgery on a pretrained BERT's nn.Linear layers, shared by LoRA (lora.py) and (IA)^3 (ia3.py).

A method names layers by their path inside one encoder layer ("attention.self.value"); `layer_pattern`
anchors that path, so "output.dense" is the FFN output projection and never `attention.output.dense`.
`swap_linears` replaces each named nn.Linear, in every layer, by a subclass built with `from_linear`
(the same weight and bias, plus the method's tensors). A merged layer keeps a copy of its weight and
bias (`keep`) so that unmerging restores them bit for bit (`restore`), not by subtracting the update.
"""
import re

import torch
import torch.nn as nn


def layer_pattern(path: str) -> re.Pattern:
    """The anchored regex over module names that selects `path` in every encoder layer."""
    return re.compile(r"^bert\.encoder\.layer\.\d+\." + re.escape(path) + "$")


def from_linear(cls, linear: nn.Linear, *args) -> nn.Linear:
    """cls(in, out, *args) on `linear`'s device and dtype, holding a copy of its weight and bias."""
    w = linear.weight
    new = cls(linear.in_features, linear.out_features, *args, bias=linear.bias is not None,
              device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def swap_linears(model: nn.Module, build: dict, method: str) -> list:
    """Replace the nn.Linear at each path of `build` (path -> function of the Linear), in every layer,
    by build[path](linear); returns the module names replaced. Call after the pretrained weights are
    in. A layer that is no longer a plain nn.Linear (the method applied twice, or another method
    already there) is an error that names it."""
    patterns = [(layer_pattern(path), make) for path, make in build.items()]
    replaced = []
    for name, module in list(model.named_modules()):
        make = next((m for p, m in patterns if p.match(name)), None)
        if make is None:
            continue
        if type(module) is not nn.Linear:
            raise TypeError(f"{name} is a {type(module).__name__}, not an nn.Linear: {method} cannot go there")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make(module))
        replaced.append(name)
    assert len(replaced) == len(model.bert.encoder.layer) * len(build), (replaced, list(build))
    return replaced


def keep(linear: nn.Linear) -> tuple:
    """(weight, bias or None), copied: what a merge overwrites."""
    return linear.weight.detach().clone(), None if linear.bias is None else linear.bias.detach().clone()


@torch.no_grad()
def restore(linear: nn.Linear, kept: tuple):
    """Put back the weight and bias that `keep` copied, bit for bit."""
    weight, bias = kept
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
