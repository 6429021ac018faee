"""Greedy programs of two policies (argv[1], argv[2]) on the first 40 held-out code_io prompts; prints those that
differ with their rewards. argv[3:]: deltarl.rl.warmup arguments naming the task and held-out set. Output: greedy_diff.txt."""
import sys
import torch
from deltarl.model import KimiLinearForCausalLM, char_tokenizer
from deltarl.rl import warmup as W
args = W.parse_args(sys.argv[3:]); torch.set_num_threads(1); tok = char_tokenizer()
evals = W.eval_rows(args)
rows = W.train_rows(args, 20_000, exclude={r["prompt"] for r in evals})
budget = W.answer_budget(args, tok, rows + evals)
res=[]
for p in sys.argv[1:3]:
    net = KimiLinearForCausalLM.from_pretrained(p)
    out=[]
    for r in evals[:40]:
        g=W.evaluate(net, tok, [r], budget, task=args.task)
        out.append((g['accuracy'], g['examples'][0]['response'] if g['examples'] else None))
    res.append(out)
for r,(a,b) in zip(evals[:40], zip(*res)):
    if a!=b: print(repr(r['prompt'][:60]), a[0], repr(a[1]), '=>', b[0], repr(b[1]))
