"""Code reward: program extraction, both test formats, scoring modes, and result forgery."""
import json

import pytest

from deltarl.rewards import RewardSpec, Sandbox, SandboxLimits, compute_rewards
from deltarl.rewards.code import (code_reward, extract_code, outputs_match, parse_tests, run_tests,
                          values_match)


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(limits=SandboxLimits(wall_s=5, cpu_s=5, memory_mb=512))


def fenced(code: str, tag: str = "python") -> str:
    return f"Here is my solution.\n```{tag}\n{code}\n```\nIt reads the input and prints."


ADD_STDIO = {"inputs": ["1 2\n", "10 -3\n", "0 0\n", "5 5\n"],
             "outputs": ["3\n", "7\n", "0\n", "10\n"]}
ADD_CALL = {"fn_name": "add", "inputs": [[1, 2], [10, -3], [0, 0], [5, 5]],
            "outputs": [3, 7, 0, 10]}


def test_extract_code():
    assert extract_code(fenced("print(1)")) == "print(1)\n"
    two = "```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```"
    assert extract_code(two) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("```cpp\nint main(){}\n```") is None
    assert extract_code("no code at all") is None
    assert extract_code("```python\nprint(4)\n") == "print(4)\n"  # cut at the token limit
    both = "```\nuntagged()\n```\n```python\ntagged()\n```\n```\nlater()\n```"
    assert extract_code(both) == "tagged()\n"


def test_parse_tests_formats():
    s = parse_tests(json.dumps(ADD_STDIO))
    assert s.kind == "stdio" and s.inputs[1] == "10 -3\n"
    s = parse_tests([{"input": "1 2", "output": "3"}])
    assert s.kind == "stdio" and s.outputs == ["3"]
    s = parse_tests({"input_output": json.dumps(ADD_CALL)})
    assert s.kind == "call" and s.fn_name == "add" and s.inputs[0] == [1, 2]
    s = parse_tests({"inputs": [["1", "2"]], "outputs": [["3"]]})  # lists of lines
    assert s.inputs == ["1\n2\n"] and s.outputs == ["3\n"]
    for bad in ({"inputs": [1]}, {"inputs": [], "outputs": []}, {"inputs": [1], "outputs": []},
                "not json", [1, 2]):
        with pytest.raises(ValueError):
            parse_tests(bad)


def test_output_and_value_comparison():
    assert outputs_match("3  \n\n", "3\n")
    assert outputs_match("1 2\n3", "1 2 3")
    assert outputs_match("0.3333333", "0.33333333")
    assert not outputs_match("0.33", "0.3333333")
    assert not outputs_match("3\n", "4\n")
    assert not outputs_match("1.0000001", "1", float_tol=None)
    assert values_match([1, 2], [1, 2]) and values_match(3, [3])  # APPS wraps call outputs
    assert values_match(0.1 + 0.2, 0.3) and not values_match(True, 1)
    assert not values_match([1, 2], [2, 1]) and values_match({"a": [1]}, {"a": [1]})


def test_stdio_program(sandbox):
    good = "a, b = map(int, input().split())\nprint(a + b)"
    assert code_reward("p", fenced(good), ADD_STDIO, sandbox=sandbox)["score"] == 1.0
    half = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)"
    out = code_reward("p", fenced(half), ADD_STDIO, sandbox=sandbox)
    assert out == {"score": 0.75, "pass_rate": 0.75}
    out = code_reward("p", fenced(half), ADD_STDIO, mode="all", sandbox=sandbox)
    assert out["score"] == 0.0
    report = run_tests(half, ADD_STDIO, sandbox=sandbox)
    assert report.statuses == ["pass", "pass", "pass", "wrong_answer"]
    report = run_tests(half, {"inputs": ["5 5\n", "1 2\n"], "outputs": ["10\n", "3\n"]},
                       stop_on_fail=True, sandbox=sandbox)
    assert report.statuses == ["wrong_answer", "not_run"]


def test_stdio_failure_statuses(sandbox):
    tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    assert run_tests("raise SystemExit(3)", tests, sandbox=sandbox).statuses == ["runtime_error"]
    assert run_tests("syntax error here", tests, sandbox=sandbox).statuses == ["runtime_error"]
    assert run_tests("while True: pass", tests, timeout_s=1, sandbox=sandbox).statuses == \
        ["timeout"]
    assert run_tests("x = bytearray(1 << 30)", tests, memory_mb=256,
                     sandbox=sandbox).statuses == ["memory"]


def test_call_program_and_leetcode_class(sandbox):
    good = "def add(a, b):\n    print('noise on stdout')\n    return a + b"
    assert code_reward("p", fenced(good), ADD_CALL, sandbox=sandbox)["score"] == 1.0
    cls = "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b"
    assert code_reward("p", fenced(cls), ADD_CALL, sandbox=sandbox)["score"] == 1.0
    partial = "def add(a, b):\n    if a == 0: raise ValueError\n    if a == 5: return 11\n" \
              "    return a + b"
    report = run_tests(partial, ADD_CALL, sandbox=sandbox)
    assert report.statuses == ["pass", "pass", "runtime_error", "wrong_answer"]
    assert run_tests("def other(): pass", ADD_CALL, sandbox=sandbox).statuses == \
        ["runtime_error"] * 4
    assert run_tests("import sys\nsys.exit(0)", ADD_CALL, sandbox=sandbox).passed == 0


def test_call_tuple_set_and_per_case_timeout(sandbox):
    tests = {"fn_name": "f", "inputs": [[1], [2], [3]], "outputs": [[1, 2], [[2, 3]], [3]]}
    code = "import time\ndef f(x):\n    if x == 3:\n        time.sleep(60)\n    return (x, x + 1)"
    report = run_tests(code, tests, timeout_s=1, sandbox=sandbox)
    assert report.statuses == ["pass", "pass", "timeout"]
    tests = {"fn_name": "f", "inputs": [[[3, 1, 2]]], "outputs": [[1, 2, 3]]}
    assert run_tests("def f(xs): return set(xs)", tests, sandbox=sandbox).passed == 1
    tests = {"fn_name": "f", "inputs": [{"a": 2, "b": 5}], "outputs": [-3]}
    assert run_tests("def f(a, b): return a - b", tests, sandbox=sandbox).passed == 1


def test_forged_results_do_not_pass(sandbox):
    """The expected values never enter the sandbox; printing fake result lines (even straight
    to the result descriptor) cannot pass a case whose answer the program does not compute."""
    forge = ("import os, json\n"
             "for fd in range(1, 10):\n"
             "    for i in range(4):\n"
             "        try: os.write(fd, (json.dumps({'i': i, 'value': 'PASS'}) + '\\n').encode())\n"
             "        except OSError: pass\n"
             "def add(a, b):\n    return None\n")
    report = run_tests(forge, ADD_CALL, sandbox=sandbox)
    assert report.passed == 0


def test_code_reward_through_the_api(sandbox):
    good = fenced("a, b = map(int, input().split())\nprint(a + b)")
    rows = [{"tests": json.dumps(ADD_STDIO)}, {"tests": ADD_STDIO}, {"tests": "{broken"}]
    spec = RewardSpec("code", kwargs={"sandbox": sandbox})
    batch = compute_rewards(["p"] * 3, [good, "I cannot solve this.", good], rows, [spec])
    assert batch.parts["code"] == [1.0, 0.0, 0.0]
    assert batch.parts["code/pass_rate"] == [1.0, 0.0, 0.0]
    assert batch.failures["code/error"] == 1  # the malformed tests are a data error
