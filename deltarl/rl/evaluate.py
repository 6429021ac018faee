"""Held-out evaluation: greedy accuracy and pass@k on a fixed prompt set."""
from deltarl.rollout import SamplingParams


def accuracy_from_scores(scores: list[float]) -> list[bool]:
    """A sample is correct when its reward reaches 1 (the 0/1 verifiers)."""
    return [s >= 1.0 - 1e-6 for s in scores]


def evaluate(generate, tokenizer, rows, reward_specs, max_tokens: int, k: int, temperature: float, seed: int,
             reward_pool=None):
    """`generate(prompt_ids, params)` -> completions. Returns {"eval/greedy_accuracy", "eval/pass@k", ...}.

    Greedy accuracy decodes at temperature 0; pass@k draws k samples per prompt at `temperature` (the
    trainer passes rollout.eval_temperature, or rollout.temperature when that is null), unfiltered.
    `reward_pool`: the run's reward workers (rl.reward_workers), or None to score in this process."""
    from deltarl.rl.reward_workers import score_batch

    prompts = [r["prompt"] for r in rows]
    prompt_ids = [tokenizer(p).input_ids for p in prompts]
    metrics = {}
    settings = [("greedy", SamplingParams(temperature=0.0, max_tokens=max_tokens))]
    if k > 0:
        settings.append((f"pass@{k}", SamplingParams(n=k, temperature=temperature, max_tokens=max_tokens, seed=seed)))
    for name, params in settings:
        completions = generate(prompt_ids, params)
        texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        batch = score_batch(reward_pool, [prompts[c.prompt_index] for c in completions], texts,
                            [rows[c.prompt_index] for c in completions], reward_specs)
        first = next(iter(batch.parts.values()))
        correct = accuracy_from_scores(first)
        solved = [False] * len(rows)
        for c, ok in zip(completions, correct):
            solved[c.prompt_index] |= ok
        key = "greedy_accuracy" if name == "greedy" else name
        metrics[f"eval/{key}"] = sum(solved) / max(len(rows), 1)
        if name == "greedy":
            metrics["eval/greedy_reward"] = sum(batch.totals) / max(len(batch.totals), 1)
    return metrics
