"""Logprobs and entropies in token chunks (issue 18): the same values and gradients as the full-tensor
computation they replaced, and no tensor of the vocabulary's width with more than a chunk of rows."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from deltarl.model import KimiLinearForCausalLM, tiny_config
from deltarl.rl import logprobs as chunked
from deltarl.rl.learner import response_logprobs
from deltarl.rollout.sampling import keep_mask

SEED = 20261207
VOCAB = 96          # != the hidden size, so a tensor of the vocabulary's width is recognisable
FILTERS = [(-1, 1.0), (40, 1.0), (-1, 0.8), (50, 0.9)]      # (top_k, top_p): off, top-k, top-p, both


def full_tensor_logprobs(model, prompt_ids, response_ids, temperature, top_k=-1, top_p=1.0, with_entropy=False):
    """The implementation before chunking (deltarl 4a0d170), kept as the oracle: every position's logits,
    then [B, T, V] float32 rows of the response tokens. One change: a float64 model's rows stay float64
    (`.float()` was `.to(float32)` always), as the chunked code does, so float64 checks the algebra."""
    device = next(model.parameters()).device
    ids = torch.tensor([t for p, r in zip(prompt_ids, response_ids) for t in (*p, *r)], device=device)[None]
    p_len = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    r_len = torch.tensor([len(r) for r in response_ids], dtype=torch.long)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), (p_len + r_len).cumsum(0)])
    logits = model(ids, cu_seqlens=cu.to(dtype=torch.int32)).logits[0]                   # [total, V]
    width = max(1, int(r_len.max()))
    j = torch.arange(width)
    valid = j[None, :] < r_len[:, None]
    token_pos = torch.where(valid, (cu[:-1] + p_len)[:, None] + j[None, :], 0)
    rows = logits[token_pos - 1 + (~valid).long()]
    rows = (rows if rows.dtype == torch.float64 else rows.float()) / temperature          # [B, T, V]
    if top_k > 0 or top_p < 1.0:
        rows = rows.masked_fill(~keep_mask(rows, top_k, top_p), float("-inf"))
    targets = torch.where(valid, ids[0][token_pos], 0)
    logp = torch.where(valid, rows.log_softmax(-1).gather(-1, targets[..., None])[..., 0], 0.0)
    entropy = None
    if with_entropy:     # -sum p log p over the tokens the filter kept (p = 0 elsewhere), whole-vocabulary
        p, log_p = rows.softmax(-1), rows.log_softmax(-1)
        entropy = torch.where(valid, -(p * log_p.masked_fill(p == 0, 0.0)).sum(-1), 0.0)
    return logp, entropy


def tiny_model(dtype=torch.float32, seed=SEED):
    torch.manual_seed(seed)
    cfg = tiny_config(vocab_size=VOCAB, hidden_size=32, num_heads=2, kda_head_dim=16, intermediate_size=64)
    return KimiLinearForCausalLM(cfg).to(dtype)


def random_batch(n=6, seed=SEED):
    """Prompts of 1-6 tokens and responses of 0-14 (one empty), random tokens."""
    gen = torch.Generator().manual_seed(seed)
    draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    prompts = [torch.randint(0, VOCAB, (draw(1, 6),), generator=gen).tolist() for _ in range(n)]
    responses = [torch.randint(0, VOCAB, (draw(1, 14),), generator=gen).tolist() for _ in range(n)]
    responses[2] = []
    return prompts, responses


def values_and_grads(fn, model, batch, temperature, top_k, top_p, weights):
    """logp, entropy and d(sum(w1 * logp) + sum(w2 * entropy)) / d(every parameter)."""
    model.zero_grad(set_to_none=True)
    logp, entropy = fn(model, *batch, temperature, top_k, top_p, with_entropy=True)
    finite = torch.isfinite(logp)
    (torch.where(finite, logp * weights[0][:, :logp.shape[1]], 0).sum()
     + (entropy * weights[1][:, :logp.shape[1]]).sum()).backward()
    return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("top_k,top_p", FILTERS)
# float64 checks the algebra (measured ~2e-16). float32 values agree to ~5e-7; float32 gradients to
# ~2e-6 relative (L2, per tensor), except KDA's decay logits A_log, whose small gradient is a long sum
# of cancelling terms: up to 9e-6 there (rounding: the same cases agree to 2e-16 in float64).
@pytest.mark.parametrize("dtype,tol,grad_tol", [(torch.float32, 1e-6, 2e-5), (torch.float64, 1e-12, 1e-12)])
def test_chunked_equals_full_tensor(monkeypatch, top_k, top_p, dtype, tol, grad_tol):
    """Values and gradients with chunks of 5 tokens (several chunks, the last one short) against the
    full-tensor oracle; float32 and float64 models, temperature 0.7."""
    print(f"seed {SEED}")
    monkeypatch.setattr(chunked, "CHUNK_TOKENS", 5)
    model, batch = tiny_model(dtype), random_batch()
    gen = torch.Generator().manual_seed(SEED + 1)
    weights = (torch.rand(6, 14, generator=gen) * 2 - 1, torch.rand(6, 14, generator=gen) * 2 - 1)
    new = values_and_grads(response_logprobs, model, batch, 0.7, top_k, top_p, weights)
    old = values_and_grads(full_tensor_logprobs, model, batch, 0.7, top_k, top_p, weights)
    assert new[0].shape == old[0].shape and new[0].dtype == old[0].dtype == max(dtype, torch.float32,
                                                                                  key=lambda d: d.itemsize)
    assert torch.equal(torch.isfinite(new[0]), torch.isfinite(old[0]))       # the same tokens filtered out
    finite = torch.isfinite(old[0])
    kept = int(finite.sum()) - int((old[0] == 0).sum())          # response tokens the filter kept
    print(f"{kept} of {sum(map(len, batch[1]))} response tokens survive the filter")
    assert kept >= 10
    value_err = max((new[0] - old[0])[finite].abs().max().item(), (new[1] - old[1]).abs().max().item())
    grad_err, worst = max((((new[2][n] - g).norm() / g.norm().clamp(min=1e-30)).item(), n) for n, g in old[2].items())
    print(f"{dtype} top_k={top_k} top_p={top_p}: max |value error| {value_err:.2e}, "
          f"worst per-tensor |grad error| / |grad| (L2) {grad_err:.2e} ({worst})")
    assert value_err < tol
    assert grad_err < grad_tol
    assert old[1][0, 0] > 0 and old[2]["lm_head.weight"].abs().max() > 0     # not trivially zero


def test_without_gradient_and_without_entropy(monkeypatch):
    """Under no_grad (the reference's and old logprobs) the values are the oracle's and entropy is None."""
    monkeypatch.setattr(chunked, "CHUNK_TOKENS", 4)
    model, batch = tiny_model(), random_batch(seed=SEED + 2)
    print(f"seed {SEED + 2}")
    with torch.no_grad():
        logp, entropy = response_logprobs(model, *batch, 1.0)
        ref, _ = full_tensor_logprobs(model, *batch, 1.0)
    assert entropy is None and not logp.requires_grad
    err = (logp - ref).abs().max().item()
    print(f"no_grad max |error| {err:.2e}")
    assert err < 1e-6


def test_entropy_gradient_finite_under_filters_with_large_weights():
    """A filtered token's logit is -inf: its entropy gradient must be 0, also when the loss scales the
    entropy by more than 1 (the full-tensor oracle gave NaN gradients here)."""
    model, batch = tiny_model(), random_batch(seed=SEED + 4)
    print(f"seed {SEED + 4}")
    logp, entropy = response_logprobs(model, *batch, 1.0, 40, 0.9, with_entropy=True)
    (1e3 * entropy.sum()).backward()
    assert entropy.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


class LargestVocabRows(TorchDispatchMode):
    """Records, over every tensor an operation creates (views excluded: they allocate nothing), the most
    rows of one whose last dimension is the vocabulary's, and the largest such float32 tensor."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows, self.float32_numel = vocab, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
                if t.dtype == torch.float32:
                    self.float32_numel = max(self.float32_numel, t.numel())
        return out


@pytest.mark.parametrize("fn,chunk_bound", [(response_logprobs, True), (full_tensor_logprobs, False)])
def test_no_tensor_wider_than_a_chunk(monkeypatch, fn, chunk_bound):
    """Forward and backward with entropy and top-k/top-p: no tensor of the vocabulary's width has more
    than CHUNK_TOKENS rows (nor, in float32, more than CHUNK_TOKENS * V elements), though the batch has
    ~45 response tokens and ~65 in all. The old full-tensor computation, measured the same way, breaks
    the bound: the test would catch its return."""
    chunk = 8
    monkeypatch.setattr(chunked, "CHUNK_TOKENS", chunk)
    model, (prompts, responses) = tiny_model(), random_batch(seed=SEED + 3)
    print(f"seed {SEED + 3}")
    n_response = sum(len(r) for r in responses)
    assert n_response > 4 * chunk
    mode = LargestVocabRows(VOCAB)
    with mode:
        logp, entropy = fn(model, prompts, responses, 0.9, 10, 0.9, with_entropy=True)
        (logp.sum() + entropy.sum()).backward()
    print(f"{fn.__name__}: {n_response} response tokens, chunk {chunk}: at most {mode.rows} rows of width V, "
          f"largest float32 [.., V] tensor {mode.float32_numel} elements")
    assert mode.rows > 0
    if chunk_bound:
        assert mode.rows <= chunk and mode.float32_numel <= chunk * VOCAB
    else:
        assert mode.rows >= n_response
