"""The trainer's control paths: stop signals (SIGTERM and Ctrl-C checkpoint), the dynamic-sampling cut and resume=auto."""
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


def test_resume_auto_picks_the_newest_checkpointed_run_of_this_name(tmp_path):
    """resume=auto: a driver started again (e.g. by a loop around `ray job submit`'s entrypoint) continues
    its newest run with a checkpoint; with none it starts a new run."""
    from deltarl.rl.config import load_config
    from deltarl.rl.trainer import prepare_run_dir
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=job", "run.resume=auto"])
    fresh = prepare_run_dir(cfg)
    assert fresh.parent == tmp_path and fresh.name.startswith("job-") and cfg.run.resume is None
    for name in ("job-20261201-000000", "job-20261202-000000", "other-20261203-000000"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "latest").write_text("step_000002")
    (tmp_path / "job-20261204-000000").mkdir()                  # newer, but never checkpointed
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=job", "run.resume=auto"])
    assert prepare_run_dir(cfg) == tmp_path / "job-20261202-000000"
    assert cfg.run.resume == str(tmp_path / "job-20261202-000000")
