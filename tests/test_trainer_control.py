"""The trainer's control paths: stop signals (SIGTERM and Ctrl-C checkpoint) and the dynamic-sampling cut."""
import os
import signal

import pytest
import torch

from deltarl.rl.samples import RolloutBatch
from deltarl.rl.trainer import _Stop, first_groups


@pytest.fixture
def stop_handlers():
    """_Stop installed for one test; the previous handlers and flag come back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _Stop.requested = False
    _Stop.install()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    _Stop.requested = False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_request_a_checkpointed_stop(stop_handlers, signum):
    os.kill(os.getpid(), signum)
    assert _Stop.requested                         # the loop finishes its step, checkpoints and exits


def test_a_second_ctrl_c_aborts_at_once(stop_handlers):
    os.kill(os.getpid(), signal.SIGINT)
    assert _Stop.requested
    with pytest.raises(KeyboardInterrupt):        # Python runs the handler right after os.kill returns
        os.kill(os.getpid(), signal.SIGINT)


def batch_of_groups(group_ids):
    n = len(group_ids)
    return RolloutBatch([[1]] * n, [[2, 3]] * n, torch.zeros(n, 2), torch.ones(n, 2), torch.tensor(group_ids),
                        torch.zeros(n, dtype=torch.bool))


def test_first_groups_keeps_the_earliest_whole_groups():
    # three rounds' kept groups (ids grow across rounds: 1, 4, then 9, 12, then 17), target 3
    batch = batch_of_groups([1, 1, 4, 4, 9, 9, 12, 12, 17, 17])
    rewards = torch.arange(10.0)
    kept, kept_rewards = first_groups(batch, rewards, 3)
    assert kept.group_ids.tolist() == [1, 1, 4, 4, 9, 9]
    assert kept_rewards.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    same, _ = first_groups(batch, rewards, 5)
    assert same.group_ids.tolist() == batch.group_ids.tolist()
    empty, none = first_groups(batch_of_groups([]), torch.zeros(0), 3)
    assert empty.size == 0 and none.numel() == 0
