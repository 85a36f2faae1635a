"""A from-scratch BERT (Devlin et al., 2019) whose module names are Hugging Face's state-dict keys.

Shape legend, used in every comment below:
  B batch, T tokens, H hidden size, N attention heads, D head size (H = N * D),
  I intermediate (FFN) size, L labels, V prompt (virtual) tokens, P prefix positions.

Each layer has two adapter slots, `attention.output.adapter` and `output.adapter`: identity
modules that sit after the attention output projection and after the FFN output projection,
before the residual add and LayerNorm (Houlsby et al., 2019, Fig. 2). adapters.py fills them.

Two more slots are None until prompts.py fills them; while None they change nothing:
  bert.embeddings.prompt -- a SoftPrompt: V virtual token vectors inserted after [CLS] at the word-
      embedding level (prompt tuning, Lester et al., 2021). The sequence grows to V + T inside the
      encoder; BertModel drops the virtual positions again, so its output stays (B, T, H).
  bert.encoder.prefix -- a PrefixEncoder: P key and value vectors per layer and head, seen by every
      query before the T real keys (prefix tuning, Li & Liang, 2021). The output stays (B, T, H).

Every dropout, the attention probabilities' included, is a `Dropout`: nn.Dropout with one more slot,
`masks`, None until dropout.set_masks fills it (--dropout-masks fast: masks drawn several per random
integer on a CPU); while None it is nn.Dropout and SDPA's dropout_p, call for call.

The task head pools the last layer one of two ways (`BertConfig.pooling`):
  cls  -- BERT's pooler: tanh(dense(h[CLS])) (Devlin et al., 2019, sec. 3);
  mean -- the attention-masked mean of all token states, no pooler (Reimers & Gurevych, 2019),
          which is how sentence encoders such as all-MiniLM-L6-v2 were trained.
"""
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_json_object(path, what: str = "a JSON object") -> dict:
    """A JSON file that must hold an object (a config); errors name the file, and what it should hold.
    Here, not in checkpoint.py, because model.py imports only torch; checkpoint.py and hf.py use it too."""
    try:
        raw = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected {what}, got a {type(raw).__name__}")
    return raw


@dataclass
class BertConfig:
    vocab_size: int = 30522  # WordPiece vocabulary size
    hidden_size: int = 768  # H
    num_hidden_layers: int = 12  # encoder layers
    num_attention_heads: int = 12  # N; D = H // N
    intermediate_size: int = 3072  # I, the FFN's inner width
    hidden_act: str = "gelu"  # exact erf GELU: google-research/bert as first released (its later code: tanh)
    hidden_dropout_prob: float = 0.1  # dropout on embeddings, sublayer outputs and the head
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # longest sequence the position table covers
    type_vocab_size: int = 2  # segment A / segment B
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02  # std of the normal init for new weights
    num_labels: int = 2  # L; 1 means regression (STS-B)
    pooling: str = "cls"  # "cls" (BERT pooler) or "mean" (masked mean, no pooler)

    @classmethod
    def from_json(cls, path, **overrides):
        """Build from an HF config.json; unknown HF fields are ignored, absent ones take the defaults above
        (as transformers does), `overrides` win. Invalid JSON, a JSON value that is not an object, a value
        of the wrong type or out of range: ValueError naming the file and the field."""
        raw = read_json_object(path, "a JSON object of config fields")
        known = {f.name for f in fields(cls)}
        try:
            config = cls(**{k: v for k, v in {**raw, **overrides}.items() if k in known})
            config.validate()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return config

    def validate(self):
        """Types, then ranges, each error naming the field (num_attention_heads is checked before it divides)."""
        for f in fields(self):
            value = getattr(self, f.name)
            accepted = (int, float) if f.type is float else f.type  # an int is a float value too (eps 1)
            if isinstance(value, bool) or not isinstance(value, accepted):
                raise ValueError(f"{f.name} = {value!r}: expected {'a number' if f.type is float else f.type.__name__}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= 1")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be in [0, 1)")
        if not (self.layer_norm_eps > 0 and self.initializer_range >= 0):
            raise ValueError(f"layer_norm_eps {self.layer_norm_eps} must be > 0 and initializer_range "
                             f"{self.initializer_range} >= 0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id = {self.pad_token_id}: not an id of the vocabulary "
                             f"(vocab_size {self.vocab_size})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r}: allowed {sorted(ACTIVATIONS)}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling {self.pooling!r}: allowed 'cls', 'mean'")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")


# Hugging Face's names. "gelu" is the exact erf form, the one google-research/bert's modeling.py used as
# first released (Oct. 2018) and HF's BERT keeps; that repository's later modeling.py switched to the tanh
# approximation, which HF calls "gelu_new" (tested: tests/test_model.py, test_gelu_is_exact_erf_form).
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class Dropout(nn.Dropout):
    """nn.Dropout with a slot for the masks' source. While `masks` is None (the default) it is nn.Dropout,
    call for call: torch draws the mask from its global generator, the stream of every committed run.
    dropout.set_masks puts a dropout.MaskStream there (--dropout-masks fast): on a CPU the mask then
    comes from it, several keep/drop decisions per random integer; on any other device, torch's."""

    def __init__(self, p: float):
        super().__init__(p)
        self.masks = None  # slot: a dropout.MaskStream, shared by all of a model's dropouts, or None

    def draws_own_mask(self, x) -> bool:
        """Whether this call takes its mask from `masks`: only while training, with p > 0, on a CPU
        (CUDA's dropout kernels draw their masks fast on the device)."""
        return self.masks is not None and self.training and self.p > 0 and x.device.type == "cpu"

    def forward(self, x):
        if not self.draws_own_mask(x):
            return super().forward(x)
        noise = self.masks.keep(x.shape, self.p, x.dtype)  # x's shape and dtype: 1 with probability 1 - p, else 0
        return x * noise.div_(1.0 - self.p)  # inverted dropout, the very arithmetic of torch's CPU dropout


def attention_with_own_mask(q, k, v, mask, dropout: Dropout):
    """softmax(q k^T / sqrt(D)) over the unmasked keys, dropped out with `dropout`'s mask, times v: what
    F.scaled_dot_product_attention computes on a CPU when it drops out (its unfused math path, in fp32
    for bf16 inputs, the result cast back), with our mask in place of its bernoulli_ draw."""
    dtype = q.dtype  # SDPA returns the query's dtype
    # the profiler sees this as one operator, as it sees SDPA (study/breakdown.py); autocast is off:
    # fp32 like SDPA's math path, not autocast's bf16
    with torch.profiler.record_function("attention_with_own_mask"), torch.autocast(q.device.type, enabled=False):
        scores = q.float() @ k.float().transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, N, T, [P +] T)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # mask: (B, 1, 1, [P +] T)
        return (dropout(probs) @ v.float()).to(dtype)  # (B, N, T, [P +] T) @ (B, N, [P +] T, D) -> (B, N, T, D)


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = Dropout(c.hidden_dropout_prob)
        self.prompt = None  # slot: prompts.add_prompt puts a SoftPrompt here

    def forward(self, input_ids, token_type_ids):
        words = self.word_embeddings(input_ids)  # (B, T, H)
        if self.prompt is not None:  # (B, T, H) -> (B, V + T, H): virtual tokens after [CLS], segment A
            words, token_type_ids = self.prompt.insert(words), self.prompt.insert(token_type_ids, fill=0)
        positions = torch.arange(words.shape[1], device=words.device)  # (T,), or (V + T,) with a prompt
        x = (words  # (B, T, H)
             + self.position_embeddings(positions)  # (T, H), broadcast over B
             + self.token_type_embeddings(token_type_ids))  # (B, T, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout = Dropout(c.attention_probs_dropout_prob)  # on the attention probabilities

    def forward(self, x, mask, prefix=None):
        B, T, H = x.shape
        N = self.num_heads
        # (B, T, H) -> (B, T, N, D) -> (B, N, T, D)
        q, k, v = (proj(x).view(B, T, N, H // N).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        if prefix is not None:  # this layer's (key, value) prefixes, each (N, P, D): the same for every example
            pk, pv = (p.to(k.dtype).expand(B, -1, -1, -1) for p in prefix)  # (B, N, P, D)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)  # (B, N, P + T, D)
        # mask: (B, 1, 1, [P +] T) bool, True where the key is a real token or a prefix; softmax(qk^T/sqrt(D)) v
        if self.dropout.draws_own_mask(q):  # --dropout-masks fast, training on a CPU: the same formula, our mask
            y = attention_with_own_mask(q, k, v, mask, self.dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout.p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, N, T, D) -> (B, T, H)


class BertSelfOutput(nn.Module):
    """Attention output projection, adapter slot, then residual add and LayerNorm."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.adapter = nn.Identity()  # slot: filled by adapters.add_adapters
        self.dropout = Dropout(c.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h, residual):
        return self.LayerNorm(self.adapter(self.dropout(self.dense(h))) + residual)


class BertAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertSelfOutput(c)

    def forward(self, x, mask, prefix=None):
        return self.output(self.self(x, mask, prefix), x)


class BertIntermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))  # (B, T, H) -> (B, T, I)


class BertOutput(nn.Module):
    """FFN output projection, adapter slot, then residual add and LayerNorm."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.intermediate_size, c.hidden_size)
        self.adapter = nn.Identity()  # slot: filled by adapters.add_adapters
        self.dropout = Dropout(c.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h, residual):
        return self.LayerNorm(self.adapter(self.dropout(self.dense(h))) + residual)  # (B, T, H)


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertOutput(c)

    def forward(self, x, mask, prefix=None):
        a = self.attention(x, mask, prefix)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))
        self.prefix = None  # slot: prompts.add_prefix puts a PrefixEncoder here

    def forward(self, x, mask):
        if self.prefix is None:
            for layer in self.layer:
                x = layer(x, mask)
            return x
        kv = self.prefix()  # (layers, 2, N, P, D): every layer's key and value prefixes
        visible = torch.ones(*mask.shape[:-1], kv.shape[3], dtype=torch.bool, device=mask.device)  # (B, 1, 1, P)
        mask = torch.cat([visible, mask], dim=-1)  # (B, 1, 1, P + T): every query sees every prefix
        for layer, (k, v) in zip(self.layer, kv):
            x = layer(x, mask, (k, v))
        return x


class BertPooler(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))  # (B, T, H) -> [CLS] state (B, H)


class BertModel(nn.Module):
    """Embeddings + encoder (+ pooler when pooling is "cls"); forward returns (B, T, H)."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c)
        # With mean pooling the pooler takes no part in the computation, so it does not exist:
        # no method can train it and no count includes it.
        self.pooler = BertPooler(c) if c.pooling == "cls" else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        prompt = self.embeddings.prompt
        if prompt is not None:  # the virtual tokens are never padding: (B, T) -> (B, V + T)
            attention_mask = prompt.insert(attention_mask, fill=1)
        mask = attention_mask.bool()[:, None, None, :]  # (B, T) -> (B, 1, 1, T), broadcast over N, T
        h = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
        return h if prompt is None else prompt.remove(h)  # (B, V + T, H) -> (B, T, H): real tokens only


class BertForSequenceClassification(nn.Module):
    """BERT + pooling + dropout + linear head. L = 1 is regression, else classification."""

    def __init__(self, c: BertConfig):
        super().__init__()
        c.validate()
        self.config = c
        self.bert = BertModel(c)
        self.dropout = Dropout(c.hidden_dropout_prob)
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        """BERT's init (normal(0, initializer_range), zero bias, unit LayerNorm): what new tensors get."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def pool(self, h, attention_mask):
        if self.config.pooling == "cls":
            return self.bert.pooler(h)  # (B, H)
        m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1): padding contributes nothing
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return self.classifier(self.dropout(self.pool(h, attention_mask)))  # (B, L)


def encoder_flops_per_token(config: BertConfig, seq_len: int) -> int:
    """Forward FLOPs per token of the encoder: 2 per multiply-add in the q/k/v/output and FFN
    matrices (4H^2 + 2HI), plus attention's QK^T and AV (2 * T * H)."""
    H, I, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return n * 2 * (4 * H * H + 2 * H * I + 2 * seq_len * H)

