"""Built-in math word problems with GSM8K-style answers, checked by the `math` reward (math-verify).

Each row is one short problem of a kind, its gold answer in one canonical form, and a reference
response that boxes the answer in one of several forms that math-verify holds equal to the gold:

  integer   "Ann has 7 pens and gets 5 more. How many pens now?"        "12"     \\boxed{12}
  product   "Bo buys 4 bags of 6 cards. How many cards?"                 "24"     \\boxed{24}
  fraction  "Cy eats 3 of the 12 slices of a pie. What part is eaten?"   "1/4"    \\frac{1}{4}, 1/4, 3/12, 0.25
  decimal   "Di walks 3.5 km, then 4 km. How many km in all?"            "7.5"    7.5, 7.5\\text{ km}
  percent   "3 of the 4 cups are red. What percent are red?"             "75\\%"  75\\%, 0.75
  units     "A rope is 3 m long. How long is it in cm?"                  "300 cm" 300\\text{ cm}, 300

So a response may say 1/4, 0.25 or \\frac14 and be right (the `math` reward extracts the last
\\boxed{} and compares with math-verify). Numbers are 2..(5 x difficulty + 4); percents use parts of
2, 4, 5, 10, 20, 25 or 50. Rows are deterministic in (seed, difficulty, kinds), and the first k
rows of n >= k are the same. `solution` is the reference response (the warm-up's SFT target).
"""
from __future__ import annotations

import random
from fractions import Fraction

NAMES = ("Ann", "Bo", "Cy", "Di", "Ed", "Flo")
THINGS = ("pens", "cards", "cups", "books", "eggs", "toys")
KINDS = ("integer", "product", "fraction", "decimal", "percent", "units")
PERCENT_WHOLES = (2, 4, 5, 10, 20, 25, 50)


def _terminates(x: Fraction) -> bool:
    """A fraction whose decimal form is finite (denominator 2^i 5^j)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _decimal(x: Fraction) -> str:
    """A terminating fraction as a decimal string without trailing zeros: 1/4 -> "0.25"."""
    return f"{float(x):.6f}".rstrip("0").rstrip(".")


def _problem(kind: str, rng: random.Random, top: int) -> tuple[str, str, list[str]]:
    """(question, gold answer, equivalent boxed forms) of one problem of `kind`."""
    name, things = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, top), rng.randint(2, top)
    if kind == "integer":
        return (f"{name} has {a} {things} and gets {b} more. How many {things} now?", str(a + b),
                [str(a + b)])
    if kind == "product":
        return f"{name} buys {a} bags of {b} {things}. How many {things}?", str(a * b), [str(a * b)]
    if kind == "fraction":
        part, whole = a, b + top                                  # part < whole
        x = Fraction(part, whole)
        forms = [f"\\frac{{{x.numerator}}}{{{x.denominator}}}", f"{x.numerator}/{x.denominator}",
                 f"{part}/{whole}"]
        forms += [_decimal(x)] if _terminates(x) else []
        return (f"{name} eats {part} of the {whole} slices of a pie. What part is eaten?",
                f"{x.numerator}/{x.denominator}", forms)
    if kind == "decimal":
        tenth = rng.randint(1, 9)
        x = Fraction(10 * a + tenth, 10) + b
        return (f"{name} walks {a}.{tenth} km, then {b} km. How many km in all?", _decimal(x),
                [_decimal(x), f"{_decimal(x)}\\text{{ km}}"])
    if kind == "percent":
        whole = rng.choice(PERCENT_WHOLES)
        part = rng.randint(1, whole - 1)
        p = Fraction(100 * part, whole)
        return (f"{part} of the {whole} {things} are red. What percent are red?", f"{_decimal(p)}\\%",
                [f"{_decimal(p)}\\%", _decimal(p / 100)])
    if kind == "units":
        return f"A rope is {a} m long. How long is it in cm?", f"{100 * a} cm", \
            [f"{100 * a}\\text{{ cm}}", str(100 * a)]
    raise ValueError(f"unknown kind {kind!r}; choose from {list(KINDS)}")


def math_word(n: int, seed: int = 0, difficulty: int = 1, *, kinds: list[str] | tuple[str, ...] = KINDS,
              template: str = "{question}\n") -> list[dict]:
    """n rows {"prompt", "answer" (gold), "solution" ("\\boxed{...}"), "kind", ...}."""
    unknown = [k for k in kinds if k not in KINDS]
    if difficulty < 1 or not kinds or unknown:
        raise ValueError(f"need difficulty >= 1 and kinds from {list(KINDS)} (got {list(kinds)})")
    rng = random.Random(f"math_word:{seed}:{difficulty}:{','.join(kinds)}")
    top = 5 * difficulty + 4
    rows = []
    for _ in range(n):
        kind = rng.choice(list(kinds))
        question, answer, forms = _problem(kind, rng, top)
        rows.append({"prompt": template.format(question=question), "answer": answer,
                     "solution": f"\\boxed{{{rng.choice(forms)}}}", "kind": kind, "task": "math_word",
                     "difficulty": difficulty})
    return rows
