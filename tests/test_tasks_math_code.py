"""The math_word and code_io tasks: deterministic rows whose reference responses the real rewards score 1.0,
equivalent answer forms accepted, wrong answers and wrong programs rejected; the config's reward-worker fields."""
import pytest

from deltarl.rewards import RewardSpec, code_reward, compute_rewards
from deltarl.rewards.math import check_response
from deltarl.rl.config import ConfigError, load_config
from deltarl.rl.data import make_task
from deltarl.rl.data.code_io import BASES, STEPS, describe, expression, value
from deltarl.rl.data.math_word import KINDS


def test_math_word_rows_are_deterministic_and_cover_every_kind():
    rows = make_task("math_word", 300, seed=5)
    assert rows[:40] == make_task("math_word", 40, seed=5)
    assert rows != make_task("math_word", 300, seed=6)
    assert {r["kind"] for r in rows} == set(KINDS)
    assert all(r["solution"].startswith("\\boxed{") and r["prompt"].endswith("?\n") for r in rows)
    with pytest.raises(ValueError, match="kinds"):
        make_task("math_word", 3, kinds=["geometry"])


def test_every_math_word_solution_is_right_by_math_verify():
    rows = make_task("math_word", 120, seed=1)
    batch = compute_rewards([r["prompt"] for r in rows], [r["solution"] for r in rows], rows,
                            [RewardSpec("math", kwargs={"extract": "boxed"})])
    assert batch.parts["math"] == [1.0] * len(rows), [r for r, s in zip(rows, batch.parts["math"]) if s < 1]
    forms = {r["solution"] for r in rows if r["kind"] == "fraction"}
    assert any("\\frac" in f for f in forms) and any("/" in f for f in forms)      # several forms taught


@pytest.mark.parametrize("gold, right, wrong", [
    ("3/4", ["\\boxed{3/4}", "\\boxed{0.75}", "\\boxed{\\frac34}", "\\boxed{\\frac{6}{8}}", "\\boxed{9/12}"],
     ["\\boxed{4/3}", "\\boxed{0.7}", "\\boxed{3}"]),
    ("75\\%", ["\\boxed{75\\%}", "\\boxed{0.75}", "\\boxed{75}"], ["\\boxed{76\\%}", "\\boxed{7.5}"]),
    ("12.4", ["\\boxed{12.4}", "\\boxed{12.40}", "\\boxed{12.4\\text{ km}}", "\\boxed{\\frac{62}{5}}"],
     ["\\boxed{12}", "\\boxed{124}"]),
    ("300 cm", ["\\boxed{300\\text{ cm}}", "\\boxed{300}"], ["\\boxed{3}", "\\boxed{30\\text{ cm}}"]),
    ("24", ["\\boxed{24}", "\\boxed{24.0}"], ["\\boxed{42}", "\\boxed{2}", "24"]),     # unboxed: not extracted
])
def test_math_answers_in_equivalent_forms_count_and_wrong_ones_do_not(gold, right, wrong):
    for response in right:
        assert check_response(response, gold, ("boxed",))["correct"], response
    for response in wrong:
        assert not check_response(response, gold, ("boxed",))["correct"], response


def test_code_io_expression_and_values_agree_for_the_whole_family():
    for base in range(len(BASES)):
        for step in STEPS:
            for squared in (False, True):
                expr = expression(base, step, 7, squared)
                for a, b in [(3, -5), (-2, 9), (0, 0)]:
                    got = eval(expr, {"max": max, "min": min, "abs": abs}, {"a": a, "b": b})  # noqa: S307
                    assert got == value(base, step, 7, squared, a, b), (describe(base, step, 7, squared), expr)


def test_code_io_solutions_pass_their_hidden_tests_in_the_sandbox():
    rows = make_task("code_io", 12, seed=2)
    assert rows == make_task("code_io", 12, seed=2) and len({r["prompt"] for r in rows}) > 6
    for row in rows:
        assert row["prompt"].startswith("Read a and b. Print ") and len(row["tests"]["inputs"]) == 3
        assert code_reward(row["prompt"], row["solution"], row["tests"], mode="all")["score"] == 1.0


def test_code_io_wrong_programs_fail_fractionally_or_entirely():
    row = next(r for r in make_task("code_io", 50, seed=4) if r["answer"] == "a+b")
    tests = {"inputs": ["1 2\n", "5 5\n", "-3 3\n"], "outputs": ["3\n", "10\n", "0\n"]}
    half_right = "```python\na,b=map(int,input().split())\nprint(a+b if a<5 else 0)\n```"
    assert code_reward(row["prompt"], half_right, tests, mode="fraction")["score"] == pytest.approx(2 / 3)
    assert code_reward(row["prompt"], half_right, tests, mode="all")["score"] == 0.0
    out = code_reward(row["prompt"], "```python\nwhile True: pass\n```", tests, mode="all", timeout_s=1,
                      report_statuses=True)
    assert out["score"] == 0.0 and out["cases_timeout"] == 1.0 and out["cases_not_run"] == 2.0
    assert code_reward(row["prompt"], "no program", tests, report_statuses=True)["no_code"] == 1.0


@pytest.mark.parametrize("name, columns", [("gsm8k_style", {"prompt": "question", "answer": "answer"}),
                                           ("math_style", {"prompt": "problem", "answer": "solution"})])
def test_example_datasets_load_through_the_dataset_path_and_verify(name, columns):
    """The examples/data files users copy: each row's own final answer, boxed, scores 1.0; a wrong one 0."""
    from pathlib import Path

    from deltarl.rewards.math import gold_answer
    from deltarl.rl.data import load_prompt_dataset
    path = Path(__file__).resolve().parents[1] / "examples" / "data" / f"{name}.jsonl"
    rows, report = load_prompt_dataset(path, columns=columns)
    assert report.kept == report.total >= 6
    for row in rows:
        final = gold_answer(row["answer"])
        assert check_response(f"So \\boxed{{{final}}}", row["answer"])["correct"], final
        assert not check_response("So \\boxed{123457}", row["answer"])["correct"]


CONFIG_CASES = [("reward.num_workers=-1", "reward.num_workers: must be >= 0"),
                ("reward.cpus_per_worker=-0.5", "reward.cpus_per_worker: must be >= 0"),
                ("reward.chunk_size=0", "reward.chunk_size: must be >= 1"),
                ("reward.num_worker=2", "did you mean 'reward.num_workers'"),
                ("data.task=math", "data.task: 'math' is not one of"),
                ("data.extra_train=[{size: 0}]", "data.extra_train[0].size: must be >= 1"),
                ("data.extra_train=[{difficulty: 0}]", "data.extra_train[0].difficulty: must be >= 1")]


@pytest.mark.parametrize("override, message", CONFIG_CASES)
def test_reward_worker_and_task_fields_are_checked(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["math_cpu", "code_cpu", "math_gpu", "code_gpu"])
def test_the_task_configs_load(name):
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / f"{name}.yaml", check_files=name.endswith("cpu"))
    assert cfg.reward.num_workers >= 1 and cfg.data.task in ("math_word", "code_io")


def test_extra_train_rows_add_other_options_and_never_a_held_out_prompt():
    from deltarl.rl import warmup
    from deltarl.rl.trainer import load_rows
    overrides = ["data.task=math_word", "data.train_size=300", "data.eval_size=200", "data.eval_seed=1234",
                 "data.extra_train=[{size: 200, difficulty: 6, task_options: {kinds: [units]}}]"]
    train, held_out = load_rows(load_config(None, overrides), tokenizer=None)
    seen = {r["prompt"] for r in held_out}
    units = [r for r in train if r["kind"] == "units"]
    assert units and all(r["difficulty"] == 6 for r in units) and not seen & {r["prompt"] for r in train}
    assert held_out == make_task("math_word", 200, seed=1234)           # the held-out set is unchanged
    args = warmup.parse_args(["--out", "x", "--task", "math_word", "--difficulty", "1", "--extra-train",
                              '{"n": 200, "difficulty": 6, "kinds": ["units"]}'])
    rows = warmup.train_rows(args, 300, exclude=seen)
    assert [r["prompt"] for r in rows if r["kind"] == "units"] and not seen & {r["prompt"] for r in rows}
    assert warmup.rl_config(args, "x", 31)["data.extra_train"] == [
        {"size": 200, "difficulty": 6, "task_options": {"kinds": ["units"]}}]
