"""Format reward styles and the exact checkers of the synthetic tasks."""
import pytest

from deltarl.rewards import arithmetic_reward, countdown_reward, format_reward
from deltarl.rewards.synthetic import arithmetic_answer, countdown_expression


@pytest.mark.parametrize("style,response,expected", [
    ("boxed", "so \\boxed{\\frac{1}{2}}", 1.0),
    ("boxed", "so \\boxed{unclosed", 0.0),
    ("boxed", "the answer is 5", 0.0),
    ("think", "<think>work</think> 42", 1.0),
    ("think", "<think>work</think>", 0.0),  # nothing after thinking
    ("think", "42 <think>late</think> x", 0.0),
    ("think", "<think>a</think><think>b</think> 42", 0.0),
    ("answer_tag", "blah <answer>3*7</answer>", 1.0),
    ("answer_tag", "<answer> </answer>", 0.0),
    ("answer_tag", "<answer>1</answer><answer>2</answer>", 0.0),
    ("think_answer", "<think>plan</think>\n<answer>25+21</answer>", 1.0),
    ("think_answer", "<think>plan</think> text <answer>25+21</answer>", 0.0),
    ("think_answer", "<answer>1</answer>", 0.0),
    ("code_block", "```python\nprint(1)\n```", 1.0),
    ("code_block", "```python\n\n```", 0.0),
    ("code_block", "print(1)", 0.0),
    ("number", " 357\n", 1.0),
    ("number", "-12", 1.0),
    ("number", "357 apples", 0.0),
])
def test_format_styles(style, response, expected):
    assert format_reward("p", response, style=style) == expected


def test_format_pattern_and_unknown_style():
    assert format_reward("p", "ANSWER: 7", pattern=r"ANSWER: \d+") == 1.0
    assert format_reward("p", "ANSWER: 7 or 8", pattern=r"ANSWER: \d+") == 0.0  # fullmatch
    with pytest.raises(ValueError):
        format_reward("p", "x", style="fancy")


@pytest.mark.parametrize("response,answer,expected", [
    ("357", "357", 1.0),
    ("357\nxyz", "357", 1.0),
    ("12+345=357", "357", 1.0),
    ("The answer is 357.", "357", 1.0),
    ("\\boxed{357}", "357", 1.0),
    ("-42", "-42", 1.0),
    ("42", "-42", 0.0),
    ("358", "357", 0.0),
    ("", "357", 0.0),
    ("3570", "357", 0.0),
])
def test_arithmetic_reward(response, answer, expected):
    assert arithmetic_reward("12+345=", response, answer) == expected


def test_arithmetic_partial_credit():
    assert arithmetic_reward("p", "367", "357", partial=True) == pytest.approx(0.5 * 2 / 3)
    assert arithmetic_reward("p", "36", "357", partial=True) == 0.0  # wrong length
    assert arithmetic_reward("p", "357", "357", partial=True) == 1.0
    assert arithmetic_answer("no digits") is None


NUMBERS, TARGET = [3, 7, 25], 46


@pytest.mark.parametrize("response,expected", [
    ("25+3*7", 1.0),
    ("3*7+25", 1.0),
    ("(25+3*7)", 1.0),
    ("25 + 7 * 3 = 46", 1.0),
    ("46 = 25+3*7", 1.0),
    ("<think>try 25+21</think><answer>25+3*7</answer>", 1.0),
    ("first 25+7\nthen 25+3*7", 1.0),  # the last line counts
    ("25+3*7+0", 0.0),  # 0 is not a given number
    ("25+21", 0.0),  # 21 is not a given number
    ("25*3-7", 0.0),  # uses each once, wrong value
    ("25+25-4", 0.0),
    ("3*7", 0.0),  # does not use all numbers
    ("25+3*7*1", 0.0),
    ("__import__('os').system('true')", 0.0),  # never evaluated
    ("25+3**7", 0.0),
    ("-3+7*25", 0.0),  # unary minus is not an operation of the game
    ("(25+3)/0*7", 0.0),
    ("", 0.0),
])
def test_countdown_reward(response, expected):
    assert countdown_reward("p", response, NUMBERS, TARGET) == expected


def test_countdown_options():
    assert countdown_reward("p", "2*23", [2, 23, 9], 46, use_all=False) == 1.0
    assert countdown_reward("p", "2*23", [2, 23, 9], 46, use_all=True) == 0.0
    assert countdown_reward("p", "2*22", [2, 23, 9], 46, format_score=0.1) == 0.1
    assert countdown_reward("p", "10/4*2", [10, 4, 2], 5) == 1.0  # exact fractions
    assert countdown_expression("") is None
