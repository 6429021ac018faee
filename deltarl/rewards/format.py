"""Format reward: 1.0 when the response has the shape the task asks for, else 0.0.

Usually a small extra weight next to a correctness reward, so a policy first learns where to
put its answer. Styles:
  boxed         a \\boxed{...} with balanced braces
  think         "<think>...</think>" first (one of each tag), then a non-empty answer
  answer_tag    exactly one non-empty <answer>...</answer>
  think_answer  <think>...</think> then <answer>...</answer>, nothing else around them
  code_block    a fenced ``` block with content
  number        the whole response (trimmed) is one number: -12, 3.5, 1/2
or `pattern`: a regular expression the whole response must match (re.fullmatch, DOTALL).
"""
from __future__ import annotations

import re

from .math import extract_boxed

_THINK = re.compile(r"\s*<think>(.+?)</think>\s*\S.*", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK_ANSWER = re.compile(r"\s*<think>.+?</think>\s*<answer>(.+?)</answer>\s*", re.S)
_CODE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_NUMBER = re.compile(r"\s*-?(?:\d+(?:\.\d+)?|\d+/\d+)\s*")


def _think(r: str) -> bool:
    return r.count("<think>") == 1 and r.count("</think>") == 1 and bool(_THINK.fullmatch(r))


def _answer_tag(r: str) -> bool:
    found = _ANSWER.findall(r)
    return len(found) == 1 and r.count("<answer>") == 1 and bool(found[0].strip())


def _think_answer(r: str) -> bool:
    m = _THINK_ANSWER.fullmatch(r)
    return bool(m) and r.count("<think>") == 1 and r.count("<answer>") == 1 and \
        bool(m.group(1).strip())


STYLES = {
    "boxed": lambda r: bool(extract_boxed(r)),
    "think": _think,
    "answer_tag": _answer_tag,
    "think_answer": _think_answer,
    "code_block": lambda r: any(block.strip() for block in _CODE.findall(r)),
    "number": lambda r: bool(_NUMBER.fullmatch(r)),
}


def format_reward(prompt: str, response: str, *, style: str = "boxed", pattern: str | None = None,
                  **_) -> float:
    """1.0 if `response` has the `style` (or matches `pattern`), else 0.0."""
    if pattern is not None:
        return 1.0 if re.fullmatch(pattern, response, re.S) else 0.0
    if style not in STYLES:
        raise ValueError(f"unknown format style {style!r}; choose from {sorted(STYLES)}")
    return 1.0 if STYLES[style](response) else 0.0
