"""Exact checkers for the built-in synthetic tasks (rl.data.tasks): arithmetic and Countdown.

Both read the answer the way the task prompts ask for it, and parse expressions with `ast`
restricted to numbers, + - * / and parentheses (never eval).
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from .math import extract_boxed

_INT = re.compile(r"-?\d+")


def arithmetic_answer(response: str) -> str | None:
    """The integer a response gives: inside \\boxed{} if any, else after the last "=", else the
    first integer ("357", "12+345=357", "The answer is 357." all give "357")."""
    text = extract_boxed(response) or response
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    m = _INT.search(text)
    return m.group(0) if m else None


def arithmetic_reward(prompt: str, response: str, answer, *, partial: bool = False, **_) -> float:
    """1.0 if the response's integer equals `answer`. With `partial`, a wrong answer of the
    right length earns 0.5 x the fraction of digits in the right place (a denser signal for
    tiny models learning from scratch)."""
    got, want = arithmetic_answer(response), str(answer).strip()
    if got is None:
        return 0.0
    if int(got) == int(want):
        return 1.0
    if partial and len(got) == len(want):
        return 0.5 * sum(a == b for a, b in zip(got, want)) / len(want)
    return 0.0


class _NotArithmetic(ValueError):
    pass


def _evaluate(node) -> tuple[Fraction, list[int]]:
    """Value and numbers used of an expression of ints, + - * / and parentheses."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        (a, na), (b, nb) = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            value = a + b
        elif isinstance(node.op, ast.Sub):
            value = a - b
        elif isinstance(node.op, ast.Mult):
            value = a * b
        elif b == 0:
            raise _NotArithmetic("division by zero")
        else:
            value = a / b
        return value, na + nb
    raise _NotArithmetic(f"not allowed: {type(node).__name__}")


_RUN = re.compile(r"-?[\d(][\d\s+\-*/()]*[\d)]|\d")  # arithmetic text between words


def countdown_expression(response: str) -> str | None:
    """The expression a Countdown response proposes: inside the last <answer>...</answer> if
    any, else on the last non-empty line; the last run of arithmetic there with an operator
    ("then 25+3*7" and "25+3*7 = 46" give "25+3*7")."""
    tags = re.findall(r"<answer>(.*?)</answer>", response, re.S)
    lines = [ln for ln in (tags[-1] if tags else response).strip().splitlines() if ln.strip()]
    if not lines:
        return None
    runs = [r.strip() for side in lines[-1].split("=") for r in _RUN.findall(side)]
    with_op = [r for r in runs if re.search(r"\d\s*[-+*/]\s*[\d(]", r)]
    return (with_op or runs or [None])[-1]


def countdown_reward(prompt: str, response: str, numbers, target, *, use_all: bool = True,
                     format_score: float = 0.0, **_) -> float:
    """1.0 if the proposed expression equals `target` using each of `numbers` at most once
    (exactly once with `use_all`); `format_score` for a well-formed but wrong expression."""
    expr = countdown_expression(response)
    if expr is None or len(expr) > 200 or not re.fullmatch(r"[\d\s+\-*/()]+", expr):
        return 0.0
    try:
        value, used = _evaluate(ast.parse(expr, mode="eval"))
    except (SyntaxError, _NotArithmetic, RecursionError, ValueError):
        return 0.0
    have, want = Counter(used), Counter(int(x) for x in numbers)
    numbers_ok = have == want if use_all else not (have - want)
    return 1.0 if numbers_ok and value == int(target) else format_score
