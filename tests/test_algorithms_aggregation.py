"""rl.algorithms.aggregation: masked reductions and the three loss aggregations."""
import math

import pytest
import torch

from deltarl.rl.algorithms import aggregate, aggregation_units, masked_mean, masked_sum

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


def test_units():
    assert aggregation_units(MASK, "token").item() == 4
    assert aggregation_units(MASK, "sequence").item() == 2
    assert aggregation_units(MASK, "seq-mean-token-sum-norm").item() == 3


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


@pytest.mark.parametrize("aggregation", ["token", "sequence", "seq-mean-token-sum-norm"])
def test_micro_batch_rescaling_reproduces_the_whole_batch(aggregation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, generator=g)
    mask = torch.rand(6, 7, generator=g) > 0.4
    mask[2] = False                                                    # one empty row
    whole = aggregate(x, mask, aggregation, max_len=7)
    total = aggregation_units(mask, aggregation)
    parts = sum(aggregate(x[s], mask[s], aggregation, max_len=7) * aggregation_units(mask[s], aggregation) / total
                for s in (slice(0, 2), slice(2, 6)))
    torch.testing.assert_close(parts, whole)


def test_bad_arguments():
    with pytest.raises(ValueError, match="token, sequence, seq-mean-token-sum-norm"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")
