"""Math reward: pull the final answer out of a response, compare it to the gold with math-verify.

Extraction is ours and explicit, so a configuration says which answer counts:
  "boxed"        the last \\boxed{...} (or \\fbox{...}), braces balanced;
  "answer"       the last "Answer: ...", "final answer is ...", or GSM8K "#### ..." line;
  "last_number"  the last number in the text (1,234.5, -3, 3/4).
`extract` is an order of these; the first that finds something wins (default: all three).

Equivalence is math-verify's (sympy): 0.5 = \\frac12 = 1/2, 50\\% = 50 = 0.5, {1,2} = {2,1},
intervals, x = 5 against 5, thousands separators, units in \\text{}. math-verify's own timeouts
use signal.alarm, which raises in any thread but the main one; so by default every check runs
in a worker process (rewards.pool) with a hard deadline, and math-verify's alarm is used there
only as a soft limit inside the worker's main thread.
"""
from __future__ import annotations

import os
import re
import threading

from .api import RewardTimeout
from .pool import WorkerPool, WorkerTimeout

DEFAULT_EXTRACT = ("boxed", "answer", "last_number")

# --- extraction ---------------------------------------------------------------------------------


def _balanced(text: str, open_at: int) -> str | None:
    """Contents of the brace group whose "{" is at `open_at`, or None if it never closes."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1: i]
    return None


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*(\{|\s+)")


def extract_boxed(text: str) -> str | None:
    """The last \\boxed{...} / \\fbox{...} content (also `\\boxed 5`), or None."""
    for m in reversed(list(_BOXED.finditer(text))):
        if m.group(1) == "{":
            inner = _balanced(text, m.end() - 1)
            if inner is not None:
                return inner.strip()
        else:  # "\boxed 5": up to the next whitespace or $
            rest = re.match(r"[^\s$]+", text[m.end():])
            if rest:
                return rest.group(0)
    return None


_ANSWER_LINE = re.compile(
    r"(?:####|(?:final\s+answer|answer)\s*(?:is|:|=)|the\s+answer\s+is)\s*:?\s*(.+)",
    re.IGNORECASE)


def extract_answer_line(text: str) -> str | None:
    """The rest of the line after the last "Answer:", "final answer is" or "####" marker."""
    found = None
    for line in text.splitlines():
        for m in _ANSWER_LINE.finditer(line.replace("**", "")):
            found = m.group(1)
    return found.strip() if found and found.strip() else None


_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+/\d+|-?\d+(?:\.\d+)?|-?\.\d+")


def extract_last_number(text: str) -> str | None:
    """The last number in the text (thousands commas dropped), or None."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


EXTRACTORS = {"boxed": extract_boxed, "answer": extract_answer_line,
              "last_number": extract_last_number}


def _extract_order(extract) -> tuple[str, ...]:
    order = DEFAULT_EXTRACT if extract in (None, "auto") else \
        (extract,) if isinstance(extract, str) else tuple(extract)
    unknown = [e for e in order if e not in EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown extraction {unknown}; choose from {sorted(EXTRACTORS)}")
    return order


def extract_answer(text: str, extract=DEFAULT_EXTRACT) -> str | None:
    """The answer span of `text` by the first extractor in `extract` that finds one."""
    for name in _extract_order(extract):
        found = EXTRACTORS[name](text)
        if found:
            return found
    return None


def gold_answer(answer) -> str:
    """The comparable part of a dataset answer: after GSM8K's "####", inside a MATH \\boxed{}."""
    text = str(answer).strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    return extract_boxed(text) or text


_WRAPPERS = [(r"^\$+|\$+$", ""), (r"^\\\(|\\\)$", ""), (r"^\\\[|\\\]$", ""),
             (r"^\*\*|\*\*$", ""), (r"[.,;:]+$", ""), (r"^=\s*", "")]
_TRAILING_WORDS = re.compile(r"^(.*\d[^a-zA-Z\\]*?)\s+(?:[a-zA-Z]{2,}\.?\s*)+$")


def clean_answer(span: str) -> str:
    """Strip what is not the answer: $ and \\( \\) delimiters, bold, a final period, unit words."""
    s = span.strip()
    for _ in range(2):
        for pattern, repl in _WRAPPERS:
            s = re.sub(pattern, repl, s).strip()
    m = _TRAILING_WORDS.match(s)  # "72 apples" -> "72"; "\frac12 cup" -> "\frac12"
    return m.group(1).strip() if m else s


# --- equivalence (runs in a worker process by default) ------------------------------------------

def _parse(text: str, soft_timeout: int | None):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    parsed = parse(f"${text}$", config, parsing_timeout=soft_timeout)
    return parsed or parse(text, config, parsing_timeout=soft_timeout)


def equivalent(pred: str, gold: str, soft_timeout: int | None = None) -> bool:
    """math-verify equivalence of two answer strings (no hard timeout: call through a pool)."""
    from math_verify import verify

    if soft_timeout is not None and threading.current_thread() is not threading.main_thread():
        soft_timeout = None  # signal.alarm would raise here
    if re.sub(r"\s+", "", pred) == re.sub(r"\s+", "", gold):
        return True
    g, p = _parse(gold, soft_timeout), _parse(pred, soft_timeout)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=soft_timeout))


def check_response(response: str, answer, extract=DEFAULT_EXTRACT,
                   soft_timeout: int | None = None) -> dict:
    """{"correct": bool, "extracted": str | None} for one response against its gold answer."""
    span = extract_answer(response, extract)
    if span is None:
        return {"correct": False, "extracted": None}
    pred = clean_answer(span)
    return {"correct": bool(pred) and equivalent(pred, clean_answer(gold_answer(answer)),
                                                 soft_timeout), "extracted": pred}


def _warm_up():
    """Pay math-verify's first-call costs (imports, regex compiles) before any deadline."""
    equivalent("\\frac{1}{2}", "0.5")


# --- the pool-backed verifier and the reward ----------------------------------------------------

class MathVerifier:
    """Checks responses with a hard per-check deadline, from any thread.

    backend "process": a WorkerPool of `workers` processes (default min(4, cores)); a check past
    `timeout_s` kills its worker and raises RewardTimeout. backend "inline": math-verify in the
    calling thread, its own signal timeout in the main thread and none elsewhere (trusted inputs).
    """

    def __init__(self, backend: str = "process", workers: int | None = None):
        if backend not in ("process", "inline"):
            raise ValueError("backend must be 'process' or 'inline'")
        self.backend = backend
        self.pool = WorkerPool(workers or min(4, os.cpu_count() or 1),
                               preload=("deltarl.rewards.math:_warm_up",)) if backend == "process" else None

    def check(self, response: str, answer, extract=DEFAULT_EXTRACT, timeout_s: float = 10.0) -> dict:
        order = list(_extract_order(extract))
        soft = max(1, int(timeout_s / 2))
        if self.pool is None:
            return check_response(response, answer, order, soft)
        try:
            return self.pool.call("deltarl.rewards.math:check_response", response, str(answer), order,
                                  soft, timeout=timeout_s)
        except WorkerTimeout as e:
            raise RewardTimeout(f"math check took over {timeout_s}s") from e

    def close(self):
        if self.pool is not None:
            self.pool.close()


_VERIFIER: MathVerifier | None = None
_VERIFIER_LOCK = threading.Lock()


def default_verifier() -> MathVerifier:
    global _VERIFIER
    with _VERIFIER_LOCK:
        if _VERIFIER is None:
            _VERIFIER = MathVerifier()
        return _VERIFIER


def math_reward(prompt: str, response: str, answer, *, extract=DEFAULT_EXTRACT,
                timeout_s: float = 10.0, verifier: MathVerifier | None = None, **_) -> float:
    """1.0 when the response's extracted answer equals `answer` (math-verify), else 0.0."""
    result = (verifier or default_verifier()).check(response, answer, extract, timeout_s)
    return 1.0 if result["correct"] else 0.0
