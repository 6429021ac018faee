"""Make a committed warm-up checkpoint from a --save-every snapshot: copy RUN/steps/step_N to DEST and write
DEST/warmup_report.json (held-out greedy accuracy and pass@8 at T=1 measured on the snapshot now, the run's
greedy-accuracy history up to N read from its log, and the RL settings).
argv: RUN, N, DEST, LOG (the run's tqdm log, or - for none), then the deltarl.rl.warmup arguments of the run."""
import json
import platform
import re
import shutil
import sys
from pathlib import Path

import torch

from deltarl.model import KimiLinearForCausalLM, char_tokenizer
from deltarl.rl import warmup as W

run, step, dest, log, argv = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5:]
args = W.parse_args(argv)
torch.set_num_threads(1)
tok = char_tokenizer()
source = run / "steps" / f"step_{step}"
net = KimiLinearForCausalLM.from_pretrained(source)
evals = W.eval_rows(args)
rows = W.train_rows(args, 20_000, exclude={r["prompt"] for r in evals})
budget = W.answer_budget(args, tok, rows + evals)
greedy = W.evaluate(net, tok, evals, budget, task=args.task)
sampled = W.evaluate(net, tok, evals, budget, n=8, temperature=1.0, seed=args.seed, task=args.task)
text = open(log).read().replace("\r", "\n") if log != "-" else ""
pattern = r"step (\d+): loss ([0-9.]+), held-out greedy accuracy ([0-9.]+)%"
history = [{"step": int(s), "loss": float(l), "greedy_accuracy": round(float(a) / 100, 4)}
           for s, l, a in re.findall(pattern, text) if int(s) <= step]
dest.mkdir(parents=True, exist_ok=True)
for f in source.iterdir():
    shutil.copy(f, dest / f.name)
report = {
    "settings": {**vars(args), "out": str(run)},
    "snapshot": {"step": step, "of_run": f"--steps {args.steps} --save-every {args.save_every}",
                 "note": "the model after `step` optimizer steps of the run in `settings`, saved by --save-every; "
                         "the lr is constant after its warm-up and the batches are seeded, so --steps STEP "
                         "trains the same prefix"},
    "parameters": sum(p.numel() for p in net.parameters()), "training_rows": len(rows),
    "torch": torch.__version__, "machine": platform.machine(),
    "held_out": {"size": len(evals), "seed": args.eval_seed, "max_tokens": budget,
                 "greedy_accuracy": greedy["accuracy"], "pass@8": sampled["pass@8"],
                 "sample_accuracy@T1.0": sampled["accuracy"], "mixed_prompts": sampled["mixed"],
                 "greedy_examples": greedy["examples"]},
    "history": history,
    "rl_config": W.rl_config(args, dest, budget),
}
(dest / "warmup_report.json").write_text(json.dumps(report, indent=2) + "\n")
print({k: v for k, v in report["held_out"].items() if k != "greedy_examples"}, f"{len(history)} history points")
