"""Asynchronous RL (rl/rollout_queue.py): staleness 0 is the synchronous loop, staleness k samples from
the weights k versions back, a partial rollout resumed across a weight update continues exactly as the
new policy would from its prefix, a saved and restored queue continues as an uninterrupted one, and a
run with max_staleness and partial rollouts completes and resumes after kill -9 through Ray.

The queue-level tests drive one real EmbeddedEngine in this process through the driver's engine face
(`InProcessEngines`): an engine actor runs its calls in submission order, so running each call when
it is submitted gives the same results as the Ray actors (which the run-level tests use)."""
import copy
import io
import json
import random

import pytest
import torch

from deltarl.rewards import RewardSpec
from deltarl.rl.config import load_config
from deltarl.rl.rollout_queue import RolloutQueue
from deltarl.rl.trainer import PromptStream, collect, load_rows, score
from deltarl.rollout import EmbeddedEngine, SamplingParams
from tests.test_rl_loop import (SMALL, kill_when_checkpointed, metrics_by_step, policy_tensors, run_dir_of,
                                run_rl)

WARM = "checkpoints/arithmetic-warmup"


class InProcessEngines:
    """`rl.engines.Engines`' driver face over one EmbeddedEngine: submit / wait / generate and the
    version of the weights it holds."""

    def __init__(self, engine):
        self.engine, self.version = engine, 0

    def submit(self, prompt_ids, params):
        return self.engine.generate(prompt_ids, params), self.version

    def wait(self, pending):
        completions, version = pending
        return completions, [version] * len(completions)

    def generate(self, prompt_ids, params):
        return self.engine.generate(prompt_ids, params)

    def settle(self):
        """(weights load at once here: nothing is left in flight)"""


class Setup:
    """A config, the warm-up policy in an engine, weights of versions 0, 1, 2, ... (version v: the warm-up
    weights plus v times a fixed perturbation, standing in for learner steps) and the task's rows."""

    def __init__(self, overrides, seed):
        from deltarl.model import KimiLinearForCausalLM, load_tokenizer
        self.cfg = load_config("configs/tiny_cpu.yaml", ["rollout.n=4", "rollout.prompts_per_step=3",
                                                         "rollout.max_tokens=6", "data.train_size=64",
                                                         "data.eval_size=8", f"run.seed={seed}", *overrides])
        self.tokenizer = load_tokenizer(WARM)
        model = KimiLinearForCausalLM.from_pretrained(WARM, torch_dtype=torch.float32)
        self.base = {k: v.clone() for k, v in model.state_dict().items()}
        g = torch.Generator().manual_seed(seed)
        self.delta = {k: torch.randn(v.shape, generator=g) * 0.02 if v.is_floating_point() else 0
                      for k, v in self.base.items()}
        self.engines = InProcessEngines(EmbeddedEngine(model, self.tokenizer, max_batch_size=64))
        self.rows = load_rows(self.cfg, self.tokenizer)[0]
        self.specs = [RewardSpec.from_config(vars(f)) for f in self.cfg.reward.functions]

    def weights(self, version):
        return {k: v + version * self.delta[k] if v.is_floating_point() else v for k, v in self.base.items()}

    def load(self, version):
        """The learner's sync of policy `version` into the engine."""
        self.engines.engine.update_weights(self.weights(version))
        self.engines.version = version

    def stream(self, position=0):
        return PromptStream(self.rows, self.cfg.run.seed, True, position)

    def queue(self, stream):
        return RolloutQueue(self.cfg, self.engines, self.tokenizer, stream,
                            lambda rows, completions: score(self.cfg, self.tokenizer, rows, completions, self.specs)[1])

    def reference(self, version, prompt_ids, params):
        """What policy `version` generates for `prompt_ids` (a fresh engine of those weights)."""
        from deltarl.model import KimiLinearForCausalLM
        model = KimiLinearForCausalLM.from_pretrained(WARM, torch_dtype=torch.float32)
        model.load_state_dict(self.weights(version))
        return EmbeddedEngine(model, self.tokenizer, max_batch_size=64).generate(prompt_ids, params)


def same_batches(a, b):
    (x, rx), (y, ry) = a, b
    assert x.prompt_ids == y.prompt_ids and x.response_ids == y.response_ids
    assert torch.equal(x.rollout_logprobs, y.rollout_logprobs) and torch.equal(x.mask, y.mask)
    assert torch.equal(x.group_ids, y.group_ids) and torch.equal(x.truncated, y.truncated)
    assert torch.equal(rx, ry)


def test_staleness_zero_is_the_synchronous_loop():
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    s = Setup([], seed)
    stream, synchronous = s.stream(), []
    for step in (1, 2, 3):
        s.load(step - 1)
        synchronous.append(collect(s.cfg, s.engines, s.tokenizer, stream, s.specs, step, {}))
    stream = s.stream()
    queue = s.queue(stream)
    for step in (1, 2, 3):
        s.load(step - 1)
        queue.fill(step)
        metrics = {}
        same_batches(queue.take(step, metrics), synchronous[step - 1])
        assert metrics["async/staleness_max"] == 0 and metrics["async/staleness_0_frac"] == 1.0


def test_staleness_zero_with_partial_rollouts_stays_on_policy():
    """k = 0 with partial rollouts: the sequences still decoding after their round are resumed by rounds
    without new prompts, so step t trains on exactly round t's prompts, all sampled by version t - 1."""
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    s = Setup(["rollout.partial=true", "rollout.partial_tokens=2"], seed)
    stream, order = s.stream(), s.stream()
    queue = s.queue(stream)
    P = s.cfg.rollout.prompts_per_step
    for step in (1, 2, 3):
        s.load(step - 1)
        queue.fill(step)
        metrics = {}
        batch, _ = queue.take(step, metrics)
        assert metrics["async/staleness_max"] == 0 and stream.position == P * step, (seed, metrics)
        prompts = [s.tokenizer(r["prompt"]).input_ids for r in order.take(P)]
        assert batch.prompt_ids == [p for p in prompts for _ in range(s.cfg.rollout.n)], seed
    assert metrics["async/partial_samples_frac"] > 0, "nothing paused: the test did not exercise partial rollouts"


def test_dynamic_sampling_in_the_queue_trains_only_on_groups_with_different_rewards():
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    s = Setup(["algorithm.max_staleness=1", "algorithm.dynamic_sampling=true", "rollout.prompts_per_step=4"], seed)
    queue = s.queue(s.stream())
    s.load(0)
    dropped = 0
    for step in (1, 2, 3):
        queue.fill(step + 1)
        metrics = {}
        batch, rewards = queue.take(step, metrics)
        dropped += metrics["rollout/dropped_groups"]
        for g in batch.group_ids.unique():
            assert rewards[batch.group_ids == g].unique().numel() > 1, seed
        s.load(step)
    assert dropped > 0, f"seed {seed}: every group was mixed; the filter was not exercised"


@pytest.mark.parametrize("k", [1, 2])
def test_staleness_k_samples_from_the_weights_k_versions_back(k):
    """With max_staleness k, step t trains on round t, generated by the policy of step max(t - 1 - k, 0)
    with round t's prompts and seed."""
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    s = Setup([f"algorithm.max_staleness={k}"], seed)
    queue, order = s.queue(s.stream()), s.stream()
    s.load(0)
    P = s.cfg.rollout.prompts_per_step
    for step in (1, 2, 3, 4):
        queue.fill(step + k)
        metrics = {}
        batch, _ = queue.take(step, metrics)
        version = max(step - 1 - k, 0)
        assert metrics["async/staleness_max"] == step - 1 - version
        prompts = [s.tokenizer(r["prompt"]).input_ids for r in order.take(P)]
        params = SamplingParams(n=s.cfg.rollout.n, temperature=1.0, max_tokens=s.cfg.rollout.max_tokens,
                                seed=s.cfg.run.seed * 1_000_003 + step)
        expected = s.reference(version, prompts, params)
        assert batch.response_ids == [c.token_ids for c in expected], (seed, step)
        s.load(step)                                # the learner's step, synced after the rounds in flight


def test_partial_rollout_resumed_across_a_weight_update_is_the_new_policys_continuation():
    """Greedy, float32: the first partial_tokens tokens are policy 0's, the rest exactly what policy 1
    generates from the prompt plus that prefix (tokens and logprobs), and each token knows its version."""
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    s = Setup(["rollout.partial=true", "rollout.partial_tokens=3", "rollout.max_tokens=6",
               "rollout.prompts_per_step=8"], seed)
    s.cfg.rollout.temperature = 0.0        # greedy (a run refuses 0: the learner divides by it)
    s.cfg.rollout.n = 1
    queue = s.queue(s.stream())
    s.load(0)
    queue.fill(1)
    queue.drain()                          # round 1, policy 0: each sequence stops or pauses after 3 tokens
    s.load(1)
    queue.fill(2)
    queue.drain()                          # round 2, policy 1: the paused ones resume from their prefixes
    prompts = [s.tokenizer(r["prompt"]).input_ids for r in s.stream().take(8)]
    greedy = dict(n=1, temperature=0.0, max_tokens=3)
    round1 = s.reference(0, prompts, SamplingParams(**greedy))
    paused = [i for i, c in enumerate(round1) if c.finish_reason == "length"]
    assert paused, f"seed {seed}: every sequence stopped within 3 tokens; nothing was resumed"
    resumed = dict(zip(paused, s.reference(1, [prompts[i] + round1[i].token_ids for i in paused],
                                           SamplingParams(**greedy))))
    sequences = {q.group: q for g in queue.ready for q in g.sequences}
    for i, c in enumerate(round1):
        seq = sequences[i]                                     # round 1's groups are 0..7, all finished now
        tail = resumed[i] if i in resumed else None
        assert seq.tokens == c.token_ids + (tail.token_ids if tail else []), seed
        assert seq.logprobs == c.logprobs + (tail.logprobs if tail else []), seed
        assert seq.versions == [0] * len(c.token_ids) + [1] * (len(tail.token_ids) if tail else 0), seed


def test_a_restored_queue_continues_as_the_uninterrupted_one():
    """Drained and saved after step 2 (as at a checkpoint, in both runs), then restored into a new queue
    on a new prompt stream at the saved position: steps 3 and 4 give the same batches."""
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    s = Setup(["algorithm.max_staleness=1", "rollout.partial=true", "rollout.partial_tokens=2"], seed)

    def run(steps, queue):
        out = []
        for step in steps:
            queue.fill(step + 1)
            out.append(queue.take(step, {}))
            s.load(step)
            if step == 2:
                queue.drain()
        return out

    s.load(0)
    stream = s.stream()
    whole = run([1, 2, 3, 4], s.queue(stream))
    s.load(0)
    stream = s.stream()
    queue = s.queue(stream)
    run([1, 2], queue)
    buffer = io.BytesIO()
    torch.save(queue.state_dict(), buffer)
    restored = s.queue(s.stream(stream.position))
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for a, b in zip(run([3, 4], restored), whole[2:]):
        same_batches(a, b)


ASYNC = ["algorithm.max_staleness=1", "rollout.partial=true", "rollout.partial_tokens=2"]


def test_async_run_with_partial_rollouts_resumes_after_kill_9_where_an_uninterrupted_run_ends(tmp_path):
    common = [*SMALL, *ASYNC, "run.steps=4", "run.save_every=2", "run.eval_every=0"]
    whole = run_rl([*common, f"run.output_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    whole_dir = run_dir_of(whole.stdout)
    steps = metrics_by_step(whole_dir)
    assert sorted(steps) == [1, 2, 3, 4]
    assert steps[1]["async/staleness_max"] == 0 and steps[3]["async/staleness_mean"] > 0
    assert all("actor/rollout_probs_diff_mean" in steps[t] and "perf/samples_per_s" in steps[t] for t in steps)
    assert any(steps[t]["async/partial_samples_frac"] > 0 for t in steps)
    assert (whole_dir / "checkpoints" / "step_000002" / "rollout_queue.pt").exists()

    args = [*common, f"run.output_dir={tmp_path / 'killed'}"]
    run_dir = kill_when_checkpointed(args, tmp_path / "killed", at_least=2)
    resumed = run_rl([*args, f"resume={run_dir}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert sorted(records) == [1, 2, 3, 4], records
    ours, theirs = policy_tensors(run_dir / "final" / "policy"), policy_tensors(whole_dir / "final" / "policy")
    assert ours and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = metrics_by_step(run_dir)
    assert [again[t]["reward/mean"] for t in (3, 4)] == [steps[t]["reward/mean"] for t in (3, 4)]
