"""Code reward: take the program from the response, run it against tests in the sandbox.

Two test formats (a dict, or its JSON text):
  stdin/stdout   {"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}  or
                 [{"input": "1 2\\n", "output": "3\\n"}, ...]; one sandbox run per case, the
                 program's stdout compared line by line (trailing spaces and blank lines ignored;
                 numeric tokens within `float_tol`).
  function call  {"fn_name": "add", "inputs": [[1, 2], ...], "outputs": [3, ...]}; one sandbox
                 run calls the function (or `Solution().fn_name`, LeetCode style) on each
                 argument list and prints the return values as JSON; the parent compares them
                 with the expected values, which never enter the sandbox.
APPS/TACO's {"input_output": "<json>"} wrapper is unwrapped. Score: fraction of cases passed
(mode "fraction") or 1.0 only if all pass (mode "all", which stops at the first failure).
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field

from .sandbox import Sandbox, SandboxLimits, default_sandbox

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
PYTHON_TAGS = ("python", "py", "python3")


def extract_code(response: str) -> str | None:
    """The last ```python fenced block (else the last untagged one; an unclosed final fence
    counts, for responses cut at the token limit), or None."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(response)]
    for wanted in (PYTHON_TAGS, ("",)):
        chosen = [body for tag, body in blocks if tag in wanted]
        if chosen and chosen[-1].strip():
            return chosen[-1]
    return None


@dataclass
class TestSuite:
    kind: str  # "stdio" or "call"
    inputs: list
    outputs: list
    fn_name: str | None = None


def parse_tests(tests) -> TestSuite:
    """Normalize the accepted test formats; raises ValueError on anything else."""
    if isinstance(tests, (str, bytes)):
        tests = json.loads(tests)
    if isinstance(tests, dict) and "input_output" in tests:
        return parse_tests(tests["input_output"])
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        ins = [t.get("input", t.get("stdin")) for t in tests]
        outs = [t.get("output", t.get("stdout", t.get("expected_output"))) for t in tests]
        tests = {"inputs": ins, "outputs": outs}
    if not isinstance(tests, dict) or "inputs" not in tests or "outputs" not in tests:
        raise ValueError(f"unrecognized tests format: {str(tests)[:120]}")
    ins, outs, fn_name = tests["inputs"], tests["outputs"], tests.get("fn_name")
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs) or not ins:
        raise ValueError(f"tests need equal, non-empty input and output lists "
                         f"({len(ins) if isinstance(ins, list) else ins!r} vs "
                         f"{len(outs) if isinstance(outs, list) else outs!r})")
    if fn_name:
        return TestSuite("call", ins, outs, str(fn_name))
    as_text = lambda x: "\n".join(map(str, x)) + "\n" if isinstance(x, list) else str(x)
    if any(x is None for x in ins + outs):
        raise ValueError("a stdin/stdout test case has no input or output")
    return TestSuite("stdio", [as_text(x) for x in ins], [as_text(x) for x in outs])


# --- comparing ----------------------------------------------------------------------------------

def _close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _token_equal(a: str, b: str, tol: float | None) -> bool:
    if a == b:
        return True
    if tol is None:
        return False
    try:
        return _close(float(a), float(b), tol)
    except ValueError:
        return False


def outputs_match(got: str, expected: str, float_tol: float | None = 1e-6) -> bool:
    """Judge-style stdout comparison: per-line trailing space and final blank lines ignored;
    failing that, whitespace-separated tokens equal or numerically within float_tol."""
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip().splitlines())
    if norm(got) == norm(expected):
        return True
    g, e = got.split(), expected.split()
    return len(g) == len(e) and all(_token_equal(x, y, float_tol) for x, y in zip(g, e))


def values_match(got, expected, float_tol: float | None = 1e-6) -> bool:
    """Return value vs expected (JSON forms). APPS wraps call outputs in a one-item list, so a
    value equal to expected[0] also passes."""
    if _value_equal(got, expected, float_tol):
        return True
    return isinstance(expected, list) and len(expected) == 1 and \
        _value_equal(got, expected[0], float_tol)


def _value_equal(a, b, tol) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (tol is not None and _close(float(a), float(b), tol))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_value_equal(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_value_equal(a[k], b[k], tol) for k in a)
    return a == b


# --- running ------------------------------------------------------------------------------------

# Runs the function-call cases in one process. The program's own prints go to /dev/null; the
# results go to a duplicate of the original stdout as one JSON line per case.
CALL_HARNESS = r'''
import json, math, os, signal, sys
_results = os.fdopen(os.dup(1), "w")
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
with open("cases.json") as _f:
    _spec = json.load(_f)
os.remove("cases.json")

def _plain(x):
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (set, frozenset)):
        try:
            return sorted(_plain(v) for v in x)
        except TypeError:
            return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)

def _emit(obj):
    _results.write(json.dumps(obj) + "\n")
    _results.flush()

class _CaseTimeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _CaseTimeout()

signal.signal(signal.SIGALRM, _alarm)
_ns = {"__name__": "solution"}
try:
    with open("solution.py") as _f:
        exec(compile(_f.read(), "solution.py", "exec"), _ns)
except BaseException as _e:
    _emit({"load_error": type(_e).__name__ + ": " + str(_e)[:200]})
    sys.exit(0)
_name = _spec["fn_name"]
for _i, _args in enumerate(_spec["inputs"]):
    signal.setitimer(signal.ITIMER_REAL, _spec["timeout"])
    try:
        _fn = _ns.get(_name)
        if _fn is None and isinstance(_ns.get("Solution"), type):
            _fn = getattr(_ns["Solution"](), _name)
        if isinstance(_args, dict):
            _value = _fn(**_args)
        elif isinstance(_args, list):
            _value = _fn(*_args)
        else:
            _value = _fn(_args)
        signal.setitimer(signal.ITIMER_REAL, 0)
        _emit({"i": _i, "value": _plain(_value)})
    except _CaseTimeout:
        _emit({"i": _i, "error": "timeout"})
    except BaseException as _e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _emit({"i": _i, "error": type(_e).__name__})
'''


@dataclass
class TestReport:
    passed: int
    total: int
    statuses: list[str] = field(default_factory=list)  # per case: pass, wrong_answer, or a
    # sandbox status (timeout, memory, runtime_error, output_limit), or not_run

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_tests(code: str, tests, *, timeout_s: float = 4.0, memory_mb: int = 1024,
              total_timeout_s: float = 60.0, stop_on_fail: bool = False,
              float_tol: float | None = 1e-6, sandbox: Sandbox | None = None) -> TestReport:
    """Run `code` against `tests` (see module doc); raises RuntimeError on a sandbox failure."""
    suite = tests if isinstance(tests, TestSuite) else parse_tests(tests)
    sandbox = sandbox or default_sandbox()
    limits = SandboxLimits(wall_s=timeout_s, cpu_s=timeout_s, memory_mb=memory_mb)
    if suite.kind == "call":
        return _run_call(code, suite, sandbox, limits, total_timeout_s, float_tol)
    statuses, deadline = [], time.monotonic() + total_timeout_s
    for inp, expected in zip(suite.inputs, suite.outputs):
        if time.monotonic() > deadline or (stop_on_fail and statuses and statuses[-1] != "pass"):
            statuses.append("not_run")
            continue
        res = sandbox.run({"main.py": code}, stdin=inp, limits=limits)
        if res.status == "sandbox_error":
            raise RuntimeError(f"sandbox failed: {res.stderr[-500:]}")
        statuses.append(res.status if res.status != "ok" else
                        "pass" if outputs_match(res.stdout, expected, float_tol) else "wrong_answer")
    return TestReport(statuses.count("pass"), len(statuses), statuses)


def _run_call(code, suite, sandbox, limits, total_timeout_s, float_tol) -> TestReport:
    n = len(suite.inputs)
    wall = min(total_timeout_s, limits.wall_s * n + 1.0)
    files = {"main.py": CALL_HARNESS, "solution.py": code,
             "cases.json": json.dumps({"fn_name": suite.fn_name, "inputs": suite.inputs,
                                       "timeout": limits.wall_s})}
    res = sandbox.run(files, limits=SandboxLimits(
        wall_s=wall, cpu_s=wall, memory_mb=limits.memory_mb, output_bytes=limits.output_bytes))
    if res.status == "sandbox_error":
        raise RuntimeError(f"sandbox failed: {res.stderr[-500:]}")
    statuses = ["not_run" if res.status == "ok" else res.status] * n
    for line in res.stdout.splitlines():
        try:
            msg = json.loads(line)
            i = msg["i"]
        except (ValueError, KeyError, TypeError):
            continue  # a load error, or junk the program wrote to the result descriptor
        if not isinstance(i, int) or not 0 <= i < n or statuses[i] in ("pass", "wrong_answer"):
            continue  # first answer per case counts
        if "error" in msg:
            statuses[i] = "timeout" if msg["error"] == "timeout" else "runtime_error"
        else:
            ok = values_match(msg.get("value"), suite.outputs[i], float_tol)
            statuses[i] = "pass" if ok else "wrong_answer"
    return TestReport(statuses.count("pass"), n, statuses)


CASE_STATUSES = ("pass", "wrong_answer", "runtime_error", "timeout", "memory", "output_limit", "not_run")


def code_reward(prompt: str, response: str, tests, *, mode: str = "fraction",
                timeout_s: float = 4.0, memory_mb: int = 1024, total_timeout_s: float = 60.0,
                float_tol: float | None = 1e-6, sandbox: Sandbox | None = None,
                report_statuses: bool = False, **_) -> dict:
    """{"score", "pass_rate"}: the fraction of tests passed (mode "fraction") or 1.0 only if all
    pass (mode "all"). No code block in the response scores 0. Malformed tests raise.

    `report_statuses` adds, per sample, how many test cases ended in each of CASE_STATUSES
    ("cases_timeout", ...) and "no_code" (1.0 when the response had no program): the trainer logs
    their means per step as reward/code/cases_timeout/mean and so on."""
    if mode not in ("fraction", "all"):
        raise ValueError("mode must be 'fraction' or 'all'")
    suite = parse_tests(tests)  # a data error is an error even when the response has no code
    code = extract_code(response)
    statuses = {f"cases_{s}": 0.0 for s in CASE_STATUSES} if report_statuses else {}
    if code is None:
        return {"score": 0.0, "pass_rate": 0.0, **({**statuses, "no_code": 1.0} if report_statuses else {})}
    report = run_tests(code, suite, timeout_s=timeout_s, memory_mb=memory_mb, total_timeout_s=total_timeout_s,
                       stop_on_fail=mode == "all", float_tol=float_tol, sandbox=sandbox)
    score = report.pass_rate if mode == "fraction" else float(report.passed == report.total)
    if report_statuses:
        for status in report.statuses:
            statuses[f"cases_{status}"] = statuses.get(f"cases_{status}", 0.0) + 1.0
        statuses["no_code"] = 0.0
    return {"score": score, "pass_rate": report.pass_rate, **statuses}
