"""Token sampling with temperature, top-k and top-p, returning the logprob the sampler actually used."""
import torch


def filtered_logprobs(logits: torch.Tensor, temperature: float, top_k: int = -1, top_p: float = 1.0):
    """[N, V] logits -> [N, V] log-probabilities of the distribution to sample from.

    Greedy (temperature 0) reports logprobs at temperature 1. Filtered-out tokens get -inf, and the
    kept ones are renormalised, so the returned logprob is that of the distribution actually sampled.
    """
    logits = logits.float() / (temperature if temperature > 0 else 1.0)
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p      # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
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
