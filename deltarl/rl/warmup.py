"""Supervised warm-up: the starting policy of the CPU RL demos, made here rather than downloaded.

    python -m deltarl.rl.warmup --out checkpoints/arithmetic-warmup
    python -m deltarl.rl.warmup --task math_word --out checkpoints/math-warmup --steps ...
    python -m deltarl.rl.warmup --task code_io --out checkpoints/code-warmup --steps ...

A small Kimi Linear (3 KDA + 1 MLA layers, character tokenizer) learns a built-in arithmetic task
from prompt -> answer pairs for a few minutes on 2 CPU cores, deliberately too briefly to master
it: RL then has room to raise held-out accuracy, and because the policy already emits answers of
the right form, sampling finds correct ones often enough to give a reward signal.

The SFT target is a response the task's reward scores 1.0, followed by <eos>: for arithmetic the
answer's digits (natural order, a leading "-" if negative), for math_word and code_io the row's
`solution` (a \\boxed{} answer; a fenced program). The prompt is tokenized as
`tokenizer(prompt).input_ids` (no BOS), as the RL loop does; the loss covers only the answer and
<eos>. Training stops after --steps optimizer steps (deterministic), or earlier at --minutes.

The output folder holds the model and tokenizer (save_pretrained) and warmup_report.json: the
settings, the loss and eval curve, wall time, held-out greedy accuracy and pass@k at temperature
1, and the settings the RL run should use (`rl_config`).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rewards import RewardSpec, compute_rewards
from deltarl.rl.data.tasks import make_task
from deltarl.rollout import EmbeddedEngine, SamplingParams

# The reward that scores each task in RL, and so here: its first part is 1.0 for a right response
REWARDS = {"arithmetic": {"name": "accuracy", "fn": "arithmetic"},
           "math_word": {"name": "math", "fn": "math", "extract": "boxed"},
           "code_io": {"name": "code", "fn": "code", "mode": "all"},
           "countdown": {"name": "accuracy", "fn": "countdown"}}
# MLA head sizes: the CPU demo's, and the released model's (vLLM's MLA prefill kernels accept only these)
MLA_DIMS = {"tiny": dict(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16),
            "released": dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (model, tokenizer, warmup_report.json)")
    # task
    p.add_argument("--task", choices=sorted(REWARDS), default="arithmetic", help="a built-in task (rl.data.tasks)")
    p.add_argument("--difficulty", type=int, default=2, help="arithmetic: operands have up to this many digits")
    p.add_argument("--ops", default="+", help="arithmetic: operators to draw from (any of + - *)")
    p.add_argument("--operands", type=int, default=2, help="arithmetic: numbers per prompt")
    p.add_argument("--trace", type=int, default=0,
                   help="countdown: targets are worked searches of up to this many attempts (0: the answer alone)")
    p.add_argument("--extra-train", action="append", default=[], metavar="JSON",
                   help='more training rows of the same task from other options, e.g. \'{"n": 1000, "difficulty": 6, '
                        '"kinds": ["units"]}\' (repeatable; held-out prompts are removed from them too)')
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--eval-size", type=int, default=200)
    # model
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4, help="every 4th layer is MLA, the others KDA")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=256, help="MLP intermediate size")
    p.add_argument("--mla-dims", choices=sorted(MLA_DIMS), default="tiny",
                   help="MLA head sizes: tiny (CPU demo) or released (Kimi Linear's, which vLLM's MLA kernels need)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    # optimisation
    p.add_argument("--steps", type=int, default=1100)
    p.add_argument("--minutes", type=float, default=None,
                   help="optional time cap (stops early; the result then depends on machine load)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0, help="model init and batch order")
    # evaluation
    p.add_argument("--samples", type=int, default=8, help="samples per prompt for pass@k")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of the pass@k samples")
    p.add_argument("--eval-every", type=int, default=100, help="greedy eval every N steps (0: only at the end)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also save the model every N steps to OUT/steps/step_N (0: only at the end), to pick a "
                        "checkpoint from the accuracy curve without training again")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


# --- data ---------------------------------------------------------------------------------------

def task_options(args) -> dict:
    """The make_task keyword arguments that define the task (besides n and seed)."""
    if args.task == "arithmetic":
        return {"difficulty": args.difficulty, "ops": args.ops, "operands": args.operands}
    if args.task == "countdown" and args.trace:
        return {"difficulty": args.difficulty, "trace": args.trace}
    return {"difficulty": args.difficulty}


def target_text(row) -> str:
    """What the policy should write for `row` (before <eos>): its `solution`, else its answer."""
    return row.get("solution", row["answer"])


def answer_budget(args, tokenizer=None, rows=()) -> int:
    """Tokens a response can need, <eos> included: for arithmetic sign + digits of the largest
    |result| + 1; for the other tasks the longest target among `rows` + 1, plus 8 to spare."""
    if args.task != "arithmetic":
        return max(len(tokenizer(target_text(r)).input_ids) for r in rows) + 1 + 8
    biggest = (10 ** args.difficulty - 1)
    bound = biggest ** args.operands if "*" in args.ops else biggest * args.operands
    return 1 + len(str(bound)) + 1


def eval_rows(args) -> list[dict]:
    return make_task(args.task, args.eval_size, seed=args.eval_seed, **task_options(args))


def extra_specs(args) -> list[dict]:
    """The --extra-train specs as dicts {"n", "difficulty", and task options}."""
    specs = [json.loads(text) for text in args.extra_train]
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("n"), int) or spec["n"] < 1:
            raise SystemExit(f"--extra-train needs a JSON object with an integer n >= 1, got {spec!r}")
    return specs


def train_rows(args, n: int, exclude: set[str]) -> list[dict]:
    """Up to n training rows from the train seed, none of whose prompts is in the held-out set
    (2-digit addition has only 10,000 prompts, so the two seeds alone would overlap), then the
    --extra-train rows (same seed and task, their own options; held-out prompts removed too)."""
    rows = make_task(args.task, n + 2 * len(exclude) + 100, seed=args.train_seed, **task_options(args))
    kept = [r for r in rows if r["prompt"] not in exclude][:n]
    for spec in extra_specs(args):
        options = {**task_options(args), **{k: v for k, v in spec.items() if k != "n"}}
        kept += [r for r in make_task(args.task, spec["n"], seed=args.train_seed, **options)
                 if r["prompt"] not in exclude]
    return kept


def encode(tokenizer, row) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer + <eos>, and labels: -100 on the prompt, the ids elsewhere."""
    prompt = tokenizer(row["prompt"]).input_ids
    target = tokenizer(target_text(row)).input_ids + [tokenizer.eos_token_id]
    return prompt + target, [-100] * len(prompt) + target


def collate(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example. No attention mask is needed: the model is causal, so
    pads after a sequence never reach its tokens, and their labels are -100."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
    return ids, labels


# --- model --------------------------------------------------------------------------------------

def build_model(args, tokenizer) -> KimiLinearForCausalLM:
    """A fresh hybrid model; vocab rounded up to a multiple of 64 (100 chars -> 128)."""
    torch.manual_seed(args.seed)
    config = tiny_config(
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=args.hidden, num_layers=args.layers,
        num_heads=args.heads, kda_head_dim=args.hidden // args.heads, intermediate_size=args.ffn,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **MLA_DIMS[args.mla_dims])
    return KimiLinearForCausalLM(config)


def lr_at(step: int, args) -> float:
    """Linear warm-up, then constant: stopping at any step gives the same prefix of training."""
    return args.lr * min(1.0, (step + 1) / max(1, args.warmup_steps))


# --- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(net, tokenizer, rows, max_tokens: int, n: int = 1, temperature: float = 0.0,
             seed: int = 0, task: str = "arithmetic") -> dict:
    """Score n completions per prompt with the task's reward (REWARDS): accuracy (mean over all samples),
    pass@n (a prompt counts if any sample is right) and `mixed`, the fraction of prompts whose
    samples are neither all right nor all wrong (those give GRPO a non-zero advantage)."""
    engine = EmbeddedEngine(net, tokenizer, max_batch_size=max(64, n))
    params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    out = engine.generate([tokenizer(r["prompt"]).input_ids for r in rows], params)
    spec = RewardSpec.from_config(REWARDS[task])
    scores = compute_rewards([rows[c.prompt_index]["prompt"] for c in out], [c.text for c in out],
                             [rows[c.prompt_index] for c in out], [spec]).parts[spec.name]
    right = [[0] * n for _ in rows]
    for c, score in zip(out, scores):
        right[c.prompt_index][c.sample_index] = score == 1.0
    net.train()                                  # the engine put it in eval mode
    per_prompt = [sum(r) for r in right]
    return {"accuracy": sum(per_prompt) / (n * len(rows)),
            f"pass@{n}": sum(k > 0 for k in per_prompt) / len(rows),
            "mixed": sum(0 < k < n for k in per_prompt) / len(rows),
            "examples": [{"prompt": rows[c.prompt_index]["prompt"], "response": c.text,
                          "answer": target_text(rows[c.prompt_index])} for c in out[: 5 * n: n]]}


# --- training -----------------------------------------------------------------------------------

def train(net, tokenizer, args, rows, evals, budget: int) -> dict:
    """AdamW on random batches of the training rows; returns the loss/eval history and timing."""
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(args.seed)
    examples = [encode(tokenizer, r) for r in rows]
    history, losses, start = [], [], time.perf_counter()
    net.train()
    bar = tqdm(range(args.steps), desc="warm-up", unit="step")
    for step in bar:
        ids, labels = collate(rng.sample(examples, args.batch_size), tokenizer.pad_token_id)
        ids, labels = ids.to(args.device), labels.to(args.device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss = net(ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        done = step + 1
        out_of_time = args.minutes is not None and time.perf_counter() - start > 60 * args.minutes
        if (args.eval_every and done % args.eval_every == 0 and done < args.steps) or out_of_time:
            acc = evaluate(net, tokenizer, evals, budget, task=args.task)["accuracy"]
            history.append({"step": done, "loss": sum(losses[-20:]) / len(losses[-20:]), "greedy_accuracy": acc,
                            "seconds": round(time.perf_counter() - start, 1)})
            tqdm.write(f"step {done}: loss {history[-1]['loss']:.3f}, held-out greedy accuracy {acc:.1%}")
        if args.save_every and done % args.save_every == 0 and done < args.steps:
            net.save_pretrained(Path(args.out) / "steps" / f"step_{done}")
            tokenizer.save_pretrained(Path(args.out) / "steps" / f"step_{done}")
        if out_of_time:
            tqdm.write(f"stopping at step {done}: the {args.minutes}-minute budget is spent")
            break
    return {"steps": done, "stopped_by": "time" if done < args.steps else "steps",
            "train_seconds": round(time.perf_counter() - start, 1),
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "history": history}


def rl_config(args, out: Path, budget: int) -> dict:
    """What the RL config (configs/tiny_cpu.yaml, math_cpu.yaml, code_cpu.yaml) needs to start RL from this
    checkpoint on the same task."""
    options = {k: v for k, v in task_options(args).items() if k != "difficulty"}
    shown = "".join(f", {k}={v!r}" for k, v in options.items())
    formats = {"arithmetic": "answer digits in natural order (leading '-' if negative), then <eos>",
               "math_word": "\\boxed{answer} in one of the row's equivalent forms, then <eos>",
               "code_io": "a ```python fenced program reading a, b from stdin, then <eos>",
               "countdown": "expr=value attempt lines (with --trace), the expression on the last line, then <eos>"}
    return {
        "model.path": str(out), "tokenizer": str(out),
        "data.task": args.task, "data.difficulty": args.difficulty, "data.task_options": options,
        "data.extra_train": [{"size": spec["n"], "difficulty": spec.get("difficulty", args.difficulty),
                              "task_options": {k: v for k, v in spec.items() if k not in ("n", "difficulty")}}
                             for spec in extra_specs(args)],
        "data.eval_size": args.eval_size, "eval_seed": args.eval_seed,
        "eval_rows": f"make_task({args.task!r}, {args.eval_size}, seed={args.eval_seed}, "
                     f"difficulty={args.difficulty}{shown})",
        "rollout.max_tokens": budget,
        "reward.functions": [REWARDS[args.task]],
        "prompt_tokens": "tokenizer(prompt).input_ids (no BOS, no chat template)",
        "response_format": formats[args.task],
    }


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    tokenizer = char_tokenizer()
    net = build_model(args, tokenizer).to(args.device)
    evals = eval_rows(args)
    rows = train_rows(args, 20_000, exclude={r["prompt"] for r in evals})
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{n_params / 1e6:.2f}M parameters; task {args.task} {task_options(args)}; {len(rows)} training rows, "
          f"{len(evals)} held-out (seed {args.eval_seed}, excluded from training)")

    budget = answer_budget(args, tokenizer, rows + evals)
    result = train(net, tokenizer, args, rows, evals, budget)
    greedy = evaluate(net, tokenizer, evals, budget, task=args.task)
    sampled = evaluate(net, tokenizer, evals, budget, n=args.samples, temperature=args.temperature,
                       seed=args.seed, task=args.task)
    wall = time.perf_counter() - start

    net.save_pretrained(out)
    tokenizer.save_pretrained(out)
    k = args.samples
    report = {
        "settings": vars(args), "parameters": n_params, "training_rows": len(rows),
        **{k2: v for k2, v in result.items() if k2 != "history"},
        "wall_seconds": round(wall, 1), "torch": torch.__version__, "machine": platform.machine(),
        "held_out": {"size": len(evals), "seed": args.eval_seed, "max_tokens": budget,
                     "greedy_accuracy": greedy["accuracy"],
                     f"pass@{k}": sampled[f"pass@{k}"], f"sample_accuracy@T{args.temperature}": sampled["accuracy"],
                     "mixed_prompts": sampled["mixed"], "greedy_examples": greedy["examples"]},
        "history": result["history"],
        "rl_config": rl_config(args, out, budget),
    }
    (out / "warmup_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"done in {wall:.0f}s ({result['steps']} steps): held-out greedy accuracy {greedy['accuracy']:.1%}, "
          f"pass@{k} (T={args.temperature}) {sampled[f'pass@{k}']:.1%}, per-sample {sampled['accuracy']:.1%}, "
          f"prompts with mixed samples {sampled['mixed']:.1%}; saved to {out}")
    return report


if __name__ == "__main__":
    main()
