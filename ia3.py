"""(IA)^3: learned vectors that rescale inner activations (Liu et al., 2022, "Few-Shot Parameter-Efficient
Fine-Tuning is Better and Cheaper than In-Context Learning", sec. 3.3).

Three vectors per layer, elementwise (sec. 3.3):

    softmax(Q (l_k * K)^T / sqrt(D)) (l_v * V)        l_k, l_v: (H,)  rescale the keys and values
    (l_ff * act(W_1 x)) W_2                           l_ff: (I,)      rescales the FFN's activation

All start at ones, so the model is exactly the pretrained one at init (sec. 3.3 initialises every l
with ones for this reason). Each product sits next to a matrix multiply, so it folds into the weights
(sec. 3.3): l_k, l_v scale the rows (and biases) of W_k, W_v; l_ff scales the columns of W_2 (the
FFN's output.dense). `merge()` / `unmerge()` below do that, explicit calls only, as in lora.py.

Implementation: the three Linear layers become IA3Linear, an nn.Linear that keeps the keys
`weight`, `bias` and adds `ia3_l`. For key and value it scales the output, for output.dense the
input, i.e. the activation after the nonlinearity, as the paper and HF PEFT (`feedforward_modules`)
do. Placement is fixed by IA3_TARGETS: the paper's three.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from surgery import from_linear, keep, restore, swap_linears

IA3_TARGETS = {  # name -> (module path inside bert.encoder.layer.N, which side of the Linear is scaled)
    "l_k": ("attention.self.key", "out"),
    "l_v": ("attention.self.value", "out"),
    "l_ff": ("output.dense", "in"),  # the FFN's W_2: its input is act(W_1 x)
}


# The name of what add_ia3 inserts, as a pattern over parameter names: the one place it is spelled
# (adapters.TRAINABLE, audit.GROUPS and saving.export_merged read it from here).
IA3_PARAMS = r"\.ia3_l$"

class IA3Linear(nn.Linear):
    """nn.Linear with its output (side="out") or input (side="in") rescaled elementwise by `ia3_l`."""

    def __init__(self, in_features, out_features, side, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if side not in ("in", "out"):
            raise ValueError(f"side {side!r}: allowed 'in', 'out'")
        self.side = side
        size = out_features if side == "out" else in_features
        self.ia3_l = nn.Parameter(torch.ones(size, device=device, dtype=dtype))  # ones: the identity at init
        self.merged = False  # True while weight (and bias) hold the scaled values
        self._unmerged = None  # (W, b) kept while merged, so unmerge() restores them bit for bit

    def forward(self, x):
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        if self.side == "in":  # (..., in) * (in,): rescale the input features
            return F.linear(x * self.ia3_l.to(x.dtype), self.weight, self.bias)
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        return y * self.ia3_l.to(y.dtype)  # to(): under autocast y is bf16/fp16, keep it so

    @torch.no_grad()
    def merge(self):
        """side "out": W <- diag(l) W, b <- l * b; side "in": W <- W diag(l). Idempotent; only an
        explicit call merges (never .eval())."""
        if self.merged:
            return
        self._unmerged = keep(self)
        if self.side == "out":
            self.weight.mul_(self.ia3_l[:, None])  # (out, in) * (out, 1)
            if self.bias is not None:
                self.bias.mul_(self.ia3_l)
        else:
            self.weight.mul_(self.ia3_l[None, :])  # (out, in) * (1, in)
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """Weight and bias exactly as before merge() (stored copies, not a division). Idempotent."""
        if not self.merged:
            return
        restore(self, self._unmerged)
        self._unmerged = None
        self.merged = False

    def extra_repr(self):
        return f"{super().extra_repr()}, side={self.side}, merged={self.merged}"


def add_ia3(model: nn.Module) -> list:
    """Swap key, value and output.dense of every layer for IA3Linear (same weight and bias); returns
    the module names replaced. Call after the pretrained weights are loaded."""
    def make(side):
        return lambda linear: from_linear(IA3Linear, linear, side)
    return swap_linears(model, {path: make(side) for path, side in IA3_TARGETS.values()}, "(IA)^3")
