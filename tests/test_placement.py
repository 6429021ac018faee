"""Placement: the bundles `plan_placement` sizes from the config, the actors `start_actors` puts in them on a
local Ray with fake GPUs (colocated: engine i and learner rank i on one bundle's GPU; split: a GPU each;
learner ranks given a fake GPU stay on the CPU and gloo), the error when the cluster is too small, and
the config checks of the learner group's fields."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deltarl.rl.config import ConfigError, load_config
from deltarl.rl.trainer import plan_placement

ROOT = Path(__file__).resolve().parents[1]


def cfg_of(*overrides):
    return load_config(str(ROOT / "configs" / "tiny_cpu.yaml"), list(overrides))


def test_colocated_bundles_pair_engine_i_with_learner_rank_i():
    plan = plan_placement(cfg_of("rollout.num_workers=2", "learner.num_workers=3"), gpus=True)
    assert plan.bundles == [{"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}, {"CPU": 1, "GPU": 1}]
    assert plan.engine_bundles == [0, 1] and plan.learner_bundles == [0, 1, 2]
    assert plan.engine_gpus == [0.5, 0.5] and plan.learner_gpus == [0.5, 0.5, 1]


def test_split_bundles_engines_then_learner_ranks_with_their_gpus():
    plan = plan_placement(cfg_of("ray.placement=split", "rollout.num_workers=2", "learner.num_workers=2",
                                 "learner.gpus_per_worker=2"), gpus=True)
    assert plan.bundles == [{"CPU": 1, "GPU": 1}] * 2 + [{"CPU": 1, "GPU": 2}] * 2
    assert plan.engine_bundles == [0, 1] and plan.learner_bundles == [2, 3]
    assert plan.engine_gpus == [1, 1] and plan.learner_gpus == [2, 2]


def test_split_halves_put_an_engine_and_a_learner_rank_on_one_gpu_at_once():
    """rollout.gpus_per_worker=0.5 learner.gpus_per_worker=0.5 (configs/countdown_gpu.yaml): two bundles of
    half a GPU each, which Ray packs onto one GPU; the engine does not sleep (no shared bundle)."""
    plan = plan_placement(cfg_of("ray.placement=split", "rollout.gpus_per_worker=0.5",
                                 "learner.gpus_per_worker=0.5"), gpus=True)
    assert plan.bundles == [{"CPU": 1, "GPU": 0.5}, {"CPU": 1, "GPU": 0.5}]
    assert plan.engine_gpus == [0.5] and plan.learner_gpus == [0.5]


def test_cpu_bundles_ask_for_no_gpu():
    plan = plan_placement(cfg_of("learner.num_workers=2"), gpus=False)
    assert plan.bundles == [{"CPU": 2}, {"CPU": 1}]
    assert plan.engine_gpus == [0] and plan.learner_gpus == [0, 0]


@pytest.mark.parametrize("overrides,field", [
    (["learner.num_workers=2", "learner.backend=torch"], "learner.num_workers"),
    (["learner.num_workers=0"], "learner.num_workers"),
    (["learner.gpus_per_worker=-1"], "learner.gpus_per_worker"),
    (["learner.gpus_per_worker=2"], "learner.gpus_per_worker"),           # colocated shares one GPU
    (["rollout.num_workers=3", "learner.num_workers=2"], "rollout.num_workers"),
    (["ray.placement_strategy=pack"], "ray.placement_strategy"),
    (["ray.placement_timeout_s=0"], "ray.placement_timeout_s"),
])
def test_bad_group_fields_are_named(overrides, field):
    with pytest.raises(ConfigError) as error:
        cfg_of(*overrides)
    print(error.value)
    assert str(error.value).startswith(f"{field}:")
    if field == "ray.placement_strategy":
        assert "'PACK', 'STRICT_PACK', 'SPREAD', 'STRICT_SPREAD'" in str(error.value)


# Run in a subprocess: its own local Ray with 8 CPUs and 4 fake GPUs, apart from other tests' Ray.
PROBE = r'''
import json, sys
import ray
from ray._raylet import PlacementGroupID
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
from deltarl.rl.config import load_config
from deltarl.rl.trainer import start_actors

ray.init(address="local", num_cpus=8, num_gpus=4, include_dashboard=False, log_to_driver=False)
out = {}
for name, overrides in [("colocated", ["rollout.num_workers=2", "learner.num_workers=2"]),
                        ("split", ["ray.placement=split", "rollout.num_workers=2", "learner.num_workers=2"])]:
    cfg = load_config("configs/tiny_cpu.yaml", overrides + ["learner.threads=1"])
    path = cfg.model.path
    rollouts, group, shared, _, _ = start_actors(cfg, path, path, 1)
    engine_gpus = ray.get([w.__ray_call__.remote(lambda self: [str(g) for g in ray.get_gpu_ids()]) for w in rollouts])
    tables = list(placement_group_table().values())
    out[name] = {"engines": engine_gpus, "learners": group.ranks, "shared": shared,
                 "bundles": [t["bundles"] for t in tables if t["state"] == "CREATED"],
                 "strategy": [t["strategy"] for t in tables if t["state"] == "CREATED"]}
    group.kill()
    for w in rollouts:
        ray.kill(w)
    for t in tables:
        if t["state"] == "CREATED":
            remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(t["placement_group_id"])))
cfg = load_config("configs/tiny_cpu.yaml", ["ray.placement=split", "rollout.num_workers=2", "learner.num_workers=4",
                                            "ray.placement_timeout_s=3"])
try:
    start_actors(cfg, cfg.model.path, cfg.model.path, 1)
    out["short"] = None
except RuntimeError as error:
    out["short"] = str(error)
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
def test_actors_land_on_their_bundles_and_a_short_cluster_is_named():
    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as tmp:
        proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**__import__("os").environ, "RAY_TMPDIR": tmp})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(json.dumps(out, indent=1))

    colocated, split = out["colocated"], out["split"]
    assert colocated["bundles"] == [{"0": {"CPU": 2.0, "GPU": 1.0}, "1": {"CPU": 2.0, "GPU": 1.0}}]
    assert colocated["strategy"] == ["PACK"]
    # engine i and learner rank i share bundle i's GPU; the pairs are on different GPUs
    learner_gpus = [r["gpu_ids"] for r in colocated["learners"]]
    assert colocated["engines"] == learner_gpus and len({g[0] for g in learner_gpus}) == 2
    assert colocated["shared"] is True                 # the cluster has (fake) GPUs: engines sleep beside ranks

    assert split["bundles"] == [{str(i): {"CPU": 1.0, "GPU": 1.0} for i in range(4)}]
    gpus = [g[0] for g in split["engines"]] + [r["gpu_ids"][0] for r in split["learners"]]
    assert sorted(gpus) == ["0", "1", "2", "3"]         # a GPU each
    for rank in colocated["learners"] + split["learners"]:
        # a fake GPU assigned, but no CUDA here: the policy stays on the CPU and the group on gloo
        assert rank["device"] == "cpu" and rank["dist"] == "gloo" and rank["backend"] == "deepspeed"

    short = out["short"]
    for text in ("ray.placement_timeout_s=3", "6 GPU", "4 GPU", "ray.cluster_resources()", "learner.num_workers=4",
                 "rollout.num_workers=2", "learner.gpus_per_worker", "ray.placement=split", "ray.placement_strategy=PACK"):
        assert text in short, text
