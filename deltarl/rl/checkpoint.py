"""Checkpoints of a run: the learner's policy and optimizer plus the trainer's step, data position and
RNG states, so `resume=RUN_DIR` continues with no step lost or repeated."""
import json
import random
from pathlib import Path

import numpy as np
import torch

LATEST = "latest"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def save_trainer_state(folder: Path, step: int, position: int):
    state = {"step": step, "position": position, "python_rng": repr(random.getstate()),
             "numpy_rng": np.random.get_state()[1].tolist(), "torch_rng": torch.get_rng_state().tolist()}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def mark_latest(run_dir: Path, folder: Path):
    """Point `latest` at a fully written checkpoint (written last, atomically)."""
    tmp = run_dir / "checkpoints" / (LATEST + ".tmp")
    tmp.write_text(folder.name)
    tmp.replace(run_dir / "checkpoints" / LATEST)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    return run_dir / "checkpoints" / pointer.read_text().strip() if pointer.exists() else None


def load_trainer_state(folder: Path) -> dict:
    state = json.loads((folder / "trainer_state.json").read_text())
    random.setstate(eval(state["python_rng"], {"__builtins__": {}}))   # a tuple of ints, written by repr
    np.random.seed(0)
    rng = np.random.get_state()
    np.random.set_state((rng[0], np.array(state["numpy_rng"], dtype=np.uint32), *rng[2:]))
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state
