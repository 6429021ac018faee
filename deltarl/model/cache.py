"""The decode cache of a Kimi Linear model.

A KDA layer keeps a fixed-size state per sequence: the last W-1 inputs of its three short convolutions
and the float32 delta-rule state S [H, K, V]. An MLA layer keeps, per past token, only the compressed
latent c (kv_lora_rank values) and the shared k_pe (qk_rope_head_dim values); keys and values are
re-expanded from them. `valid` marks real tokens, so left-padded batches of prompts decode together.
"""
from dataclasses import dataclass

import torch

from .moba import add_to_block_sums


@dataclass
class KDAState:
    conv: torch.Tensor          # [B, 3, H*D, W-1]: q, k, v conv inputs, in the model dtype
    recurrent: torch.Tensor     # [B, H, D, D] float32


@dataclass
class MLAState:
    """An MLA layer's history in buffers with room to grow: positions [0, length) are live, so a decode
    step writes its token in place instead of copying the history (which at long context is most of
    the cache: a copy per step was the embedded engine's cost and held a layer twice)."""
    latent: torch.Tensor        # [B, capacity, kv_lora_rank]
    k_pe: torch.Tensor          # [B, capacity, qk_rope_head_dim]
    length: int
    block_sums: torch.Tensor | None = None   # MoBA layers: [B, blocks, kv_lora_rank + rope], per sequence

    def live(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The history, [B, length, ...] views of the buffers."""
        return self.latent[:, :self.length], self.k_pe[:, :self.length]


class KimiLinearCache:
    """Per-layer decode state for a batch of sequences that advance together."""

    is_compileable = False

    def __init__(self, config):
        self.config = config
        self.layers: list[KDAState | MLAState | None] = [None] * config.num_hidden_layers
        self.valid: torch.Tensor | None = None      # [B, L] bool, True for real (non-pad) tokens

    # --- bookkeeping -----------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return 0 if self.valid is None else self.valid.shape[0]

    def append_valid(self, valid: torch.Tensor):
        """Record the validity mask [B, T] of the tokens being fed in this forward pass."""
        self.valid = valid if self.valid is None else torch.cat([self.valid, valid], dim=1)

    def update_mla(self, layer_idx, latent, k_pe):
        """Append this step's latents [B, n, ...] and return the full history [B, L, ...] for attention."""
        old, n = self.layers[layer_idx], latent.shape[1]
        if old is None:
            state = MLAState(latent, k_pe, n)
        else:
            state = _with_room(old, old.length + n)
            state.latent[:, old.length:old.length + n] = latent
            state.k_pe[:, old.length:old.length + n] = k_pe
            state.length = old.length + n
        moba = self.config.moba_block(layer_idx)
        if moba is not None:        # the MoBA gate's block means, kept as sums as tokens arrive
            state.block_sums = add_to_block_sums(state.block_sums, latent, k_pe, self.valid, moba[0])
        self.layers[layer_idx] = state
        return state.live()

    def select(self, index: torch.Tensor) -> "KimiLinearCache":
        """Keep (or repeat / reorder) the sequences at `index`, in place; returns self. Leading positions
        that no kept sequence uses any more are dropped."""
        valid = self.valid[index]
        first = int(valid.any(0).float().argmax()) if valid.numel() else 0
        for i, state in enumerate(self.layers):
            if isinstance(state, KDAState):
                self.layers[i] = KDAState(state.conv[index], state.recurrent[index])
            elif isinstance(state, MLAState):
                self.layers[i] = _regroup([(state, index)], state.length - first, state.latent.shape[1] - first)
        self.valid = valid[:, first:]
        return self

    def merge(self, other: "KimiLinearCache") -> "KimiLinearCache":
        """Append the sequences of `other` to this batch, in place; shorter MLA histories are left-padded
        with masked positions (attention in these layers ignores position, so padding changes nothing)."""
        if self.valid is None:
            self.layers, self.valid = list(other.layers), other.valid
            return self
        length = max(self.get_seq_length(), other.get_seq_length())
        for i, (a, b) in enumerate(zip(self.layers, other.layers)):
            if isinstance(a, KDAState):
                self.layers[i] = KDAState(torch.cat([a.conv, b.conv]), torch.cat([a.recurrent, b.recurrent]))
            elif isinstance(a, MLAState):
                self.layers[i] = _regroup([(a, None), (b, None)], length, _roomy(length))
        self.valid = torch.cat([_left_pad(self.valid, length), _left_pad(other.valid, length)])
        return self

    def reorder_cache(self, beam_idx):
        self.select(beam_idx)

    # --- memory --------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of every state of the batch (the MLA histories' live part; their buffers' spare room,
        at most an eighth more, is not counted)."""
        tensors = []
        for state in self.layers:
            if isinstance(state, KDAState):
                tensors += [state.conv, state.recurrent]
            elif isinstance(state, MLAState):
                tensors += list(state.live())
                tensors += [] if state.block_sums is None else [state.block_sums]
        return sum(t.numel() * t.element_size() for t in tensors)

    def nbytes_per_sequence(self) -> int:
        """Bytes of cache one sequence holds at the current length (the batch's average)."""
        return self.nbytes() // max(self.batch_size, 1)


def _roomy(length: int) -> int:
    """Capacity for a history of `length` tokens that has to grow: an eighth more (at least 16), so
    regrowing copies the history once per eighth of its length, not once per token."""
    return length + max(length // 8, 16)


def _with_room(state: MLAState, needed: int) -> MLAState:
    """`state` if its buffers hold `needed` tokens, else a copy into larger ones."""
    if needed <= state.latent.shape[1]:
        return state
    return _regroup([(state, None)], state.length, _roomy(needed))


def _regroup(parts, length: int, capacity: int) -> MLAState:
    """One MLAState of `capacity` from the rows `index` (None: all, in order) of each (state, index)
    part, stacked in order; each row keeps its last `length` tokens and shorter histories are
    left-padded with zeros (masked positions: MLA attention here ignores position)."""
    first = parts[0][0]
    sizes = [state.latent.shape[0] if index is None else len(index) for state, index in parts]
    latent = first.latent.new_zeros(sum(sizes), capacity, first.latent.shape[2])
    k_pe = first.k_pe.new_zeros(sum(sizes), capacity, first.k_pe.shape[2])
    r = 0
    for (state, index), n in zip(parts, sizes):
        keep = min(state.length, length)
        for src, dst in ((state.latent, latent), (state.k_pe, k_pe)):
            src = src[:, state.length - keep:state.length]
            dst[r:r + n, length - keep:length] = src if index is None else src[index]
        r += n
    return MLAState(latent, k_pe, length, _stacked_block_sums(parts))


def _stacked_block_sums(parts) -> torch.Tensor | None:
    """The MoBA block sums of the rows `index` of each part, stacked, fewer blocks padded with zeros
    (a sequence's blocks are counted from its first token, so dropping or adding left padding does
    not move them)."""
    if parts[0][0].block_sums is None:
        return None
    sums = [s.block_sums if index is None else s.block_sums[index] for s, index in parts]
    blocks = max(s.shape[1] for s in sums)
    return torch.cat([torch.cat([s, s.new_zeros(s.shape[0], blocks - s.shape[1], s.shape[2])], 1) for s in sums])


def _left_pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, L, ...] -> [B, length, ...] with zeros (False for masks) in front."""
    pad = length - x.shape[1]
    return x if pad == 0 else torch.cat([x.new_zeros(x.shape[0], pad, *x.shape[2:]), x], dim=1)


def cache_bytes_per_sequence(config, context_len: int, dtype=torch.bfloat16) -> dict:
    """Analytic cache size of one sequence of `context_len` tokens: KDA states, MLA latents, total.

    Compare with `all_mla=True`-style configs to see the hybrid's saving.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    lac = config.linear_attn_config
    H, D, W = lac["num_heads"], lac["head_dim"], lac["short_conv_kernel_size"]
    kda_layer = 3 * H * D * (W - 1) * elem + H * D * D * 4
    mla_layer = context_len * (config.kv_lora_rank + config.qk_rope_head_dim) * elem
    n_kda = sum(config.is_kda_layer(i) for i in range(config.num_hidden_layers))
    n_mla = config.num_hidden_layers - n_kda
    return {"kda": n_kda * kda_layer, "mla": n_mla * mla_layer, "total": n_kda * kda_layer + n_mla * mla_layer}
