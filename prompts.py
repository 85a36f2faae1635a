"""Soft prompts and prefixes: trainable virtual tokens in front of a frozen BERT.

Prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
sec. 2): V trainable vectors join the input at the word-embedding level, X_e -> [P_e; X_e]. BERT
has absolute positions, a [CLS] token that the pooler reads at index 0, and an embedding LayerNorm,
so where the vectors go needs three decisions (BertEmbeddings / BertModel apply them):
  - after [CLS], not before it: [CLS] keeps index 0, position 0 and segment A, where pretraining
    put it and where the pooler reads it. (HF PEFT prepends before [CLS], so its pooler reads a
    virtual token.)
  - like typed text: each virtual vector takes the place of a word embedding, then gets position,
    segment-A and LayerNorm like any token. Virtual tokens have positions 1..V and the real tokens
    after [CLS] move to V+1..V+T-1. A prompt equal to the embeddings of V vocabulary words is then
    exactly the model reading those words after [CLS] (a hard prompt), which is what the init below
    starts from (tested). The price: T + V must fit max_position_embeddings.
  - the encoder's outputs at the virtual positions are dropped before pooling: the head sees (B, T, H)
    and mean pooling averages the real tokens only, as the sentence encoder was trained.
  Init (sec. 2.1, "sampled vocab"; ablated in sec. 3.2): each vector is a copy of a distinct word
  embedding drawn from the 5,000 most frequent words. bert-base-uncased's WordPiece vocabulary (also
  MiniLM's) lists whole words by frequency from id 1996 ("the"), so that is ids 1996..6995.

Prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
sec. 4.2): every layer's attention gets P extra key and value vectors per head, in front of the real
ones; every query attends to them, no input token is added and no position is used. Optimising the
prefixes directly is unstable (sec. 4.3), so during training they are the output of a reparameterisation
MLP: an embedding P' (P x H) -> Linear(H, prefix_hidden) -> tanh -> Linear(prefix_hidden, layers*2*H).
One MLP serves every layer, as in the paper (its P_theta spans all layers' activations) and the
reference code (XiangLi1999/PrefixTuning: `wte`, `control_trans`, mid_dim 512); that is why the module
sits in one encoder-level slot and not in each layer. After training the MLP is not needed: merge()
computes the prefixes once, keeps them as one (layers, 2, N, P, D) tensor and drops the MLP (sec. 4.3:
after training the reparameterisation parameters can be dropped; only the prefix is kept). The MLP
keeps PyTorch's default init, as PEFT's PrefixEncoder does.
"""
import torch
import torch.nn as nn

# The names of what add_prompt and add_prefix insert, as patterns over parameter names: the one place
# they are spelled (adapters.TRAINABLE and audit.GROUPS read them from here). A prefix is, while
# training, the MLP's embedding and two Linears; after merge_prefix, the prefixes `kv`.
PROMPT_PARAMS = r"^bert\.embeddings\.prompt\.weight$"  # the V virtual-token vectors
PREFIX_PARAMS = r"^bert\.encoder\.prefix\.(embedding\.weight|(hidden|out)\.(weight|bias)|kv)$"
PROMPT_INIT_IDS = (1996, 6996)  # bert-base-uncased vocabulary: the 5,000 most frequent whole words


class SoftPrompt(nn.Module):
    """V trainable virtual-token vectors, `weight` (V, H), inserted after the first token ([CLS])."""

    def __init__(self, init: torch.Tensor, max_positions: int):
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone())  # (V, H)
        self.max_positions = max_positions

    def insert(self, x: torch.Tensor, fill=None) -> torch.Tensor:
        """(B, T, ...) -> (B, V + T, ...): after x[:, 0] come the prompt vectors (x is (B, T, H)) or,
        given `fill`, V copies of it (token types, attention mask)."""
        B, T, V = x.shape[0], x.shape[1], self.weight.shape[0]
        if V + T > self.max_positions:
            raise ValueError(f"{T} tokens + {V} prompt tokens > max_position_embeddings {self.max_positions}: "
                             "shorten --max-length or --prompt-length")
        middle = self.weight.to(x.dtype).expand(B, V, -1) if fill is None else x.new_full((B, V), fill)
        return torch.cat([x[:, :1], middle, x[:, 1:]], dim=1)

    def remove(self, h: torch.Tensor) -> torch.Tensor:
        """(B, V + T, H) -> (B, T, H): the encoder's states at the real tokens only."""
        return torch.cat([h[:, :1], h[:, 1 + self.weight.shape[0]:]], dim=1)


def add_prompt(model: nn.Module, cfg) -> str:
    """Fill bert.embeddings.prompt with cfg.prompt_length vectors copied from randomly drawn, distinct
    word embeddings (Lester et al. sec. 2.1, "sampled vocab"); torch's global RNG picks them. Returns
    the slot's name. Call after the pretrained weights are loaded; a filled slot is an error."""
    emb = model.bert.embeddings
    if emb.prompt is not None:
        raise ValueError("bert.embeddings.prompt is already filled; add_prompt was applied twice")
    words = emb.word_embeddings.weight  # (vocab, H)
    lo, hi = PROMPT_INIT_IDS
    if words.shape[0] < hi:
        raise ValueError(f"prompt tuning copies its init from word embeddings {lo}..{hi - 1} (bert-base-uncased's "
                         f"most frequent whole words); this model's vocabulary has only {words.shape[0]}")
    if cfg.prompt_length > hi - lo:
        raise ValueError(f"prompt_length {cfg.prompt_length} > the {hi - lo} words it is drawn from")
    ids = lo + torch.randperm(hi - lo)[:cfg.prompt_length]  # (V,) distinct
    emb.prompt = SoftPrompt(words[ids.to(words.device)], model.config.max_position_embeddings)
    return "bert.embeddings.prompt"


class PrefixEncoder(nn.Module):
    """Every layer's key/value prefixes: forward() -> (layers, 2, N, P, D), 2 = (key, value).

    Training form (Li & Liang sec. 4.3): embedding (P, H) -> Linear(H, hidden) -> tanh -> Linear(hidden,
    layers*2*H). Merged form: `kv`, the MLP's output computed once; embedding and MLP are gone.
    """

    def __init__(self, layers: int, heads: int, hidden_size: int, length: int, mlp_hidden: int):
        super().__init__()
        self.shape = (length, layers, 2, heads, hidden_size // heads)  # (P, layers, 2, N, D)
        self.embedding = nn.Embedding(length, hidden_size)  # P'_theta: (P, H)
        self.hidden = nn.Linear(hidden_size, mlp_hidden)  # H -> prefix_hidden
        self.out = nn.Linear(mlp_hidden, layers * 2 * hidden_size)  # prefix_hidden -> layers * 2 * H
        self.kv = None  # the merged prefixes, (layers, 2, N, P, D), once merge() ran

    @property
    def merged(self) -> bool:
        return self.kv is not None

    def forward(self) -> torch.Tensor:
        if self.merged:
            return self.kv
        x = self.out(torch.tanh(self.hidden(self.embedding.weight)))  # (P, H) -> (P, hidden) -> (P, layers*2*H)
        return x.view(self.shape).permute(1, 2, 3, 0, 4)  # (P, layers, 2, N, D) -> (layers, 2, N, P, D)

    @torch.no_grad()
    def merge(self):
        """Compute the prefixes once into the parameter `kv` and drop the MLP. Idempotent; one way (the
        MLP is gone, so there is no unmerge). `kv` trains if the MLP did: the model's trainable list
        changes, so take it again (adapters.trainable_params) before saving."""
        if self.merged:
            return
        trains = self.embedding.weight.requires_grad
        kv = self.forward().contiguous()
        del self.embedding, self.hidden, self.out
        self.kv = nn.Parameter(kv, requires_grad=trains)

    def extra_repr(self):
        P, layers, _, N, D = self.shape
        return f"layers={layers}, heads={N}, length={P}, head_size={D}, merged={self.merged}"


def add_prefix(model: nn.Module, cfg) -> str:
    """Fill bert.encoder.prefix with a PrefixEncoder of cfg.prefix_length positions and a
    cfg.prefix_hidden-wide MLP; returns the slot's name. A filled slot is an error."""
    enc, c = model.bert.encoder, model.config
    if enc.prefix is not None:
        raise ValueError("bert.encoder.prefix is already filled; add_prefix was applied twice")
    ref = model.bert.embeddings.word_embeddings.weight  # on the model's device, in its dtype
    enc.prefix = PrefixEncoder(c.num_hidden_layers, c.num_attention_heads, c.hidden_size, cfg.prefix_length,
                               cfg.prefix_hidden).to(device=ref.device, dtype=ref.dtype)
    return "bert.encoder.prefix"


def merge_prefix(model: nn.Module) -> bool:
    """PrefixEncoder.merge() on the model's prefix, if it has one; returns whether it has one."""
    prefix = model.bert.encoder.prefix
    if prefix is not None:
        prefix.merge()
    return prefix is not None
