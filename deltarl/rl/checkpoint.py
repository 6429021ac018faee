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


def rng_state() -> dict:
    """This process's RNG states (Python, NumPy, torch CPU and CUDA), as plain lists (JSON-able).
    NumPy's state is all of it (key, position and the cached Gaussian), not just the key."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict):
    """Restore what rng_state returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_trainer_state(folder: Path, step: int, position: int):
    state = {"step": step, "position": position, "rng": rng_state()}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def save_rollout_queue(folder: Path, state: dict):
    """The asynchronous rollout queue's state (rl.rollout_queue: groups, paused sequences, counters)."""
    torch.save(state, folder / "rollout_queue.pt")


def load_rollout_queue(folder: Path) -> dict:
    return torch.load(folder / "rollout_queue.pt", weights_only=False)


def mark_latest(run_dir: Path, folder: Path):
    """Point `latest` at a fully written checkpoint (written last, atomically)."""
    tmp = run_dir / "checkpoints" / (LATEST + ".tmp")
    tmp.write_text(folder.name)
    tmp.replace(run_dir / "checkpoints" / LATEST)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    return run_dir / "checkpoints" / pointer.read_text().strip() if pointer.exists() else None


def load_trainer_state(folder: Path) -> dict:
    """Read the trainer's state and restore its RNG states."""
    state = json.loads((folder / "trainer_state.json").read_text())
    set_rng_state(state["rng"])
    return state
