"""benchmarks/scaling.py's cells: each GPU count and placement becomes a config that validates and whose
placement plan uses exactly that many GPUs (engine + learner shares), and the efficiency is measured
against the same placement's smallest run."""
from pathlib import Path

import pytest

from benchmarks.scaling import Cell, efficiency, overrides_of, plan_cell
from deltarl.rl.config import load_config
from deltarl.rl.trainer import plan_placement

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("placement", ["colocated", "split"])
@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_a_cell_plans_exactly_its_gpus(placement, gpus):
    cell = plan_cell(placement, gpus, prompts_per_gpu=16, cpu=False)
    cfg = load_config(str(ROOT / "configs" / "scaling_gpu.yaml"), overrides_of(cell, cpu=False))
    plan = plan_placement(cfg, gpus=True)
    used = sum(b.get("GPU", 0) for b in plan.bundles)
    print(placement, gpus, plan.bundles)
    assert used == gpus
    assert cfg.rollout.prompts_per_step == 16 * gpus
    assert len(plan.engine_bundles) == cell.engines and len(plan.learner_bundles) == cell.ranks
    if placement == "split":                                  # engines and ranks never share a bundle
        assert not set(plan.engine_bundles) & set(plan.learner_bundles)


def test_efficiency_is_against_the_same_placements_smallest_run():
    results = {
        "colocated_1gpu": (Cell("colocated", 1, 1, 1, 16), {"samples_per_s": 100.0}),
        "colocated_4gpu": (Cell("colocated", 4, 4, 4, 64), {"samples_per_s": 320.0}),
        "split_2gpu": (Cell("split", 2, 1, 1, 32), {"samples_per_s": 150.0}),
        "split_8gpu": (Cell("split", 8, 4, 4, 128), {"samples_per_s": 600.0}),
    }
    eff = efficiency(results)
    assert eff["colocated_1gpu"] == pytest.approx(1.0) and eff["colocated_4gpu"] == pytest.approx(0.8)
    assert eff["split_2gpu"] == pytest.approx(1.0) and eff["split_8gpu"] == pytest.approx(1.0)
