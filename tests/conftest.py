"""Test-wide settings.

Triton kernels run in the interpreter where there is no GPU, so CI checks them. A test that starts
DeepSpeed in this process sets the torch.distributed rendezvous variables (MASTER_PORT and the rest);
they are put back after each test, so that the child processes of later tests (run_rl.py, Ray workers,
`ray start`) do not inherit a port this process still listens on.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def restore_environment(saved: dict):
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _rendezvous_stays_in_its_test():
    saved = {name: os.environ.get(name) for name in RENDEZVOUS}
    yield
    restore_environment(saved)


@pytest.fixture
def moba_seed():
    """Fresh inputs (and weights) per MoBA test from one printed seed; MOBA_TEST_SEED=<seed> reruns a failure."""
    env = os.environ.get("MOBA_TEST_SEED")
    value = int(env) if env else int.from_bytes(os.urandom(4), "little")
    print(f"MOBA_TEST_SEED={value}")
    torch.manual_seed(value)
