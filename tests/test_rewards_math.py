"""Math verifier: a table of GSM8K / MATH / AIME-style answers with their traps, extraction
rules, and timeouts that hold outside the main thread."""
import threading

import pytest

from deltarl.rewards import RewardSpec, RewardTimeout, compute_rewards
from deltarl.rewards.math import (MathVerifier, clean_answer, extract_answer, extract_answer_line,
                          extract_boxed, extract_last_number, gold_answer, math_reward)

AUTO = ("boxed", "answer", "last_number")

# (response, gold answer, expected verdict, extraction order)
CASES = [
    # --- GSM8K: "#### N" golds, prose answers, dollars, thousands, units -----------------------
    ("Natalia sold 48/2 = 24 clips in May. Altogether 48+24 = 72 clips.\n#### 72", "72", True, AUTO),
    ("She has 72 clips in total. The answer is 72.", "#### 72", True, AUTO),
    ("Answer: 72", "Natalia sold 48/2 = 24 clips.\n#### 72", True, AUTO),
    ("She has $1,200 left.\nAnswer: $1,200", "1200", True, AUTO),
    ("The total is 1200 dollars.", "1200", True, AUTO),
    ("So she earns \\$18 every day.", "18", True, AUTO),
    ("Total = 3 x 4 = 12", "12", True, AUTO),
    ("He bought 5 + 7 = 12 apples, then gave away 2, leaving 10.", "12", False, AUTO),  # trap
    ("Answer: 3.50", "3.5", True, AUTO),
    ("#### 1,000", "1000", True, AUTO),
    ("Answer: -4", "-4", True, AUTO),
    ("Answer: 4", "-4", False, AUTO),
    ("The trip takes 7 hours.", "7", True, AUTO),
    ("She needs 2.5 cups of flour.", "5/2", True, AUTO),
    ("The discount is 25%.", "25", True, AUTO),
    ("I don't know.", "12", False, AUTO),
    ("", "5", False, AUTO),
    ("There are 365 days in a year.\nAnswer: 52 weeks", "52", True, AUTO),
    ("**Answer:** 48.", "48", True, AUTO),
    ("12 boxes of 10 pencils make \\boxed{120} pencils.", "12", False, AUTO),  # trap
    ("\\boxed{120}", "12", False, AUTO),  # the right digits, a wrong number
    ("\\boxed{18.0}", "18", True, AUTO),
    # --- 0.5 vs \frac12, percentages ---------------------------------------------------------
    ("The answer is 0.5", "\\frac{1}{2}", True, AUTO),
    ("\\boxed{\\frac12}", "0.5", True, AUTO),
    ("\\boxed{1/2}", "\\frac{1}{2}", True, AUTO),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{3}", False, AUTO),
    ("\\boxed{-\\frac{1}{2}}", "\\frac{1}{2}", False, AUTO),
    ("\\boxed{50\\%}", "50", True, AUTO),
    ("\\boxed{50\\%}", "0.5", True, AUTO),
    ("\\boxed{0.5}", "50", False, AUTO),
    ("Answer: 25%", "0.25", True, AUTO),
    # --- MATH: fractions, radicals, sets, intervals, expressions, choices -------------------------
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True, AUTO),
    ("\\boxed{\\frac{6}{8}}", "\\frac34", True, AUTO),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True, AUTO),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt2}{2}", True, AUTO),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", True, AUTO),
    ("\\boxed{3\\sqrt{2}}", "3\\sqrt{3}", False, AUTO),
    ("\\boxed{\\{1, 2, 3\\}}", "\\{3,2,1\\}", True, AUTO),
    ("\\boxed{1, 2}", "2, 1", True, AUTO),
    ("\\boxed{(0, 1]}", "(0,1]", True, AUTO),
    ("\\boxed{[0, 1]}", "(0,1]", False, AUTO),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", True, AUTO),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3)", False, AUTO),
    ("\\boxed{x = 5}", "5", True, AUTO),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", True, AUTO),
    ("\\boxed{x^2 + 2x - 1}", "(x+1)^2", False, AUTO),
    ("\\boxed{2\\pi}", "2\\pi", True, AUTO),
    ("\\boxed{\\pi}", "2\\pi", False, AUTO),
    ("\\boxed{6.28}", "2\\pi", False, AUTO),
    ("\\boxed{90^\\circ}", "90", True, AUTO),
    ("\\boxed{5\\text{ cm}}", "5", True, AUTO),
    ("\\boxed{\\text{(B)}}", "B", True, AUTO),
    ("\\boxed{C}", "B", False, AUTO),
    ("\\boxed{3+2i}", "3+2i", True, AUTO),
    ("\\boxed{2i+3}", "3+2i", True, AUTO),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True, AUTO),
    ("\\boxed{10^{3}}", "1000", True, AUTO),
    ("The final answer is $\\frac{7}{2}$.", "3.5", True, AUTO),
    ("A MATH solution ends with $\\boxed{\\frac{7}{2}}$.", "The ratio is $\\boxed{3.5}$.", True, AUTO),
    ("\\boxed{5!}", "120", True, AUTO),
    # --- several answers: the last one counts ------------------------------------------------
    ("First \\boxed{4}; after checking, the final answer is \\boxed{5}.", "5", True, AUTO),
    ("First \\boxed{5}; after checking, the final answer is \\boxed{4}.", "5", False, AUTO),
    ("so the answer is \\boxed 5", "5", True, AUTO),
    ("\\fbox{5}", "5", True, AUTO),
    # --- AIME: integers 0..999 ----------------------------------------------------------------
    ("\\boxed{073}", "73", True, AUTO),
    ("The answer is $\\boxed{25}$.", "25", True, AUTO),
    ("\\boxed{250}", "25", False, AUTO),
    ("Therefore m+n = 17 + 8 = \\boxed{25}", "25", True, AUTO),
    ("m/n = 17/8, so m + n = 25", "25", True, AUTO),
    ("m + n = 25. Let me double check the ratio 17/8", "25", False, AUTO),  # unboxed hedge
    # --- extraction as configured ---------------------------------------------------------------
    ("The answer is 72.", "72", False, ("boxed",)),  # unboxed answer under boxed-only
    ("So x = 7", "7", False, ("boxed",)),
    ("So x = 7", "7", True, AUTO),
    ("Answer: 204", "204", True, ("answer",)),
    ("I computed 204", "204", False, ("answer",)),
    ("\\boxed{5}, which took 7 steps", "5", False, ("last_number",)),
    ("\\boxed{5}, which took 7 steps", "5", True, ("boxed", "last_number")),
]


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(workers=2)
    yield v
    v.close()


def test_table_is_large_enough():
    assert len(CASES) >= 60
    assert sum(expected for _, _, expected, _ in CASES) >= 20
    assert sum(not expected for _, _, expected, _ in CASES) >= 20


@pytest.mark.parametrize("response,answer,expected,extract", CASES,
                         ids=[f"{i:02d}" for i in range(len(CASES))])
def test_verdict(verifier, response, answer, expected, extract):
    result = verifier.check(response, answer, extract, timeout_s=20)
    assert result["correct"] is expected, result


def test_extractors():
    assert extract_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_answer_line("blah\nFinal Answer: 12 apples\nthanks") == "12 apples"
    assert extract_answer_line("#### 1,234") == "1,234"
    assert extract_last_number("from 1,234 to -5.5 and 3/4") == "3/4"
    assert extract_last_number("1,234 people") == "1234"
    assert extract_answer("no answer here") is None
    assert extract_answer("x \\boxed{3} Answer: 4 and 5", ("answer",)) == "4 and 5"
    with pytest.raises(ValueError):
        extract_answer("1", ("nonsense",))
    assert gold_answer("work...\n#### 18") == "18"
    assert gold_answer("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert clean_answer("$72$.") == "72"
    assert clean_answer("72 apples") == "72"
    assert clean_answer("\\(x+1\\)") == "x+1"
    assert clean_answer("5!") == "5!"


def test_math_verify_default_breaks_in_threads_ours_does_not(verifier):
    """math-verify's default timeouts use signal.alarm: it raises off the main thread."""
    from math_verify import parse

    out = {}

    def in_thread():
        try:
            parse("$\\frac12$")
            out["default"] = "ok"
        except ValueError as e:
            out["default"] = str(e)
        out["ours"] = verifier.check("\\boxed{\\frac12}", "0.5")["correct"]
        out["inline"] = MathVerifier(backend="inline").check("\\boxed{\\frac12}", "0.5")["correct"]

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(60)
    assert "threaded environment" in out["default"]
    assert out["ours"] is True and out["inline"] is True


def test_hard_deadline_kills_the_worker_from_a_thread():
    """A check past its deadline raises RewardTimeout quickly; the pool replaces the worker."""
    v = MathVerifier(workers=1)
    try:
        v.check("\\boxed{1}", "1")  # worker started and warm
        out = {}

        def in_thread():
            import time
            t0 = time.monotonic()
            try:
                v.check("\\boxed{9^{9^{9^{9}}}}", "1", timeout_s=0.5)  # soft limit is 1 s: later
                out["result"] = "returned"
            except RewardTimeout:
                out["result"] = "timeout"
            out["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=in_thread)
        t.start()
        t.join(60)
        assert out["result"] == "timeout" and out["elapsed"] < 3.0
        assert v.pool.restarts == 1
        assert v.check("\\boxed{2}", "2")["correct"] is True  # a fresh worker answers
    finally:
        v.close()


def test_math_reward_through_compute_rewards_counts_timeouts():
    v = MathVerifier(workers=1)
    try:
        spec = RewardSpec("math", kwargs={"verifier": v, "timeout_s": 0.5})
        responses = ["\\boxed{4}", "\\boxed{5}", "\\boxed{9^{9^{9^{9}}}}"]
        batch = compute_rewards(["q"] * 3, responses, [{"answer": "4"}] * 3, [spec])
        assert batch.parts["math"] == [1.0, 0.0, 0.0]
        assert batch.failures["math/timeout"] == 1
        assert batch.failures["math/error"] == 0
    finally:
        v.close()


def test_math_reward_function():
    v = MathVerifier(backend="inline")
    assert math_reward("q", "\\boxed{42}", "42", verifier=v) == 1.0
    assert math_reward("q", "\\boxed{41}", "42", verifier=v) == 0.0
