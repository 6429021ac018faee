"""Per-token logprobs (and entropies) of packed responses, a chunk of tokens at a time.

The vocabulary of Kimi Linear is ~160k, so the logits of a micro-batch's response tokens, [N, V], are
the learner's largest tensors (4096 tokens: 2.6 GB in float32). Here they never exist whole: the model
returns its final hidden states (`skip_logits`), only the rows that predict a response token are taken,
and `CHUNK_TOKENS` of them at a time go through `lm_head`, the temperature, the rollout's top-k / top-p
filter, logsumexp, the target's logit and the entropy. With a gradient, each chunk is checkpointed
(recomputed in backward), so autograd keeps one [CHUNK_TOKENS, H] input per chunk, not its [.., V]
temporaries. Under ZeRO-3 `lm_head` is called as a module, so DeepSpeed's hooks gather its weight.
"""
import torch
from torch.utils.checkpoint import checkpoint

from deltarl.rollout.sampling import keep_mask

from .algorithms import entropy_of

CHUNK_TOKENS = 1024    # response tokens projected at once: [CHUNK_TOKENS, V] float32 is the largest temporary


def response_logprobs(model, prompt_ids, response_ids, temperature, top_k=-1, top_p=1.0, with_entropy=False):
    """Pack (prompt + response) sequences into one row; return per-response-token logprobs [B, T]
    (and entropies [B, T], else None) of the rollout engine's sampling distribution: logits /
    temperature, then the top-k / top-p filter with the engines' rules (`rollout.sampling.keep_mask`),
    renormalised. So the PPO ratio and the TIS weight compare the same distribution the engine reports
    (`processed_logprobs`). top_k=-1, top_p=1 give the plain log_softmax(logits / temperature) (the
    reference policy's KL). Padding (past each response) is 0. `model` is a KimiLinearForCausalLM or a
    DeepSpeed engine around one."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (the logits are divided by it), got {temperature}")
    device = input_device(model)
    ids, cu, valid, token_pos = pack(prompt_ids, response_ids, device)
    out = model(ids, cu_seqlens=cu.to(dtype=torch.int32), skip_logits=True)
    hidden = out.hidden_states[-1][0]                                                      # [total, H]
    # response token j of sequence b sits at token_pos[b, j] and is predicted one position earlier
    where = token_pos[valid]                                                               # [N]
    stats = token_stats(_unwrap(model).lm_head, hidden[where - 1], ids[0][where], temperature, top_k, top_p,
                        with_entropy, CHUNK_TOKENS)
    logp = _scatter(stats[0], valid)
    entropy = _scatter(stats[1], valid) if with_entropy else None
    return logp, entropy


def pack(prompt_ids, response_ids, device):
    """The sequences as one row: ids [1, total], cu_seqlens [B + 1] (int64), and for the responses
    valid [B, T] (bool) and token_pos [B, T] (each response token's index in the row; 0 past the end)."""
    ids = torch.tensor([t for p, r in zip(prompt_ids, response_ids) for t in (*p, *r)], device=device,
                       dtype=torch.long)[None]
    p_len = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    r_len = torch.tensor([len(r) for r in response_ids], dtype=torch.long)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), (p_len + r_len).cumsum(0)])
    width = max(1, int(r_len.max()) if r_len.numel() else 0)
    j = torch.arange(width)
    valid = j[None, :] < r_len[:, None]                                                    # [B, T]
    token_pos = torch.where(valid, (cu[:-1] + p_len)[:, None] + j[None, :], 0)
    return ids, cu.to(device), valid.to(device), token_pos.to(device)


def token_stats(head, hidden, targets, temperature, top_k=-1, top_p=1.0, with_entropy=False,
                chunk_tokens=CHUNK_TOKENS):
    """hidden [N, H] (the rows that predict `targets` [N]) -> (logp [N], entropy [N] or None), float32
    (float64 for a float64 model),
    `chunk_tokens` rows at a time through `head` (a module: [n, H] -> [n, V] logits)."""
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
    track = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, entropies = [], []
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens)):
        args = (head, h, t, temperature, top_k, top_p, with_entropy)
        if track:   # autograd keeps h (a view of hidden) and t; the chunk's [n, V] tensors are recomputed
            part = checkpoint(_chunk_stats, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            part = _chunk_stats(*args)
        logps.append(part[0])
        entropies.append(part[1])
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if with_entropy else None
    return torch.cat(logps), torch.cat(entropies) if with_entropy else None


def _chunk_stats(head, hidden, targets, temperature, top_k, top_p, with_entropy):
    """[n, H], [n] -> (logp [n], entropy [n] or an empty tensor): one chunk of `token_stats`."""
    z = _at_least_float32(head(hidden)) / temperature                                      # [n, V]
    if top_k > 0 or top_p < 1.0:
        z = z.masked_fill(~keep_mask(z, top_k, top_p), float("-inf"))
    logp = z.log_softmax(-1).gather(-1, targets[:, None])[:, 0]                            # -inf if filtered out
    if not with_entropy:
        return logp, z.new_zeros(0)
    entropy = entropy_of(z)
    return logp, entropy


def _at_least_float32(logits):
    """float32 logits (bf16 models' too); a float64 model keeps float64, so tests can check exactly."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _scatter(values, valid):
    """[N] values of the valid places -> [B, T] float32 with 0 elsewhere."""
    out = torch.zeros(valid.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(valid, values)


def _unwrap(model):
    """The transformers model inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def input_device(model) -> torch.device:
    """Where the model computes. A ZeRO-3 partition may live on the CPU (parameter offload) while the
    forward runs on the accelerator, so a partitioned parameter's device is not the answer there."""
    param = next(model.parameters())
    if hasattr(param, "ds_id"):
        from deepspeed.accelerator import get_accelerator
        return torch.device(get_accelerator().current_device_name())
    return param.device
