"""rl.algorithms.advantages: GRPO, Dr.GRPO, RLOO, REINFORCE++ (and -baseline)."""
import math

import pytest
import torch

from deltarl.rl.algorithms import (compute_advantages, discounted_returns, drgrpo_advantages, grpo_advantages,
                           rloo_advantages)

# Three groups with interleaved, non-contiguous ids:
#   id 5 -> samples 0, 2, 4, 6 with rewards 1, 0, 0, 1: mean 0.5, unbiased std sqrt(1/3)
#   id 9 -> samples 1, 5, 8    with rewards 1, 2, 3:    mean 2,   unbiased std 1
#   id 2 -> samples 3, 7       with rewards 2, 2:       mean 2,   std 0
IDS = [5, 9, 5, 2, 5, 9, 5, 2, 9]
REWARDS = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.0, 2.0, 1.0, 2.0, 3.0])
S = 0.5 / math.sqrt(1 / 3)                                             # 0.8660254
GRPO = [S, -1.0, -S, 0.0, -S, 0.0, S, 0.0, 1.0]
DRGRPO = [0.5, -1.0, -0.5, 0.0, -0.5, 0.0, 0.5, 0.0, 1.0]
# RLOO: r_i - mean of the others. id 5: 1 - (0+0+1)/3 = 2/3, 0 - (1+0+1)/3 = -2/3;
#       id 9: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5; id 2: 0.
RLOO = [2 / 3, -1.5, -2 / 3, 0.0, -2 / 3, 0.0, 2 / 3, 0.0, 1.5]


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=1e-5)


def test_outcome_estimators_hand_computed():
    close(grpo_advantages(REWARDS, IDS), GRPO)
    close(drgrpo_advantages(REWARDS, IDS), DRGRPO)
    close(rloo_advantages(REWARDS, IDS), RLOO)


@pytest.mark.parametrize("name, expected", [("grpo", GRPO), ("drgrpo", DRGRPO), ("rloo", RLOO)])
def test_broadcast_over_tokens_with_padding_and_empty_rows(name, expected):
    lengths = torch.tensor([3, 1, 0, 2, 3, 3, 1, 0, 2])                 # rows 2 and 7 are empty
    mask = torch.arange(3)[None, :] < lengths[:, None]                  # [9, 3]
    adv = compute_advantages(name, REWARDS, torch.tensor(IDS), mask)
    assert adv.shape == (9, 3) and adv.dtype == torch.float32
    close(adv, torch.tensor(expected)[:, None] * mask)


def _random_batch(seed=0, groups=5, n=4, T=6):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(groups * n, generator=g)
    ids = torch.arange(groups).repeat_interleave(n)
    perm = torch.randperm(groups * n, generator=g)
    return rewards[perm], ids[perm] * 7 + 3, torch.ones(groups * n, T)


@pytest.mark.parametrize("fn", [grpo_advantages, drgrpo_advantages, rloo_advantages])
def test_each_group_sums_to_zero(fn):
    rewards, ids, _ = _random_batch()
    adv = fn(rewards, ids)
    for gid in ids.unique():
        assert adv[ids == gid].sum().item() == pytest.approx(0.0, abs=1e-5)


def test_grpo_group_std_is_one_and_scale_shift_invariant():
    rewards, ids, _ = _random_batch(seed=1)
    adv = grpo_advantages(rewards, ids, eps=0.0)
    for gid in ids.unique():
        assert adv[ids == gid].std().item() == pytest.approx(1.0, abs=1e-5)
    close(grpo_advantages(3.0 * rewards + 7.0, ids, eps=0.0), adv, atol=1e-4)


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_relabelling_and_permuting_samples_commutes(name):
    rewards, ids, mask = _random_batch(seed=2)
    perm = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(3))
    adv = compute_advantages(name, rewards, ids, mask)
    adv_perm = compute_advantages(name, rewards[perm], -5 * ids[perm], mask[perm])
    close(adv_perm, adv[perm])


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo", "reinforce_pp_baseline"])
def test_single_sample_groups_and_constant_groups_give_zero(name):
    mask = torch.ones(4, 3)
    adv = compute_advantages(name, torch.tensor([1.0, 2.0, 5.0, 5.0]), [0, 1, 2, 2], mask)
    assert torch.isfinite(adv).all() and (adv == 0).all()


def test_discounted_returns_hand_computed():
    # row 0: per-token rewards -0.1, -0.1, 0.9 (KL penalty + reward 1 at the end), gamma 0.5:
    #   G2 = 0.9, G1 = -0.1 + 0.5 * 0.9 = 0.35, G0 = -0.1 + 0.5 * 0.35 = 0.075
    # row 1: -0.2, -0.2, pad: G1 = -0.2, G0 = -0.2 + 0.5 * -0.2 = -0.3
    x = torch.tensor([[-0.1, -0.1, 0.9], [-0.2, -0.2, 123.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    close(discounted_returns(x, mask, 0.5), [[0.075, 0.35, 0.9], [-0.3, -0.2, 0.0]])
    close(discounted_returns(x, mask, 1.0), [[0.7, 0.8, 0.9], [-0.4, -0.2, 0.0]])


def test_discounted_returns_skip_holes_in_the_mask():
    # token 1 is masked (a tool output, say): no reward, no discount step.
    # gamma 0.5: G3 = 3, G2 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75; gamma 1: 6, 5, 3
    x = torch.tensor([[1.0, 5.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 0, 1, 1]])
    close(discounted_returns(x, mask, 0.5), [[2.75, 0.0, 3.5, 3.0]])
    close(discounted_returns(x, mask, 1.0), [[6.0, 0.0, 5.0, 3.0]])


def _returns_reference(x, mask, gamma):
    out = torch.zeros_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        running = 0.0
        for t in reversed(range(x.shape[1])):
            if mask[b, t]:
                running = float(x[b, t]) + gamma * running
                out[b, t] = running
    return out.float()


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_discounted_returns_long_sequences_match_a_plain_loop(gamma):
    # T = 300 spans several 128-token blocks of the reverse-sum path
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 300, generator=g)
    mask = torch.rand(3, 300, generator=g) > 0.2
    mask[1, 150:] = False
    close(discounted_returns(x, mask, gamma), _returns_reference(x, mask, gamma), atol=1e-4)


def test_reinforce_pp_hand_computed():
    # rewards 1 and 0, lengths 3 and 2, gamma 1: returns 1,1,1 and 0,0 on the 5 valid tokens.
    # Global mean 0.6, population std sqrt((3 * 0.16 + 2 * 0.36) / 5) = sqrt(0.24) = 0.4898979:
    # (1 - 0.6) / 0.4899 = 0.8164966, (0 - 0.6) / 0.4899 = -1.2247449
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = compute_advantages("reinforce_pp", torch.tensor([1.0, 0.0]), [0, 1], mask)
    a, b = 0.4 / math.sqrt(0.24), -0.6 / math.sqrt(0.24)
    close(adv, [[a, a, a], [b, b, 0.0]])


def test_reinforce_pp_with_kl_token_rewards_and_gamma():
    # Returns from test_discounted_returns_hand_computed: 0.075, 0.35, 0.9, -0.3, -0.2.
    # mean 0.165; deviations -0.09, 0.185, 0.735, -0.465, -0.365;
    # population var = (0.0081 + 0.034225 + 0.540225 + 0.216225 + 0.133225) / 5 = 0.932 / 5 = 0.1864
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    token_rewards = torch.tensor([[-0.1, -0.1, -0.1], [-0.2, -0.2, 0.0]])
    adv = compute_advantages("reinforce_pp", torch.tensor([1.0, 0.0]), [0, 1], mask, gamma=0.5,
                             token_rewards=token_rewards)
    std = math.sqrt(0.1864)
    close(adv, [[-0.09 / std, 0.185 / std, 0.735 / std], [-0.465 / std, -0.365 / std, 0.0]])


def test_reinforce_pp_baseline_hand_computed():
    # group 0 rewards 1, 0 -> 0.5, -0.5; group 1 rewards 1, 1 -> 0, 0. Two tokens each.
    # Global mean 0, population std sqrt(4 * 0.25 / 8) = sqrt(0.125): 0.5 / 0.35355 = 1.4142
    adv = compute_advantages("reinforce_pp_baseline", torch.tensor([1.0, 0.0, 1.0, 1.0]), [0, 0, 1, 1],
                             torch.ones(4, 2))
    r2 = math.sqrt(2.0)
    close(adv, [[r2, r2], [-r2, -r2], [0.0, 0.0], [0.0, 0.0]])


def test_reinforce_pp_global_whitening_and_empty_rows():
    rewards, ids, mask = _random_batch(seed=5)
    mask[3] = 0
    mask[4, 2:] = 0
    adv = compute_advantages("reinforce_pp", rewards, ids, mask, eps=0.0)
    valid = adv[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert valid.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert (adv[3] == 0).all() and (adv[4, 2:] == 0).all()


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_all_empty_mask_is_finite_zero(name):
    adv = compute_advantages(name, torch.tensor([1.0, 0.0, 3.0]), [0, 0, 1], torch.zeros(3, 4))
    assert (adv == 0).all()


def test_bad_arguments():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="grpo, drgrpo, rloo, reinforce_pp, reinforce_pp_baseline"):
        compute_advantages("ppo", torch.zeros(2), [0, 0], mask)
    with pytest.raises(ValueError, match="token_rewards"):
        compute_advantages("grpo", torch.zeros(2), [0, 0], mask, token_rewards=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="gamma"):
        compute_advantages("rloo", torch.zeros(2), [0, 0], mask, gamma=0.9)
    with pytest.raises(ValueError, match="rewards must be"):
        compute_advantages("grpo", torch.zeros(3), [0, 0, 0], mask)
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages("grpo", torch.zeros(2), [0, 0, 1], mask)
    with pytest.raises(ValueError, match="group_ids"):
        compute_advantages("grpo", torch.zeros(2), None, mask)
    with pytest.raises(ValueError, match="gamma must be"):
        compute_advantages("reinforce_pp", torch.zeros(2), [0, 0], mask, gamma=1.5)
