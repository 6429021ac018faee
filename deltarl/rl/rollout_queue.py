"""Asynchronous rollouts: generation runs ahead of training by up to `algorithm.max_staleness` weight
versions, and with `rollout.partial` a long sequence pauses at a weight update and resumes after it.

The engines work through generation *rounds*, one per training step, each `rollout.prompts_per_step`
new prompts x `rollout.n` samples plus the paused sequences of earlier rounds. Before step t the driver
makes sure rounds up to t + k have been submitted (`fill`); an engine runs its calls in order, so a
round submitted before the weight sync of step t - 1 is sampled by the weights of step t - 1 - ... and
the learner's step t trains while the engines already generate the rounds after it. A weight sync is
queued behind the rounds already submitted: weights reach the engines between their rounds. With k = 0
each round is submitted right before its step and this is the synchronous loop (`trainer.collect`,
bitwise: tests/test_async.py).

Partial rollouts: a round decodes at most `rollout.partial_tokens` new tokens per sequence. A sequence
that neither stopped nor reached `rollout.max_tokens` is paused and resubmitted in the next round as
its prompt plus what it has so far (vLLM's abort-and-resubmit; the embedded engine does the same: it
prefills the prefix under the new weights rather than keeping a state computed by the old ones, so
every token after the update is exactly what the new policy samples from that prefix). A group is
scored when all its samples are finished; each token records the policy version that sampled it.

`take(step)` hands the learner the oldest `prompts_per_step` scored groups (when it must wait for paused
sequences and no round is in flight, it submits a round that only resumes them, so each step still draws
`prompts_per_step` new prompts and k = 0 stays on-policy with partial rollouts); a group whose oldest
token is more than `max_staleness` versions behind is dropped or kept for the off-policy correction
(`algorithm.stale_samples`). With `algorithm.dynamic_sampling` a group whose rewards are all equal is
dropped when scored, and a step short of groups waits for up to `max_refills` extra rounds of new
prompts. The queue's state after `drain` is saved with each checkpoint, so a
resumed run continues exactly where an uninterrupted one would.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from deltarl.rollout import Completion, SamplingParams

from .algorithms import dynamic_sampling_filter
from .samples import batch_from_completions

RESUME_SEED_OFFSET = 500_000_003      # resumed sequences' sampling seeds, apart from the new prompts'


@dataclass
class Sequence:
    """One response in the making."""
    group: int                  # its group's id
    sample: int                 # its index in the group
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)    # the policy version that sampled each token
    rounds: int = 0             # rounds it has been decoded in
    finish_reason: str | None = None                      # None while paused


@dataclass
class Group:
    """A prompt's `rollout.n` samples, scored together once all are finished."""
    row: dict
    prompt_ids: list[int]
    sequences: list[Sequence]
    rewards: list[float] | None = None
    parts: dict | None = None


@dataclass
class Round:
    index: int
    fresh: object | None        # engines.Pending of the new prompts, or None (a resume-only round)
    fresh_groups: list[int]     # their group ids, in prompt order
    resumed: object | None      # engines.Pending of the paused sequences, or None
    resumed_sequences: list[Sequence]


class RolloutQueue:
    """Generation rounds in flight, paused sequences, and scored groups waiting for the learner.
    `score(rows, completions)` returns a rewards.RewardBatch (the trainer's reward path)."""

    def __init__(self, cfg, engines, tokenizer, stream, score, max_refills: int = 3):
        self.cfg, self.engines, self.tokenizer, self.stream, self.score = cfg, engines, tokenizer, stream, score
        self.max_refills = max_refills          # dynamic sampling: extra fresh rounds a step may wait for
        r = cfg.rollout
        self.budget = (r.partial_tokens or max(1, r.max_tokens // 4)) if r.partial else r.max_tokens
        self.submitted = 0                      # fresh rounds submitted so far (one per step)
        self.resumes = 0                        # rounds of any kind, for the resumed parts' seeds
        self.next_group = 0
        self.groups: dict[int, Group] = {}      # unfinished groups
        self.paused: list[Sequence] = []        # to resume in the next round
        self.ready: deque[Group] = deque()      # scored, oldest first
        self.rounds: deque[Round] = deque()     # in flight, oldest first
        self.failures: dict[str, int] = {}      # reward failures since the last take
        self.uniform = 0                        # groups dynamic sampling dropped since the last take
        self.reward_s = 0.0

    # --- producing ----------------------------------------------------------------------------------
    def fill(self, rounds: int):
        """Submit rounds until `rounds` have been submitted in all."""
        while self.submitted < rounds:
            self._submit_round()

    def _seed(self, index: int) -> int:
        return self.cfg.run.seed * 1_000_003 + index          # collect()'s seed of step `index`

    def _submit_round(self, fresh: bool = True):
        """A round: (with `fresh`) the next prompts_per_step prompts x n, and the paused sequences.
        Fresh rounds are numbered 1, 2, ... (their seeds are collect()'s); a resume-only round, which
        `take` submits when it waits for paused sequences, takes no prompts."""
        r = self.cfg.rollout
        self.resumes += 1                                   # every round's resumed part has its own seed
        fresh_groups, pending = [], None
        if fresh:
            self.submitted += 1
            for row in self.stream.take(r.prompts_per_step):
                gid, self.next_group = self.next_group, self.next_group + 1
                self.groups[gid] = Group(row, self.tokenizer(row["prompt"]).input_ids,
                                         [Sequence(gid, j) for j in range(r.n)])
                fresh_groups.append(gid)
            params = SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                    max_tokens=min(self.budget, r.max_tokens), ignore_eos=r.ignore_eos,
                                    seed=self._seed(self.submitted))
            pending = self.engines.submit([self.groups[g].prompt_ids for g in fresh_groups], params)
        resumed, paused = None, self.paused
        if paused:
            prompts = [self.groups[s.group].prompt_ids + s.tokens for s in paused]          # prompt + prefix
            resumed = self.engines.submit(prompts, SamplingParams(
                n=1, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_tokens=self.budget,
                ignore_eos=r.ignore_eos, seed=self._seed(self.resumes) + RESUME_SEED_OFFSET))
        self.paused = []
        self.rounds.append(Round(self.submitted, pending, fresh_groups, resumed, paused))

    def _fetch_oldest(self):
        """Wait for the oldest round in flight; score the groups it finished, pause the rest."""
        round = self.rounds.popleft()
        decoded = []                                                       # sequences of this round
        completions, versions = self.engines.wait(round.fresh) if round.fresh is not None else ([], [])
        for c, v in zip(completions, versions):
            decoded.append(self.groups[round.fresh_groups[c.prompt_index]].sequences[c.sample_index])
            self._extend(decoded[-1], c, v)
        if round.resumed is not None:
            completions, versions = self.engines.wait(round.resumed)
            for c, v in zip(completions, versions):
                decoded.append(round.resumed_sequences[c.prompt_index])
                self._extend(decoded[-1], c, v)
        self.paused += [s for s in decoded if s.finish_reason is None]
        touched = sorted({s.group for s in decoded})
        finished = [g for g in touched if all(s.finish_reason is not None for s in self.groups[g].sequences)]
        self._score([self.groups.pop(g) for g in finished])

    def _extend(self, seq: Sequence, c: Completion, version: int):
        """Append a round's tokens (at most up to rollout.max_tokens) to `seq` and settle whether it
        finished: stopped, or at max_tokens; otherwise it is paused."""
        room = self.cfg.rollout.max_tokens - len(seq.tokens)
        tokens = c.token_ids[:room]
        seq.tokens += tokens
        seq.logprobs += c.logprobs[:room]
        seq.versions += [version] * len(tokens)
        seq.rounds += 1
        if c.finish_reason == "stop" and len(c.token_ids) <= room:
            seq.finish_reason = "stop"
        elif len(seq.tokens) >= self.cfg.rollout.max_tokens:
            seq.finish_reason = "length"
        else:
            seq.finish_reason = None

    def _score(self, groups: list[Group]):
        if not groups:
            return
        t0 = time.perf_counter()
        batch = self.score([g.row for g in groups], _completions(groups))
        n = self.cfg.rollout.n
        for j, g in enumerate(groups):
            g.rewards = batch.totals[j * n:(j + 1) * n]
            g.parts = {k: v[j * n:(j + 1) * n] for k, v in batch.parts.items()}
        for k, v in batch.failures.items():
            self.failures[k] = self.failures.get(k, 0) + v
        if self.cfg.algorithm.dynamic_sampling:        # DAPO: a group of equal rewards has no advantage
            one_group = torch.zeros(n, dtype=torch.long)
            informative = [bool(dynamic_sampling_filter(torch.tensor(g.rewards), one_group).all()) for g in groups]
            self.uniform += informative.count(False)
            groups = [g for g, keep in zip(groups, informative) if keep]
        self.ready.extend(groups)
        self.reward_s += time.perf_counter() - t0

    # --- consuming ----------------------------------------------------------------------------------
    def take(self, step: int, metrics: dict):
        """The oldest `rollout.prompts_per_step` scored groups for training step `step` (waiting for
        rounds; with none in flight, submitting one that resumes the paused sequences, or a fresh one when
        none is paused), as (RolloutBatch, rewards [B]); records the
        rollout metrics, staleness counted in versions behind the policy being trained (step - 1)."""
        algo, target = self.cfg.algorithm, self.cfg.rollout.prompts_per_step
        t0, self.reward_s = time.perf_counter(), 0.0
        taken, dropped, extra, refills = [], 0, 0, 0
        while len(taken) < target:
            if not self.ready:
                if not self.rounds:    # waiting on paused sequences: resume them (new prompts only if none)
                    if not self.paused:
                        if refills == self.max_refills:
                            break      # dynamic sampling found too few informative groups: train on these
                        refills += 1
                    self._submit_round(fresh=not self.paused)
                    extra += 1
                self._fetch_oldest()
                continue
            group = self.ready.popleft()
            oldest = min((v for s in group.sequences for v in s.versions), default=step - 1)
            if algo.stale_samples == "drop" and step - 1 - oldest > algo.max_staleness:
                dropped += 1
                continue
            taken.append(group)
        waited = time.perf_counter() - t0
        batch, rewards = self._batch(taken)
        metrics.update(self._metrics(taken, step, waited, dropped, extra))
        return batch, rewards

    def _batch(self, groups: list[Group]):
        batch = batch_from_completions([g.prompt_ids for g in groups], _completions(groups))
        return batch, torch.tensor([x for g in groups for x in g.rewards])

    def _metrics(self, groups, step, waited, dropped, extra) -> dict:
        from .reward_workers import reward_metrics
        staleness = torch.tensor([step - 1 - v for g in groups for s in g.sequences for v in s.versions] or [0])
        samples = [s for g in groups for s in g.sequences]
        out = {"time/rollout_s": waited - self.reward_s, "time/reward_s": self.reward_s,
               "async/staleness_mean": staleness.float().mean().item(),
               "async/staleness_max": float(staleness.max()),
               "async/dropped_stale_groups": float(dropped), "async/extra_rounds": float(extra),
               "rollout/dropped_groups": float(self.uniform),
               "async/rounds_ahead": float(self.submitted - step),
               "async/partial_samples_frac": sum(s.rounds > 1 for s in samples) / max(len(samples), 1),
               "async/paused_sequences": float(sum(s.rounds > 0 and s.finish_reason is None
                                                   for g in self.groups.values() for s in g.sequences)),
               "rollout/generated_prompts": float(len(groups) + dropped)}
        for k in range(int(staleness.max()) + 1):
            out[f"async/staleness_{k}_frac"] = (staleness == k).float().mean().item()
        parts = {}
        for g in groups:
            for k, v in g.parts.items():
                parts.setdefault(k, []).extend(v)
        out.update(reward_metrics(parts, self.failures))
        self.failures, self.uniform = {}, 0
        return out

    # --- checkpoints ----------------------------------------------------------------------------------
    def drain(self):
        """Wait for every round in flight and the weight loads queued between them (before a checkpoint:
        its state then holds no engine work)."""
        while self.rounds:
            self._fetch_oldest()
        self.engines.settle()

    def state_dict(self) -> dict:
        """Everything needed to continue (after `drain`): counters, unfinished groups, the paused
        sequences (by group and sample) and the scored groups not yet trained on."""
        if self.rounds:
            raise RuntimeError("drain() the rollout queue before saving it")
        return {"submitted": self.submitted, "resumes": self.resumes, "next_group": self.next_group,
                "groups": self.groups,
                "paused": [(s.group, s.sample) for s in self.paused], "ready": list(self.ready),
                "failures": self.failures}

    def load_state_dict(self, state: dict):
        self.submitted, self.resumes, self.next_group = state["submitted"], state["resumes"], state["next_group"]
        self.groups, self.ready, self.failures = state["groups"], deque(state["ready"]), state["failures"]
        self.paused = [self.groups[g].sequences[j] for g, j in state["paused"]]
        self.rounds.clear()


def _completions(groups: list[Group]) -> list[Completion]:
    """The groups' sequences as engine completions, group j as prompt j (for scoring and the batch)."""
    return [Completion(j, s.sample, s.tokens, s.logprobs, s.finish_reason)
            for j, g in enumerate(groups) for s in g.sequences]
