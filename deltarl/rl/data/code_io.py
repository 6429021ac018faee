"""Built-in programming problems small enough for a tiny character-level model, checked in the sandbox.

Every problem is "read two integers a and b from one line of stdin, print f(a, b)" for f in a family
built from a base and an optional constant step, described in words:

  "Read a and b. Print the sum of a and b plus 3."
  -> ```python
     a,b=map(int,input().split())
     print(a+b+3)
     ```

Bases: the sum, difference, product, larger, smaller of a and b, and their distance |a - b|;
steps: none, "plus c", "minus c", "times c" with c in 2..20 (difficulty 2 adds ", then squared");
at difficulty 1 that is 6 x (1 + 3 x 19) = 348 distinct problems. Each row holds hidden
stdin/stdout tests (`tests_per_problem` random pairs in -20..20, the `code` reward's {"inputs",
"outputs"} format) and `solution`, a reference response (the warm-up's SFT target). Rows are deterministic in (seed, difficulty, options), and the first k
rows of n >= k are the same.
"""
from __future__ import annotations

import random

READ = "a,b=map(int,input().split())"
# (words, Python expression, whether it needs parentheses before "*" or "**", its value)
BASES = (
    ("the sum of a and b", "a+b", True, lambda a, b: a + b),
    ("a minus b", "a-b", True, lambda a, b: a - b),
    ("the product of a and b", "a*b", False, lambda a, b: a * b),
    ("the larger of a and b", "max(a,b)", False, max),
    ("the smaller of a and b", "min(a,b)", False, min),
    ("the distance between a and b", "abs(a-b)", False, lambda a, b: abs(a - b)),
)
STEPS = {"": lambda x, c: x, "plus": lambda x, c: x + c, "minus": lambda x, c: x - c,
         "times": lambda x, c: x * c}
MAX_CONSTANT = 20


def expression(base: int, step: str, c: int, squared: bool = False) -> str:
    """The Python expression of f(a, b) for base index `base`, `step` and constant `c`."""
    _, expr, loose, _ = BASES[base]
    if step == "plus":
        expr, loose = f"{expr}+{c}", True
    elif step == "minus":
        expr, loose = f"{expr}-{c}", True
    elif step == "times":
        expr, loose = f"({expr})*{c}" if loose else f"{expr}*{c}", False
    if squared:
        expr = f"({expr})**2" if loose or "*" in expr else f"{expr}**2"
    return expr


def describe(base: int, step: str, c: int, squared: bool = False) -> str:
    """The words of f(a, b): "the sum of a and b plus 3"."""
    words = BASES[base][0] + (f" {step} {c}" if step else "")
    return words + (", then squared" if squared else "")


def value(base: int, step: str, c: int, squared: bool, a: int, b: int) -> int:
    """f(a, b), computed apart from the expression text (so a test checks the text too)."""
    x = STEPS[step](BASES[base][3](a, b), c)
    return x * x if squared else x


def make_tests(f, rng: random.Random, count: int) -> dict:
    """Hidden stdin/stdout cases: `count` random pairs in -20..20 and f(a, b) on each."""
    pairs = [(rng.randint(-20, 20), rng.randint(-20, 20)) for _ in range(count)]
    values = [f(a, b) for a, b in pairs]
    return {"inputs": [f"{a} {b}\n" for a, b in pairs], "outputs": [f"{v}\n" for v in values]}


def solution(expr: str) -> str:
    """The reference response: one fenced Python program."""
    return f"```python\n{READ}\nprint({expr})\n```"


def code_io(n: int, seed: int = 0, difficulty: int = 1, *, tests_per_problem: int = 3,
            template: str = "Read a and b. Print {words}.\n") -> list[dict]:
    """n rows {"prompt", "tests", "solution", "answer" (the expression), "task", "difficulty"}."""
    if difficulty < 1 or tests_per_problem < 1:
        raise ValueError("need difficulty >= 1 and tests_per_problem >= 1")
    rng = random.Random(f"code_io:{seed}:{difficulty}:{tests_per_problem}")
    rows = []
    for _ in range(n):
        base, step, c = rng.randrange(len(BASES)), rng.choice(list(STEPS)), rng.randint(2, MAX_CONSTANT)
        squared = difficulty >= 2 and rng.random() < 0.5
        expr = expression(base, step, c, squared)
        f = lambda a, b: value(base, step, c, squared, a, b)   # noqa: E731
        rows.append({"prompt": template.format(words=describe(base, step, c, squared)),
                     "tests": make_tests(f, rng, tests_per_problem), "solution": solution(expr),
                     "answer": expr, "task": "code_io", "difficulty": difficulty})
    return rows
