"""Built-in synthetic tasks: deterministic, exact answers, difficulty knobs, and their rewards."""
import ast

import pytest

from deltarl.rewards import compute_rewards
from deltarl.rl.data import make_task


def test_arithmetic_rows_are_exact_and_deterministic():
    rows = make_task("arithmetic", 200, seed=3, difficulty=3, operands=3, ops="+-*")
    assert rows == make_task("arithmetic", 200, seed=3, difficulty=3, operands=3, ops="+-*")
    assert rows[:10] == make_task("arithmetic", 10, seed=3, difficulty=3, operands=3, ops="+-*")
    assert rows != make_task("arithmetic", 200, seed=4, difficulty=3, operands=3, ops="+-*")
    for row in rows:
        expr = row["prompt"].removesuffix("=")
        assert row["prompt"].endswith("=")
        # the answer is what Python computes for the same expression (ast, literal ints only)
        tree = ast.parse(expr, mode="eval")
        assert all(isinstance(n, (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub,
                                  ast.Mult)) for n in ast.walk(tree))
        assert int(row["answer"]) == eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}})
        assert all(len(tok) <= 3 for tok in expr.replace("-", "+").replace("*", "+").split("+"))


def test_arithmetic_difficulty_knob_and_prompt_size():
    easy = make_task("arithmetic", 50, seed=0, difficulty=1)
    hard = make_task("arithmetic", 50, seed=0, difficulty=4)
    assert max(len(r["prompt"]) for r in easy) <= 4  # "9+9="
    assert max(len(r["prompt"]) for r in hard) <= 10
    assert sum(len(r["answer"]) for r in hard) > sum(len(r["answer"]) for r in easy)
    assert make_task("arithmetic", 1, template="Q: {expr}? A:")[0]["prompt"].startswith("Q: ")
    with pytest.raises(ValueError):
        make_task("arithmetic", 1, ops="/")


def test_countdown_rows_are_solvable_and_solutions_verify():
    for difficulty in (1, 2, 3):
        rows = make_task("countdown", 40, seed=7, difficulty=difficulty)
        assert rows == make_task("countdown", 40, seed=7, difficulty=difficulty)
        for row in rows:
            assert len(row["numbers"]) == difficulty + 2
            assert max(row["numbers"]) <= 10 * difficulty
            assert 1 <= row["target"] <= 10 * (difficulty + 1) ** 2
            assert row["prompt"] == f"make {row['target']} from " + \
                " ".join(map(str, row["numbers"])) + ":"
        batch = compute_rewards([r["prompt"] for r in rows], [r["answer"] for r in rows], rows,
                                ["countdown"])
        assert batch.parts["countdown"] == [1.0] * len(rows)  # every stored solution is right
        wrong = compute_rewards([r["prompt"] for r in rows], ["1+1"] * len(rows), rows,
                                ["countdown"])
        assert sum(wrong.parts["countdown"]) == 0.0


def test_arithmetic_rows_verify_with_their_reward():
    rows = make_task("arithmetic", 30, seed=1, difficulty=2, ops="+-")
    right = compute_rewards([r["prompt"] for r in rows], [r["answer"] for r in rows], rows,
                            ["arithmetic"])
    off_by_one = compute_rewards([r["prompt"] for r in rows],
                                 [str(int(r["answer"]) + 1) for r in rows], rows, ["arithmetic"])
    assert right.parts["arithmetic"] == [1.0] * 30
    assert off_by_one.parts["arithmetic"] == [0.0] * 30


def test_countdown_options_and_unknown_task():
    rows = make_task("countdown", 5, seed=0, count=4, max_number=50, max_target=500)
    assert all(len(r["numbers"]) == 4 and max(r["numbers"]) <= 50 and r["target"] <= 500
               for r in rows)
    with pytest.raises(ValueError):
        make_task("sudoku", 1)
