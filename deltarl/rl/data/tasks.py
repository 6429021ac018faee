"""Built-in synthetic tasks with exact answers, for demos, tests and tiny-model RL on a CPU.

Prompts are short (a character-level tokenizer is fine) and the expected answer has one fixed
form, which the matching reward in rewards.synthetic reads:

  arithmetic   "12+345="              -> "357"       reward "arithmetic" (field: answer)
  countdown    "make 46 from 3 7 25:" -> "25+3*7"    reward "countdown" (fields: numbers,
               target; any expression using each number once is right, `answer` is one of them)
  math_word    "Bo buys 4 bags of 6 cards. ..."  -> "\\boxed{24}"   reward "math" (field: answer; see
               rl.data.math_word: integers, fractions, decimals, percents, units)
  code_io      "Read a and b. Print a minus b."  -> a program  reward "code" (field: tests; see
               rl.data.code_io: hidden stdin/stdout tests run in the sandbox)

Difficulty: arithmetic operands have up to `difficulty` digits (`operands`, default 2, sets how
many; `ops` which of + - *); Countdown uses `difficulty + 2` numbers up to 10 x difficulty and
targets up to 10 x (difficulty + 1)^2 (`count`, `max_number`, `max_target` override). Rows are
deterministic in (seed, difficulty, options), and the first k rows of n >= k are the same.
"""
from __future__ import annotations

import random

from .code_io import code_io
from .math_word import math_word


def _eval_left_to_right_with_precedence(numbers: list[int], ops: list[str]) -> int:
    """Value of n0 op0 n1 op1 ... with * before + and -."""
    terms, current = [], numbers[0]
    for op, x in zip(ops, numbers[1:]):
        if op == "*":
            current *= x
        else:
            terms.append(current)
            current = x if op == "+" else -x
    return sum(terms) + current


def arithmetic(n: int, seed: int = 0, difficulty: int = 1, *, operands: int = 2, ops: str = "+",
               template: str = "{expr}=") -> list[dict]:
    """n rows {"prompt": "12+345=", "answer": "357", ...}; operands below 10**difficulty."""
    if difficulty < 1 or operands < 2 or not ops or set(ops) - set("+-*"):
        raise ValueError("need difficulty >= 1, operands >= 2 and ops from '+-*'")
    rng = random.Random(f"arithmetic:{seed}:{difficulty}:{operands}:{ops}")
    rows = []
    for _ in range(n):
        numbers = [rng.randrange(10 ** difficulty) for _ in range(operands)]
        chosen = [rng.choice(ops) for _ in range(operands - 1)]
        expr = str(numbers[0]) + "".join(op + str(x) for op, x in zip(chosen, numbers[1:]))
        rows.append({"prompt": template.format(expr=expr),
                     "answer": str(_eval_left_to_right_with_precedence(numbers, chosen)),
                     "task": "arithmetic", "difficulty": difficulty})
    return rows


# (value, text, precedence): 3 a number, 2 a product/quotient, 1 a sum/difference
def _combine(a, b, op):
    (va, ta, pa), (vb, tb, pb) = a, b
    if op == "+":
        return va + vb, f"{ta}+{tb}", 1
    if op == "-":
        return va - vb, f"{ta}-{f'({tb})' if pb == 1 else tb}", 1
    left = f"({ta})" if pa == 1 else ta
    if op == "*":
        return va * vb, f"{left}*{f'({tb})' if pb == 1 else tb}", 2
    return va // vb, f"{left}/{f'({tb})' if pb <= 2 else tb}", 2


def _valid(a: int, b: int, op: str, cap: int) -> bool:
    if op == "-":
        return a > b
    if op == "/":
        return b > 1 and a % b == 0
    if op == "*":
        return a * b <= cap and a > 1 and b > 1
    return True


def _random_expression(rng: random.Random, numbers: list[int], cap: int):
    """(value, text) of a random expression using every number once (random pairs merged by a random
    valid operator), or None when a merge has no valid operator."""
    items = [(x, str(x), 3) for x in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        ops = [op for op in rng.sample("+-*/", 4) if _valid(items[i][0], items[j][0], op, cap)]
        if not ops:
            return None
        merged = _combine(items[i], items[j], ops[0])
        items = [it for k, it in enumerate(items) if k not in (i, j)] + [merged]
    return items[0][0], items[0][1]


def _countdown_one(rng: random.Random, count: int, max_number: int, max_target: int):
    for _ in range(1000):
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        found = _random_expression(rng, numbers, 10 * max_target)
        if found and 1 <= found[0] <= max_target:
            return numbers, found[0], found[1]
    raise RuntimeError(f"no Countdown puzzle found for count={count}, max_number={max_number}, "
                       f"max_target={max_target}")


def search_trace(rng: random.Random, numbers: list[int], target: int, answer: str, attempts: int, cap: int) -> str:
    """A worked search: up to `attempts` random expressions of all the numbers, one "expr=value" line
    each, stopping at the first that makes `target` (else `answer`'s line closes it), then the
    expression found on the last line (what the countdown reward reads). Lengths vary from puzzle to
    puzzle, as reasoning does."""
    lines = []
    for _ in range(attempts):
        found = _random_expression(rng, numbers, cap)
        if found is None:
            continue
        lines.append(f"{found[1]}={found[0]}")
        if found[0] == target:
            return "\n".join(lines) + "\n" + found[1]
    return "\n".join(lines + [f"{answer}={target}", answer])


def countdown(n: int, seed: int = 0, difficulty: int = 1, *, count: int | None = None,
              max_number: int | None = None, max_target: int | None = None,
              template: str = "make {target} from {numbers}:", trace: int = 0) -> list[dict]:
    """n solvable puzzles {"prompt", "numbers", "target", "answer": one solution}. `trace` > 0 adds a
    "solution" (the warm-up's target): a `search_trace` of up to `trace` attempts."""
    if difficulty < 1:
        raise ValueError("difficulty >= 1")
    count = count or difficulty + 2
    max_number = max_number or 10 * difficulty
    max_target = max_target or 10 * (difficulty + 1) ** 2
    rng = random.Random(f"countdown:{seed}:{difficulty}:{count}:{max_number}:{max_target}")
    rows = []
    for i in range(n):
        numbers, target, expr = _countdown_one(rng, count, max_number, max_target)
        rows.append({"prompt": template.format(target=target, numbers=" ".join(map(str, numbers))),
                     "answer": expr, "numbers": numbers, "target": target, "task": "countdown",
                     "difficulty": difficulty})
        if trace:       # its own generator per row: the puzzles stay those without traces
            trace_rng = random.Random(f"countdown-trace:{seed}:{difficulty}:{i}")
            rows[-1]["solution"] = search_trace(trace_rng, numbers, target, expr, trace, 10 * max_target)
    return rows


TASKS = {"arithmetic": arithmetic, "countdown": countdown, "math_word": math_word, "code_io": code_io}


def make_task(name: str, n: int, seed: int = 0, difficulty: int = 1, **options) -> list[dict]:
    """Rows of the built-in task `name` (a key of TASKS)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](n, seed=seed, difficulty=difficulty, **options)
