"""rl.algorithms.kl: k1 / k2 / k3 estimators, as a loss and as a reward penalty."""
import math

import pytest
import torch

from deltarl.rl.algorithms import compute_advantages, kl_loss, kl_penalty

LN2 = math.log(2.0)


def test_hand_computed_estimators():
    # pi = (0.5, 0.25), ref = (0.25, 0.5): delta = log ref - log pi = (-ln 2, +ln 2)
    #   k1 = -delta            = ( 0.6931472, -0.6931472)
    #   k2 = delta^2 / 2       = ( 0.2402265,  0.2402265)
    #   k3 = e^delta - delta - 1 = (0.5 + ln 2 - 1, 2 - ln 2 - 1) = (0.1931472, 0.3068528)
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    expected = {"k1": [LN2, -LN2], "k2": [LN2 ** 2 / 2] * 2, "k3": [LN2 - 0.5, 1 - LN2]}
    for estimator, values in expected.items():
        torch.testing.assert_close(kl_penalty(logp, ref, estimator), torch.tensor([values]))


def test_k1_and_k3_are_unbiased_and_k2_k3_nonnegative():
    # Exact expectation over a 5-token vocabulary, sampling from pi: E[k1] = E[k3] = KL(pi || ref)
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, generator=g), -1)
    ref = torch.log_softmax(torch.randn(5, generator=g), -1)
    p = logp.exp()
    kl = (p * (logp - ref)).sum()
    for estimator in ("k1", "k3"):
        assert (p * kl_penalty(logp, ref, estimator)).sum().item() == pytest.approx(kl.item(), abs=1e-6)
    wide_logp, wide_ref = torch.randn(64, 64, generator=g) * 5, torch.randn(64, 64, generator=g) * 5
    assert (kl_penalty(wide_logp, wide_ref, "k2") >= 0).all()
    assert (kl_penalty(wide_logp, wide_ref, "k3") >= 0).all()
    assert (kl_penalty(wide_logp, wide_logp, "k3") == 0).all()


def test_k3_stays_finite_for_huge_log_ratios():
    logp = torch.tensor([[-200.0, 0.0]])
    ref = torch.tensor([[0.0, -200.0]])
    assert torch.isfinite(kl_penalty(logp, ref, "k3")).all()


def test_kl_loss_aggregates_with_mask_and_only_differentiates_the_policy():
    # k1 per token on valid tokens: ln 2, -ln 2, ln 2 -> token mean ln2 / 3
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.5]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.25]])).requires_grad_(True)
    loss = kl_loss(logp, ref, torch.ones(1, 3), estimator="k1")
    assert loss.item() == pytest.approx(LN2 / 3, abs=1e-6)
    loss.backward()
    assert ref.grad is None
    torch.testing.assert_close(logp.grad, torch.full((1, 3), 1 / 3))
    padded = torch.tensor([[0.0, math.nan]])
    out = kl_loss(padded, torch.tensor([[0.0, math.inf]]), torch.tensor([[1, 0]]), "k3", "sequence")
    assert out.item() == 0.0


def test_kl_as_reward_penalty_feeds_reinforce_pp():
    # token_rewards = -coef * k1 on the old policy, summed into the returns, then whitened over the batch.
    # Row 0 (reward 1, 3 tokens), row 1 (reward 0, 2 tokens); k1 = logp - ref:
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.7, -2.0, 0.0]])
    mask, rewards, coef = torch.tensor([[1, 1, 1], [1, 1, 0]]), torch.tensor([1.0, 0.0]), 0.5
    penalty = -coef * kl_penalty(logp, ref, "k1", mask)            # [[-0.25, 0.5, 0], [-0.25, 0.5, 0]]
    torch.testing.assert_close(penalty, torch.tensor([[-0.25, 0.5, 0.0], [-0.25, 0.5, 0.0]]))
    # returns G_t = sum of token rewards from t on, the sequence reward on the last valid token:
    #   row 0: x = (-0.25, 0.5, 1.0) -> G = (1.25, 1.5, 1.0);  row 1: x = (-0.25, 0.5) -> G = (0.25, 0.5)
    returns = torch.tensor([1.25, 1.5, 1.0, 0.25, 0.5])
    whitened = (returns - returns.mean()) / (returns.var(unbiased=False).sqrt() + 1e-6)
    expected = torch.tensor([[*whitened[:3]], [*whitened[3:], 0.0]])
    out = compute_advantages("reinforce_pp", rewards, [0, 1], mask, token_rewards=penalty)
    torch.testing.assert_close(out, expected)
    # and the penalty matters: without it the advantages differ
    assert (compute_advantages("reinforce_pp", rewards, [0, 1], mask) - expected).abs().max() > 0.1


def test_estimator_none_is_each_uses_default():
    # the config's algorithm.kl_estimator: null means k1 as a reward penalty and k3 as a loss
    logp, ref, mask = torch.log(torch.tensor([[0.5, 0.25]])), torch.log(torch.tensor([[0.25, 0.5]])), torch.ones(1, 2)
    torch.testing.assert_close(kl_penalty(logp, ref, None), kl_penalty(logp, ref, "k1"))
    torch.testing.assert_close(kl_loss(logp, ref, mask, estimator=None), kl_loss(logp, ref, mask, estimator="k3"))
    assert kl_loss(logp, ref, mask, estimator=None).item() != pytest.approx(kl_loss(logp, ref, mask, "k1").item())


def test_trainer_kl_reward_uses_the_learners_old_logprobs_and_k1():
    """advantages_for takes (old, ref) from the learner; the engine's rollout logprobs play no part."""
    from deltarl.rl.config import load_config
    from deltarl.rl.samples import RolloutBatch
    from deltarl.rl.trainer import advantages_for

    cfg = load_config(None, ["algorithm.advantage=reinforce_pp", "algorithm.kl_mode=reward",
                             "algorithm.kl_coef=0.5", "rollout.n=2"])
    g = torch.Generator().manual_seed(0)
    old, ref, engine = (torch.randn(4, 3, generator=g) for _ in range(3))
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    batch = RolloutBatch([[1]] * 4, [[2] * int(m.sum()) for m in mask], engine, mask, torch.tensor([0, 0, 1, 1]),
                         torch.zeros(4, dtype=torch.bool))
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    out = advantages_for(cfg, batch, rewards, (old, ref))
    expected = compute_advantages("reinforce_pp", rewards, batch.group_ids, mask,
                                  token_rewards=-0.5 * (old - ref) * mask)
    torch.testing.assert_close(out, expected)
    batch.rollout_logprobs = torch.zeros(4, 3)
    torch.testing.assert_close(advantages_for(cfg, batch, rewards, (old, ref)), expected)


def test_bad_estimator():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
