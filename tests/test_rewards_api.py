"""Reward API: loading by name, weights and parts, and failure accounting (raise, hang, junk)."""
import asyncio
import math
import textwrap
import time

import numpy as np
import pytest

from deltarl.rewards import (BUILTINS, RewardSpec, RewardTimeout, batched, compute_rewards,
                     load_reward_fn)
from deltarl.rewards.synthetic import arithmetic_reward


@pytest.fixture()
def plugin_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent("""
        def length_bonus(prompt, response, **fields):
            return min(len(response), 10) / 10

        def with_parts(prompt, response, answer):
            ok = float(response.strip() == answer)
            return {"score": ok, "length": len(response)}

        def c_level_hang(prompt, response, **fields):
            return sum(range(10 ** 13))  # one C call: no signal handler can interrupt it
    """))
    return path


def test_load_by_builtin_module_and_file(plugin_file):
    assert load_reward_fn("arithmetic") is arithmetic_reward
    assert load_reward_fn("deltarl.rewards.synthetic:arithmetic_reward") is arithmetic_reward
    fn = load_reward_fn(f"{plugin_file}:length_bonus")
    assert fn("p", "abcde") == 0.5
    assert load_reward_fn(f"{plugin_file}:length_bonus") is fn  # the file is loaded once
    for name in BUILTINS:
        assert callable(load_reward_fn(name))
    with pytest.raises(ValueError):
        load_reward_fn("no_colon_here")
    with pytest.raises(AttributeError):
        load_reward_fn(f"{plugin_file}:missing")
    with pytest.raises(FileNotFoundError):
        load_reward_fn("nowhere/none.py:f")


def test_spec_from_config():
    spec = RewardSpec.from_config({"fn": "code", "weight": 0.5, "timeout": 30, "mode": "all"})
    assert (spec.name, spec.weight, spec.timeout_s, spec.kwargs) == ("code", 0.5, 30.0,
                                                                     {"mode": "all"})
    assert RewardSpec.from_config("math").name == "math"
    assert RewardSpec.from_config({"fn": "pkg.mod:my_fn"}).name == "my_fn"
    with pytest.raises(ValueError):
        RewardSpec.from_config({"weight": 1.0})


def test_weights_parts_and_extra_parts(plugin_file):
    specs = [RewardSpec("arithmetic", weight=1.0),
             RewardSpec(f"{plugin_file}:length_bonus", weight=0.5),
             RewardSpec(f"{plugin_file}:with_parts", name="exact", weight=2.0)]
    rows = [{"answer": "7", "unused_column": 1}, {"answer": "8", "unused_column": 2}]
    batch = compute_rewards(["3+4=", "4+4="], ["7", "9999999999"], rows, specs)
    assert batch.parts["arithmetic"] == [1.0, 0.0]
    assert batch.parts["length_bonus"] == [0.1, 1.0]
    assert batch.parts["exact"] == [1.0, 0.0]
    assert batch.parts["exact/length"] == [1.0, 10.0]
    assert batch.totals == pytest.approx([1.0 + 0.05 + 2.0, 0.5])
    assert all(v == 0 for v in batch.failures.values())
    totals, parts, failures = batch  # unpacks as a plain triple
    m = batch.metrics()
    assert m["reward/total"] == pytest.approx(sum(totals) / 2) and "reward_fail/exact/error" in m


def test_failures_score_zero_and_are_counted():
    def good(prompt, response, **_):
        return 1.0

    def raises(prompt, response, **_):
        if response == "b":
            raise RuntimeError("boom")
        return 1.0

    def hangs(prompt, response, **_):
        if response == "b":
            time.sleep(30)
        return 1.0

    def junk(prompt, response, **_):
        return {"a": "not a number", "b": float("nan"), "c": {"no": "score"}, "d": "1.0"}[response]

    specs = [RewardSpec(good), RewardSpec(raises), RewardSpec(hangs, timeout_s=0.5),
             RewardSpec(junk)]
    t0 = time.monotonic()
    batch = compute_rewards(["p"] * 4, ["a", "b", "c", "d"], None, specs)
    assert time.monotonic() - t0 < 5
    assert batch.parts["good"] == [1.0] * 4
    assert batch.parts["raises"] == [1.0, 0.0, 1.0, 1.0]
    assert batch.parts["hangs"] == [1.0, 0.0, 1.0, 1.0]
    assert batch.parts["junk"] == [0.0] * 4
    assert batch.failures == {
        "good/error": 0, "good/timeout": 0, "good/bad_return": 0,
        "raises/error": 1, "raises/timeout": 0, "raises/bad_return": 0,
        "hangs/error": 0, "hangs/timeout": 1, "hangs/bad_return": 0,
        "junk/error": 0, "junk/timeout": 0, "junk/bad_return": 4}
    assert batch.totals == [3.0, 1.0, 3.0, 3.0]


def test_numpy_and_bool_returns_are_numbers():
    values = {"a": np.float32(0.25), "b": True, "c": np.array(0.5), "d": np.array([1.0, 2.0])}
    fn = lambda prompt, response: values[response]
    batch = compute_rewards(["p"] * 4, list("abcd"), None, [RewardSpec(fn, name="v")])
    assert batch.parts["v"] == [0.25, 1.0, 0.5, 0.0]
    assert batch.failures["v/bad_return"] == 1


def test_reward_timeout_raised_by_function_counts_as_timeout():
    def gives_up(prompt, response):
        raise RewardTimeout("too slow")

    batch = compute_rewards(["p"], ["r"], None, [RewardSpec(gives_up)])
    assert batch.failures["gives_up/timeout"] == 1 and batch.parts["gives_up"] == [0.0]


def test_fields_are_filtered_to_the_signature():
    seen = []

    def only_answer(prompt, response, answer):
        seen.append(answer)
        return 1.0

    batch = compute_rewards(["p"], ["r"], [{"answer": "x", "tests": "{}", "level": 3}],
                            [RewardSpec(only_answer)])
    assert batch.parts["only_answer"] == [1.0] and seen == ["x"]


def test_spec_kwargs_reach_the_function_and_win_over_row_fields():
    def scaled(prompt, response, scale=1.0):
        return scale

    batch = compute_rewards(["p"], ["r"], [{"scale": 5.0}], [RewardSpec(scaled, kwargs={"scale": 2.0})])
    assert batch.parts["scaled"] == [2.0]


def test_async_functions_run_concurrently_with_timeouts():
    async def slow_ok(prompt, response, **_):
        await asyncio.sleep(0.3)
        if response == "hang":
            await asyncio.sleep(30)
        if response == "raise":
            raise ValueError("bad")
        return 1.0

    t0 = time.monotonic()
    batch = compute_rewards(["p"] * 6, ["a", "b", "c", "d", "hang", "raise"], None,
                            [RewardSpec(slow_ok, timeout_s=1.0)], max_workers=8)
    elapsed = time.monotonic() - t0
    assert batch.parts["slow_ok"] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert batch.failures["slow_ok/timeout"] == 1 and batch.failures["slow_ok/error"] == 1
    assert elapsed < 3.0  # concurrent: not 6 x 0.3 s plus the hang


def test_batched_functions():
    @batched
    def lengths(prompts, responses, answer):
        return [float(len(r) == len(a)) for r, a in zip(responses, answer)]

    @batched
    def wrong_length(prompts, responses, **columns):
        return [1.0]

    rows = [{"answer": "xx"}, {"answer": "yyy"}]
    batch = compute_rewards(["p", "q"], ["ab", "ab"], rows, [lengths, wrong_length])
    assert batch.parts["lengths"] == [1.0, 0.0]
    assert batch.parts["wrong_length"] == [0.0, 0.0]
    assert batch.failures["wrong_length/bad_return"] == 2


def test_isolated_function_is_killed_at_its_deadline(plugin_file):
    """A hang inside one C call cannot be interrupted in-process; isolated=True kills it."""
    spec = RewardSpec(f"{plugin_file}:c_level_hang", isolated=True, timeout_s=1.0)
    ok = RewardSpec(f"{plugin_file}:with_parts", isolated=True)
    t0 = time.monotonic()
    batch = compute_rewards(["p"], ["42"], [{"answer": "42", "extra": 1}], [spec, ok])
    assert time.monotonic() - t0 < 15
    assert batch.parts["c_level_hang"] == [0.0]
    assert batch.failures["c_level_hang/timeout"] == 1
    assert batch.parts["with_parts"] == [1.0] and batch.parts["with_parts/length"] == [2.0]


def test_length_mismatch_and_duplicate_names_are_errors():
    with pytest.raises(ValueError):
        compute_rewards(["p"], ["a", "b"], None, ["math"])
    with pytest.raises(ValueError):
        compute_rewards(["p"], ["a"], None, ["format", "format"])


def test_totals_are_finite_sum_of_weighted_parts():
    specs = [RewardSpec("format", weight=0.25, kwargs={"style": "number"}),
             RewardSpec("arithmetic", weight=3.0)]
    batch = compute_rewards(["1+1="] * 3, ["2", "3", "two"], [{"answer": "2"}] * 3, specs)
    assert batch.totals == [3.25, 0.25, 0.0]
    assert all(math.isfinite(t) for t in batch.totals)
