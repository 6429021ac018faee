"""rl.algorithms.aggregation: masked reductions and the three loss aggregations."""
import math

import pytest
import torch

from deltarl.rl.algorithms import aggregate, aggregation_numerator, loss_denominator, masked_mean, masked_sum

NAN, INF = math.nan, math.inf

# Row 0 has 3 tokens, row 1 one token, row 2 none; 99 marks padding.
VALUES = torch.tensor([[1.0, 2.0, 3.0, 99.0],
                       [4.0, 99.0, 99.0, 99.0],
                       [99.0, 99.0, 99.0, 99.0]])
MASK = torch.tensor([[1, 1, 1, 0],
                     [1, 0, 0, 0],
                     [0, 0, 0, 0]])


def test_hand_computed_aggregations():
    # token:    (1 + 2 + 3 + 4) / 4 = 2.5
    # sequence: mean(6/3, 4/1) over the two non-empty rows = 3.0
    # sum-norm: (6 + 4 + 0) / 3 rows / max_len 4 = 10/12
    assert aggregate(VALUES, MASK, "token").item() == pytest.approx(2.5)
    assert aggregate(VALUES, MASK, "sequence").item() == pytest.approx(3.0)
    assert aggregate(VALUES, MASK, "seq-mean-token-sum-norm", max_len=4).item() == pytest.approx(10 / 12)
    assert masked_sum(VALUES, MASK).item() == 10.0
    torch.testing.assert_close(masked_mean(VALUES, MASK, dim=-1), torch.tensor([2.0, 4.0, 0.0]))


def test_denominators_and_numerators():
    assert loss_denominator(MASK, "token").item() == 4
    assert loss_denominator(MASK, "sequence").item() == 2
    assert loss_denominator(MASK, "seq-mean-token-sum-norm", max_len=10).item() == 30    # 3 rows x budget
    assert aggregation_numerator(VALUES, MASK, "token").item() == 10.0
    assert aggregation_numerator(VALUES, MASK, "sequence").item() == 6.0             # 6/3 + 4/1 + 0
    assert aggregation_numerator(VALUES, MASK, "seq-mean-token-sum-norm").item() == 10.0


@pytest.mark.parametrize("aggregation", ["token", "sequence", "seq-mean-token-sum-norm"])
def test_nan_and_inf_at_padding_do_not_leak(aggregation):
    dirty = VALUES.clone()
    dirty[~MASK.bool()] = torch.tensor([NAN, INF, -INF, NAN, NAN, INF, NAN, NAN])
    dirty.requires_grad_(True)
    out = aggregate(dirty, MASK, aggregation, max_len=4)
    assert out.item() == pytest.approx(aggregate(VALUES, MASK, aggregation, max_len=4).item())
    out.backward()
    assert torch.isfinite(dirty.grad).all()
    assert (dirty.grad[~MASK.bool()] == 0).all()


@pytest.mark.parametrize("aggregation", ["token", "sequence", "seq-mean-token-sum-norm"])
def test_empty_mask_gives_zero_and_a_graph(aggregation):
    x = torch.randn(3, 5, requires_grad=True)
    out = aggregate(x, torch.zeros(3, 5), aggregation, max_len=8)
    assert out.item() == 0.0
    out.backward()
    assert (x.grad == 0).all()


def _split_batch(seed):
    """A batch of 9 rows of 0-11 tokens (one row empty) cut into 3 micro-batches of different padded
    widths: each micro-batch is trimmed to its own longest row, as the learner packs them."""
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 12, (9,), generator=g)
    lengths[4] = 0
    x = torch.randn(9, 12, generator=g)
    mask = torch.arange(12)[None, :] < lengths[:, None]
    cuts = [slice(0, 2), slice(2, 7), slice(7, 9)]
    parts = [(x[c, :max(int(lengths[c].max()), 1)], mask[c, :max(int(lengths[c].max()), 1)]) for c in cuts]
    return x, mask, parts


@pytest.mark.parametrize("aggregation", ["token", "sequence", "seq-mean-token-sum-norm"])
def test_micro_batches_with_the_global_denominator_sum_to_the_whole_batch(aggregation):
    """Each micro-batch's reduction over the whole batch's denominator sums to the whole batch's value,
    with micro-batches of different widths (Dr.GRPO's budget 16 is none of them)."""
    x, mask, parts = _split_batch(seed=7)
    whole = aggregate(x, mask, aggregation, max_len=16)
    denominator = loss_denominator(mask, aggregation, max_len=16)
    summed = sum(aggregate(v, m, aggregation, denominator=denominator) for v, m in parts)
    torch.testing.assert_close(summed, whole)


def test_drgrpo_divides_by_the_budget_not_the_padded_width():
    """Dr.GRPO's constant is the fixed budget: the same rows padded to another width give the same value,
    and it is not the micro-batch's longest row (what the learner once passed)."""
    x, mask, parts = _split_batch(seed=11)
    agg = "seq-mean-token-sum-norm"
    wide = torch.cat([x, torch.full((9, 5), 99.0)], 1), torch.cat([mask, torch.zeros(9, 5, dtype=torch.bool)], 1)
    torch.testing.assert_close(aggregate(*wide, agg, max_len=16), aggregate(x, mask, agg, max_len=16))
    assert aggregate(x, mask, agg, max_len=16).item() == pytest.approx(masked_sum(x, mask).item() / (9 * 16))
    by_width = sum(aggregate(v, m, agg, max_len=v.shape[1]) * v.shape[0] / 9 for v, m in parts)
    assert abs(by_width.item() - aggregate(x, mask, agg, max_len=16).item()) > 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="token, sequence, seq-mean-token-sum-norm"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")
