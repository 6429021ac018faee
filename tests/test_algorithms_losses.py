"""rl.algorithms.losses: PPO-clip with clip-higher, aggregations, truncated importance sampling."""
import math

import pytest
import torch

from deltarl.rl.algorithms import policy_loss, tis_weights


def logp_for(ratios):
    """Logprobs with old_logprobs = 0 that give these ratios, as a leaf that takes a gradient."""
    return torch.log(torch.tensor(ratios, dtype=torch.float32)).requires_grad_(True)


def test_hand_computed_clipping_and_gradient():
    # clip_low 0.2, clip_high 0.28 -> ratio clipped to [0.8, 1.28]
    #   t0: A=+1, r=1.5: max(-1.5, -1.28) = -1.28   clipped high, no gradient
    #   t1: A=+1, r=1.1: -1.1                        gradient -A r / 4 = -0.275
    #   t2: A=-1, r=0.5: max(0.5, 0.8) = 0.8         clipped low, no gradient
    #   t3: A=-1, r=0.9: 0.9                         gradient -A r / 4 = 0.225
    # token mean = (-1.28 - 1.1 + 0.8 + 0.9) / 4 = -0.17
    logp = logp_for([[1.5, 1.1, 0.5, 0.9]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = policy_loss(logp, torch.zeros(1, 4), adv, torch.ones(1, 4))
    assert loss.item() == pytest.approx(-0.17, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.275, 0.0, 0.225]]))
    assert stats["clip_frac_high"].item() == 0.25 and stats["clip_frac_low"].item() == 0.25
    assert stats["clip_frac"].item() == 0.5
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    # approx_kl = mean(r - 1 - log r) over 1.5, 1.1, 0.5, 0.9
    k3 = sum(r - 1 - math.log(r) for r in (1.5, 1.1, 0.5, 0.9)) / 4
    assert stats["approx_kl"].item() == pytest.approx(k3, abs=1e-6)
    assert stats["pg_loss"].item() == pytest.approx(-0.17, abs=1e-6)


def test_pessimistic_side_keeps_the_gradient_beyond_the_bounds():
    # A=-1, r=1.5: max(1.5, 1.28) = 1.5, gradient -A r / 2 = 0.75 (not clipped: it hurts)
    # A=+1, r=0.5: max(-0.5, -0.8) = -0.5, gradient -A r / 2 = -0.25
    logp = logp_for([[1.5, 0.5]])
    loss, stats = policy_loss(logp, torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2))
    assert loss.item() == pytest.approx((1.5 - 0.5) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.75, -0.25]]))
    assert stats["clip_frac"].item() == 0.0


def test_clip_triggers_exactly_beyond_the_asymmetric_bounds():
    # bounds [0.8, 1.28]: 1.27 and 0.81 are inside, 1.29 and 0.79 outside
    logp = logp_for([[1.27, 1.29, 0.81, 0.79]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = policy_loss(logp, torch.zeros(1, 4), adv, torch.ones(1, 4), clip_low=0.2, clip_high=0.28)
    loss.backward()
    assert logp.grad[0, 0] != 0 and logp.grad[0, 1] == 0
    assert logp.grad[0, 2] != 0 and logp.grad[0, 3] == 0
    assert stats["clip_frac_high"].item() == 0.25 and stats["clip_frac_low"].item() == 0.25


def test_ratio_one_gives_minus_mean_advantage():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 6, generator=g).requires_grad_(True)
    adv = torch.randn(4, 6, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.3
    loss, stats = policy_loss(logp, logp.detach(), adv, mask)
    n = mask.sum()
    assert loss.item() == pytest.approx(-(adv[mask].sum() / n).item(), abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.where(mask, -adv / n, 0.0))
    assert stats["clip_frac"].item() == 0.0 and stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0


def test_aggregations_hand_computed():
    # per-token losses (as in the first test): row 0: -1.28, -1.1 ; row 1: 0.8, 0.9, 1.0
    #   token:    (-1.28 - 1.1 + 0.8 + 0.9 + 1.0) / 5 = 0.064
    #   sequence: mean(-2.38 / 2, 2.7 / 3) = mean(-1.19, 0.9) = -0.145
    #   sum-norm: (-2.38 + 2.7) / 2 rows / max_len 4 = 0.04
    logp = logp_for([[1.5, 1.1, 1.0], [0.5, 0.9, 1.0]])
    adv = torch.tensor([[1.0, 1.0, 5.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    old = torch.zeros(2, 3)
    expected = {"token": 0.064, "sequence": -0.145, "seq-mean-token-sum-norm": 0.04}
    for aggregation, value in expected.items():
        loss, _ = policy_loss(logp, old, adv, mask, aggregation=aggregation, max_len=4)
        assert loss.item() == pytest.approx(value, abs=1e-6), aggregation


def test_tis_hand_computed():
    # old = 0, rollout = log(0.5, 1, 4): pi_old / pi_rollout = 2, 1, 0.25; cap 1.5 -> 1.5, 1, 0.25
    # ratio 1, A = 1: per-token loss -w -> token mean -(1.5 + 1 + 0.25) / 3 = -0.9166667
    # rollout_kl = mean(w - 1 - log w) over the raw weights 2, 1, 0.25
    #            = (0.3068528 + 0 + 0.6362944) / 3 = 0.3143824
    rollout = torch.log(torch.tensor([[0.5, 1.0, 4.0]])).requires_grad_(True)
    logp = torch.zeros(1, 3, requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3),
                              rollout_logprobs=rollout, tis_cap=1.5)
    assert loss.item() == pytest.approx(-2.75 / 3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor([[1.5, 1.0, 0.25]]) / 3)
    assert rollout.grad is None                                        # the weights are constants
    assert stats["tis_weight_mean"].item() == pytest.approx(2.75 / 3, abs=1e-6)
    assert stats["tis_capped_frac"].item() == pytest.approx(1 / 3)
    assert stats["rollout_kl"].item() == pytest.approx(0.3143824, abs=1e-6)


def test_tis_weights_are_capped_and_one_at_padding():
    g = torch.Generator().manual_seed(1)
    old, rollout = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    mask = torch.rand(5, 7, generator=g) > 0.3
    w = tis_weights(old, rollout, mask, tis_cap=2.0)
    assert (w <= 2.0).all() and (w > 0).all()
    assert (w[~mask] == 1).all()
    torch.testing.assert_close(w[mask], torch.exp(old - rollout)[mask].clamp(max=2.0))


def test_rollout_logprobs_without_cap_only_report_the_mismatch():
    logp = torch.zeros(1, 2)
    loss, stats = policy_loss(logp, logp, torch.ones(1, 2), torch.ones(1, 2),
                              rollout_logprobs=torch.tensor([[0.0, -1.0]]))
    assert loss.item() == pytest.approx(-1.0)
    assert "rollout_kl" in stats and "tis_weight_mean" not in stats


def test_garbage_at_padding_and_empty_rows_stay_finite():
    logp = torch.tensor([[-0.5, math.nan, math.inf], [math.nan, math.nan, math.nan]], requires_grad=True)
    old = torch.tensor([[-0.4, math.inf, -math.inf], [-math.inf, 0.0, math.nan]])
    adv = torch.tensor([[1.0, math.nan, math.inf], [math.nan, 1.0, 1.0]])
    rollout = torch.tensor([[-0.6, math.nan, 0.0], [math.inf, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    for aggregation in ("token", "sequence", "seq-mean-token-sum-norm"):
        logp.grad = None
        loss, stats = policy_loss(logp, old, adv, mask, aggregation=aggregation, max_len=3,
                                  rollout_logprobs=rollout, tis_cap=2.0)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
        assert torch.isfinite(logp.grad).all() and (logp.grad[~mask.bool()] == 0).all()


def test_all_empty_batch_gives_zero_loss_and_zero_stats():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and (logp.grad == 0).all()
    assert all(v.item() == 0.0 for v in stats.values())


def test_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="rollout_logprobs"):
        policy_loss(x, x, x, x, tis_cap=2.0)
    with pytest.raises(ValueError, match="shape"):
        policy_loss(x, torch.zeros(2, 4), x, x)
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss(x, x, x, x, clip_low=1.0)
    with pytest.raises(ValueError, match="tis_cap"):
        policy_loss(x, x, x, torch.ones(2, 3), rollout_logprobs=x, tis_cap=0.0)
