"""Token sampling with temperature, top-k and top-p, returning the logprob the sampler actually used.

The filter rules are vLLM's (`apply_top_k_top_p` of its v1 sampler, the PyTorch reference path),
so that the embedded engine, vLLM's `processed_logprobs` and the learner (`rl.learner.
response_logprobs`, which calls `keep_mask`) all report the logprob of one distribution:

  1. logits / temperature, in float32;
  2. top-k: keep every token whose logit is >= the k-th largest (a tie at the k-th value keeps all
     the tied tokens);
  3. top-p, on the top-k survivors renormalised: sort ascending, and drop a token when the
     probability of it and of every token sorted before it is <= 1 - top_p (equivalently: when the
     tokens more likely than it already hold >= top_p); the most likely token always stays;
  4. log_softmax over the survivors (dropped tokens: -inf).
"""
import torch

FILTER_CHUNK_ROWS = 2048   # rows filtered at once: the sort's [rows, V] values and int64 indices stay small


def keep_mask(logits: torch.Tensor, top_k: int = -1, top_p: float = 1.0) -> torch.Tensor:
    """[..., V] tempered logits -> [..., V] bool: the tokens that survive top-k then top-p.

    No gradient flows through the choice (it is piecewise constant); computed `FILTER_CHUNK_ROWS`
    rows at a time so a learner batch of [B*T, V] never holds a second full-size sorted copy.
    """
    flat = logits.detach().reshape(-1, logits.shape[-1])                       # [N, V]
    with torch.no_grad():
        parts = [_keep_rows(rows.float(), top_k, top_p) for rows in flat.split(FILTER_CHUNK_ROWS)]
    keep = torch.cat(parts) if parts else torch.ones_like(flat, dtype=torch.bool)
    return keep.reshape(logits.shape)


def _keep_rows(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """[N, V] float32 -> [N, V] bool, the rules of the module docstring."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]                         # [N, 1]
        keep = logits >= kth
    if top_p < 1.0:
        ordered, order = logits.masked_fill(~keep, float("-inf")).sort(dim=-1, stable=True)   # ascending
        up_to = ordered.softmax(-1).cumsum(-1)                                   # mass of this and less likely
        drop_sorted = up_to <= 1.0 - top_p
        drop_sorted[:, -1] = False                                               # the most likely stays
        keep = keep & ~torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return keep


def filtered_logprobs(logits: torch.Tensor, temperature: float, top_k: int = -1, top_p: float = 1.0):
    """[N, V] logits -> [N, V] log-probabilities of the distribution to sample from.

    Greedy (temperature 0) reports logprobs at temperature 1. Filtered-out tokens get -inf, and the
    kept ones are renormalised, so the returned logprob is that of the distribution actually sampled.
    """
    logits = logits.float() / (temperature if temperature > 0 else 1.0)
    if top_k > 0 or top_p < 1.0:
        logits = logits.masked_fill(~keep_mask(logits, top_k, top_p), float("-inf"))
    return logits.log_softmax(-1)


def sample_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                  generators: list[torch.Generator]):
    """Sample one token per row (row i from generators[i]); returns (tokens [N], logprobs [N])."""
    logp = filtered_logprobs(logits, temperature, top_k, top_p)
    if temperature == 0:
        tokens = logp.argmax(-1)
    else:
        probs = logp.exp().cpu()
        tokens = torch.stack([torch.multinomial(probs[i], 1, generator=gen)[0] for i, gen in enumerate(generators)])
        tokens = tokens.to(logits.device)
    return tokens, logp.gather(1, tokens[:, None])[:, 0]
