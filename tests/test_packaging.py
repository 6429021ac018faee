"""The install's front door: one import name, `deltarl`, that shadows nobody.

Hugging Face's `kernels` package (which transformers imports) and a user's own `model.py` or
`rewards.py` must stay reachable with the repository root on sys.path, as it is under pytest,
`python run_rl.py` and Ray workers started with `--working-dir .`.
"""
import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import setuptools

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "arithmetic-warmup"


def test_the_installed_distribution_has_one_top_level_name():
    top_level = importlib.metadata.distribution("deltarl").read_text("top_level.txt")
    assert top_level is not None, "the deltarl install records no top_level.txt"
    assert top_level.split() == ["deltarl"]


def test_the_package_configuration_finds_only_deltarl_packages():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(where=str(ROOT), include=config["include"])
    assert {"deltarl", "deltarl.rl", "deltarl.rollout", "deltarl.model", "deltarl.kernels",
            "deltarl.rewards"} <= set(packages)
    assert {name.split(".")[0] for name in packages} == {"deltarl"}


def test_no_top_level_folder_of_the_repository_is_an_importable_package_but_deltarl():
    """tests/ and benchmarks/ are run as files, never installed; no other folder may be a package."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= {"deltarl", "tests", "benchmarks"}, packages


def run_from_the_repository_root(code: str) -> subprocess.CompletedProcess:
    """`python -c code` with the repository root first on sys.path, as pytest and run_rl.py have it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_hugging_face_kernels_is_not_shadowed_and_a_checkpoint_loads_through_the_auto_classes():
    code = f"""
import importlib
import transformers.integrations.hub_kernels  # imports Hugging Face's kernels package
from transformers import AutoModelForCausalLM
import deltarl.model  # registers kimi_linear with the Auto classes
print(importlib.import_module("kernels").__file__)
model = AutoModelForCausalLM.from_pretrained({str(CHECKPOINT)!r})
print(type(model).__name__, sum(p.numel() for p in model.parameters()))
"""
    proc = run_from_the_repository_root(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels_file, loaded = proc.stdout.split("\n")[:2]
    assert "site-packages" in kernels_file and not kernels_file.startswith(str(ROOT / "deltarl")), kernels_file
    assert loaded.split()[0] == "KimiLinearForCausalLM" and int(loaded.split()[1]) > 0


def test_a_users_own_model_and_rewards_modules_are_not_shadowed(tmp_path):
    (tmp_path / "model.py").write_text("WHO = 'user model'\n")
    (tmp_path / "rewards.py").write_text("WHO = 'user rewards'\n")
    code = "import deltarl.rl, model, rewards; print(model.WHO, '|', rewards.WHO)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "user model | user rewards"
