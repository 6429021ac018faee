"""rl.algorithms.shaping and .sampling: DAPO's overlong shaping and dynamic sampling."""
import pytest
import torch

from deltarl.rl.algorithms import dynamic_sampling_filter, groups_needed, overlong_shaping


def test_overlong_shaping_hand_computed():
    # max 100, buffer 20: free up to 80, then -(len - 80) / 20, -1 from 100 on
    #   0 -> 0, 80 -> 0, 81 -> -0.05, 90 -> -0.5, 100 -> -1, 120 -> -1
    lengths = torch.tensor([0, 80, 81, 90, 100, 120])
    expected = torch.tensor([0.0, 0.0, -0.05, -0.5, -1.0, -1.0])
    torch.testing.assert_close(overlong_shaping(lengths, 100, 20), expected)
    torch.testing.assert_close(overlong_shaping(lengths, 100, 20, penalty_factor=0.5), expected * 0.5)


def test_overlong_shaping_hard_cliff_and_bounds():
    # buffer 0: only lengths past the budget are punished
    torch.testing.assert_close(overlong_shaping([99, 100, 101], 100, 0), torch.tensor([0.0, 0.0, -1.0]))
    shaped = overlong_shaping(torch.arange(0, 300), 256, 64, penalty_factor=2.0)
    assert (shaped <= 0).all() and (shaped >= -2.0).all()
    assert (shaped[1:] <= shaped[:-1]).all()                            # never rewards length
    with pytest.raises(ValueError):
        overlong_shaping([1], 100, 101)
    with pytest.raises(ValueError):
        overlong_shaping([1], 0, 0)


def test_dynamic_sampling_filter_hand_computed():
    # group 0: 1, 1 (all equal, drop); group 1: 0, 1 (keep); group 2: 0.5, 0.5 (drop);
    # group 4: a single sample (drop); group 3: 0, 0, 1 interleaved (keep)
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 3.0, 0.0, 0.0, 1.0])
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 4, 3, 3, 3])
    keep = dynamic_sampling_filter(rewards, ids)
    assert keep.tolist() == [False, False, True, True, False, False, False, True, True, True]


def test_dynamic_sampling_filter_tolerance_and_empty_batch():
    rewards, ids = torch.tensor([0.0, 1e-7, 0.0, 1.0]), [0, 0, 1, 1]
    assert dynamic_sampling_filter(rewards, ids).tolist() == [True, True, True, True]
    assert dynamic_sampling_filter(rewards, ids, atol=1e-6).tolist() == [False, False, True, True]
    assert dynamic_sampling_filter(torch.zeros(0), torch.zeros(0, dtype=torch.long)).numel() == 0


def test_groups_needed():
    assert groups_needed(0, 8) == 8
    assert groups_needed(6, 8, keep_rate=0.5) == 4                      # 2 missing / 0.5
    assert groups_needed(8, 8) == 0 and groups_needed(9, 8) == 0
    assert groups_needed(0, 8, keep_rate=0.0) == 80                      # floored at 10 %
    assert groups_needed(0, 3, keep_rate=0.7) == 5                       # ceil(3 / 0.7)
