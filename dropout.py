"""Dropout masks drawn fast on a CPU (--dropout-masks fast), and the switch back to torch's (torch).

Why: torch's CPU dropout draws every mask element with `bernoulli_`, one Mersenne Twister number per
element on one thread, and a MiniLM training step has 13 hidden-state dropouts (and the head's) and 6
attention-probability ones: about a fifth of a CPU step (issue 31). Here each 64-bit random integer (two Mersenne Twister
draws) is cut into four 16-bit uniforms u in 0..65535, and an element is kept when u < t with

    t = round((1 - p) * 65536),    so P(keep) = t / 65536,    |P(keep) - (1 - p)| <= 2**-17 = 7.6e-6,

well inside the 1e-4 the issue asks for (8-bit uniforms would miss it: 2**-9 = 2e-3). The comparison and
the scaling are vectorised elementwise ops; only the integer draw is serial, at a quarter of the
draws. Kept elements are scaled by 1 / (1 - p) with torch's own arithmetic (model.Dropout).

Where the stream lives: one MaskStream per model, put by `set_masks` into the `masks` slot of every
model.Dropout (the hidden-state dropouts, the attention-probability dropouts, the classifier head's and
LoRA's `lora_dropout`). It is not a module-level generator, which would be hidden global state shared by
every model in the process; it belongs to the model, is seeded from the run's seed, and its state can be
saved with a resume checkpoint (`get_state` / `set_state`). The masks are drawn in forward order, so a
run is reproducible given its seed, on any number of threads. On CUDA, model.Dropout uses torch's
kernels whatever the mode (their masks are drawn fast on the device, and SDPA keeps its fused kernel).
"""
import math

import torch
import torch.nn as nn

from model import Dropout

MODES = ("torch", "fast")  # torch: nn.Dropout / SDPA's own masks, bit for bit; fast: MaskStream's
BITS = 16  # bits per keep/drop decision: four decisions from each 64-bit random integer
LEVELS = 1 << BITS  # u takes LEVELS values
MASK64 = (1 << 64) - 1


def keep_threshold(p: float) -> int:
    """t: an element is kept when its uniform u (0..LEVELS-1) is < t, which has probability t / LEVELS,
    within 1 / (2 LEVELS) = 7.6e-6 of 1 - p."""
    return round((1.0 - p) * LEVELS)


def stream_seed(seed: int) -> int:
    """The run's seed through SplitMix64's finaliser (Steele et al., 2014): the generator must not restart
    the very Mersenne Twister sequence that torch.manual_seed(seed) gives the new weights' init and the
    data order, or masks and init would share their random bits."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class MaskStream:
    """The random stream of one model's fast dropout masks: a CPU torch.Generator, seeded once."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(stream_seed(seed))

    def keep(self, shape, p: float, dtype=torch.bool) -> torch.Tensor:
        """A tensor of `shape`, each element 1 (True: kept) with probability keep_threshold(p) / LEVELS,
        else 0, written in `dtype` by the comparison itself (a bool mask and a cast would take two passes)."""
        with torch.profiler.record_function("dropout::masks"):  # named for study/breakdown.py; free unprofiled
            n = math.prod(shape)
            words = torch.empty((n + 3) // 4, dtype=torch.int64)  # (ceil(n / 4),)
            words.random_(-2**63, None, generator=self.generator)  # the full 64-bit range: 2 Twister draws each
            u = words.view(torch.int16)[:n].view(shape)  # 4 uniforms per word, read signed: u + 2**15 in 0..65535
            return torch.lt(u, keep_threshold(p) - 2**15, out=torch.empty(shape, dtype=dtype))


def dropouts(model: nn.Module) -> list:
    """Every dropout of the model, as (name, module); a plain nn.Dropout, which the switch could not reach,
    is an error that names it."""
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.Dropout) and not isinstance(m, Dropout)]
    if plain:
        raise TypeError(f"{plain[0]} is a plain nn.Dropout: use model.Dropout, so that --dropout-masks reaches it")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Dropout)]


def resolve(mode: str, device, recorded=None) -> str:
    """The --dropout-masks in force: "torch" or "fast" as given; "auto": what the run being resumed
    recorded (`recorded`, its results.json; "torch" for a run from before the option, as every
    committed run is), else "fast" on a CPU and "torch" on CUDA, whose own kernels draw masks fast."""
    if mode != "auto":
        return mode
    config = recorded.get("config") if isinstance(recorded, dict) else None
    if isinstance(config, dict):
        return config.get("dropout_masks", "torch")
    return "fast" if device.type == "cpu" else "torch"


def set_masks(model: nn.Module, mode: str, seed: int = 0) -> int:
    """Switch every dropout of `model` to `mode`: "torch" (torch's masks from its global generator, the
    stream every committed run used) or "fast" (one MaskStream seeded from `seed`, shared by all of them).
    Call after the method is applied (LoRA's dropouts exist from then). Returns how many dropouts."""
    if mode not in MODES:
        raise ValueError(f"dropout masks {mode!r}: allowed {list(MODES)}")
    stream = MaskStream(seed) if mode == "fast" else None
    layers = dropouts(model)
    for _, m in layers:
        m.masks = stream
    return len(layers)


def mode_of(model: nn.Module) -> str:
    """The mode every dropout of `model` is in; a model whose dropouts disagree (one added after
    set_masks, say) is an error."""
    streams = {id(m.masks): m.masks for _, m in dropouts(model)}
    if len(streams) > 1:
        raise ValueError("the model's dropouts draw from different streams: call set_masks after apply_method")
    return "fast" if any(s is not None for s in streams.values()) else "torch"


def stream_of(model: nn.Module):
    """The model's MaskStream, or None in torch mode."""
    return next((m.masks for _, m in dropouts(model)), None) if mode_of(model) == "fast" else None


def get_state(model: nn.Module):
    """The fast stream's generator state (a uint8 tensor) for a resume checkpoint; None in torch mode,
    where torch's global generator state, saved on its own, is the whole state."""
    stream = stream_of(model)
    return None if stream is None else stream.generator.get_state()


def set_state(model: nn.Module, state):
    """Restore what get_state returned; the model must be in the mode the state came from."""
    stream = stream_of(model)
    if (state is None) != (stream is None):
        raise ValueError(f"a dropout mask state is {'absent' if state is None else 'present'}, but the "
                         f"model's masks are {mode_of(model)!r}")
    if stream is not None:
        stream.generator.set_state(state)
