"""Off-policy correction weights (rl/algorithms/off_policy.py) against per-token float64 loops, and the
decoupled vs coupled PPO choice in policy_loss."""
import math
import random

import pytest
import torch

from deltarl.rl.algorithms import IS_CORRECTIONS, importance_weights, mismatch_stats, policy_loss


def random_case(seed: int, B=5, T=7):
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    proximal = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    behaviour = proximal + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.6
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    behaviour[~mask] = float("nan")                       # garbage at padding must not leak
    return proximal, behaviour, mask


def loop_weights(proximal, behaviour, mask, mode, cap):
    """The definitions, one token at a time."""
    B, T = mask.shape
    out = torch.ones(B, T, dtype=torch.float64)
    for b in range(B):
        valid = [t for t in range(T) if mask[b, t]]
        ratios = {t: math.exp(proximal[b, t].item() - behaviour[b, t].item()) for t in valid}
        geometric = math.exp(sum(math.log(r) for r in ratios.values()) / max(len(valid), 1))
        for t in valid:
            r = ratios[t]
            if mode == "tis":
                out[b, t] = min(r, cap)
            elif mode == "mask_token":
                out[b, t] = r if 1 / cap <= r <= cap else 0.0
            elif mode == "mask_sequence":
                out[b, t] = r if 1 / cap <= geometric <= cap else 0.0
    return out


@pytest.mark.parametrize("mode", IS_CORRECTIONS)
@pytest.mark.parametrize("cap", [1.5, 3.0])
def test_weights_match_the_per_token_definitions(mode, cap):
    seed = random.randrange(2**31)
    proximal, behaviour, mask = random_case(seed)
    weights, kept = importance_weights(proximal, behaviour, mask, mode, cap)
    expected = loop_weights(proximal, behaviour, mask, mode, cap)
    assert torch.allclose(weights.double(), expected, rtol=1e-5, atol=1e-6), (seed, weights, expected)
    assert torch.equal(kept, mask & (expected != 0)), seed
    assert torch.isfinite(weights).all()


def test_mask_sequence_keeps_or_drops_whole_sequences():
    seed = random.randrange(2**31)
    proximal, behaviour, mask = random_case(seed, B=16)
    _, kept = importance_weights(proximal, behaviour, mask, "mask_sequence", 1.3)
    for b in range(mask.shape[0]):
        assert kept[b][mask[b]].all() or not kept[b].any(), seed


def test_mismatch_stats_are_probability_differences():
    seed = random.randrange(2**31)
    proximal, behaviour, mask = random_case(seed)
    stats = mismatch_stats(proximal, behaviour, mask)
    diffs = [abs(math.exp(proximal[b, t]) - math.exp(behaviour[b, t])) for b, t in mask.nonzero().tolist()]
    assert stats["rollout_probs_diff_mean"].item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-6)
    assert stats["rollout_probs_diff_max"].item() == pytest.approx(max(diffs), rel=1e-6)


def test_masked_correction_zeroes_the_dropped_tokens_in_the_loss():
    """A token whose ratio leaves [1/C, C] adds nothing to the loss or its gradient; is_masked_frac counts it."""
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    rollout = torch.log(torch.tensor([[0.5, 0.05, 0.45]]))            # ratios 1, 10, 1.11
    logp = old.clone().requires_grad_(True)
    adv, mask = torch.ones(1, 3), torch.ones(1, 3)
    loss, stats = policy_loss(logp, old, adv, mask, rollout_logprobs=rollout, tis_cap=2.0,
                              is_correction="mask_token")
    loss.backward()
    assert logp.grad[0, 1] == 0 and logp.grad[0, 0] != 0 and logp.grad[0, 2] != 0
    assert stats["is_masked_frac"].item() == pytest.approx(1 / 3)
    tis_loss, tis_stats = policy_loss(old.clone(), old, adv, mask, rollout_logprobs=rollout, tis_cap=2.0)
    assert tis_stats["is_masked_frac"].item() == 0 and tis_stats["tis_capped_frac"].item() == pytest.approx(1 / 3)


def test_coupled_ppo_clips_around_the_rollout_policy():
    """proximal=rollout is PPO with the behaviour logprobs as `old`: the same loss as passing them directly
    with no correction (what the learner does for algorithm.proximal=rollout)."""
    seed = random.randrange(2**31)
    proximal, behaviour, mask = random_case(seed)
    behaviour = torch.where(mask, behaviour, 0.0).float()
    logp = proximal.float() + 0.1
    adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed))
    coupled, stats = policy_loss(logp, behaviour, adv, mask, rollout_logprobs=behaviour, tis_cap=None)
    manual_ratio = torch.where(mask, (logp - behaviour).exp(), 1.0)
    per_token = torch.maximum(-adv * manual_ratio, -adv * manual_ratio.clamp(0.8, 1.28))
    expected = (per_token * mask).sum() / mask.sum().clamp(min=1)
    assert coupled.item() == pytest.approx(expected.item(), rel=1e-5), seed
    assert "tis_weight_mean" not in stats
