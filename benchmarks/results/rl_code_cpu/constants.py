"""How often the greedy program of each policy folder in argv[1] (comma-separated) copies the prompt's constant, on the
code_io held-out prompts that have a step ("plus/minus/times c"); argv[2:]: deltarl.rl.warmup arguments naming the task
and held-out set. Counts: right programs (all hidden tests pass) and programs whose print line contains the prompt's c
as a number; then right programs on the prompts without a step, and the print line for each distinct one.
Output: constants.txt."""
import re
import sys

import torch

from deltarl.rollout import EmbeddedEngine, SamplingParams
from deltarl.model import KimiLinearForCausalLM, char_tokenizer
from deltarl.rl import warmup as W

paths, args = sys.argv[1].split(","), W.parse_args(sys.argv[2:])
torch.set_num_threads(1)
tok = char_tokenizer()
evals = W.eval_rows(args)
rows = W.train_rows(args, 20_000, exclude={r["prompt"] for r in evals})
budget = W.answer_budget(args, tok, rows + evals)
with_step = [r for r in evals if re.search(r"(plus|minus|times) \d+", r["prompt"])]
no_step = [r for r in evals if r not in with_step]
for path in paths:
    net = KimiLinearForCausalLM.from_pretrained(path)
    out = EmbeddedEngine(net, tok, max_batch_size=64).generate(
        [tok(r["prompt"]).input_ids for r in with_step], SamplingParams(n=1, temperature=0.0, max_tokens=budget))
    right = W.evaluate(net, tok, with_step, budget, task=args.task)["accuracy"]
    copied = 0
    for r, c in zip(with_step, out):
        constant = re.search(r"(plus|minus|times) (\d+)", r["prompt"]).group(2)
        last = c.text.strip().splitlines()[-2] if c.text.count("\n") >= 2 else c.text
        has = constant in re.findall(r"\d+", last)
        copied += has
    print(f"{path}: {len(with_step)} held-out prompts with a constant; greedy right {round(right * len(with_step))}, "
          f"program's print line contains the prompt's constant {copied}; {len(no_step)} without a step: greedy right "
          f"{round(W.evaluate(net, tok, no_step, budget, task=args.task)['accuracy'] * len(no_step))}", flush=True)
    distinct = sorted({r["prompt"] for r in no_step})
    lines = EmbeddedEngine(net, tok, max_batch_size=64).generate(
        [tok(p).input_ids for p in distinct], SamplingParams(n=1, temperature=0.0, max_tokens=budget))
    for p, c in zip(distinct, lines):
        print("   ", repr(p.strip()), "->", repr(c.text.strip().splitlines()[-2] if c.text.count("\n") >= 2 else c.text))
