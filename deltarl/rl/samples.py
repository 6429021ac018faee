"""The batch that flows rollout -> rewards -> advantages -> learner, as plain tensors and lists."""
from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    """B sampled responses. Response tensors are right-padded to T = the longest response."""
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: torch.Tensor      # [B, T] logprobs the rollout engine sampled with
    mask: torch.Tensor                  # [B, T] 1 on response tokens
    group_ids: torch.Tensor             # [B] samples of one prompt share an id
    truncated: torch.Tensor             # [B] bool: stopped by max_tokens
    advantages: torch.Tensor | None = None   # [B, T]
    old_logprobs: torch.Tensor | None = None  # [B, T] the policy's before this step's first update (PPO epochs)

    @property
    def size(self) -> int:
        return len(self.response_ids)

    def subset(self, index: list[int]) -> "RolloutBatch":
        pick = torch.tensor(index, dtype=torch.long)
        rows = lambda t: None if t is None else t[pick]  # noqa: E731
        return RolloutBatch([self.prompt_ids[i] for i in index], [self.response_ids[i] for i in index],
                            self.rollout_logprobs[pick], self.mask[pick], self.group_ids[pick], self.truncated[pick],
                            rows(self.advantages), rows(self.old_logprobs))


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """One batch from several (dynamic sampling's rounds), re-padded to the longest response."""
    responses = [r for b in batches for r in b.response_ids]
    logprobs = [b.rollout_logprobs[i, : len(b.response_ids[i])].tolist() for b in batches for i in range(b.size)]
    return RolloutBatch([p for b in batches for p in b.prompt_ids], responses, pad_right(logprobs),
                        pad_right([[1.0] * len(r) for r in responses]),
                        torch.cat([b.group_ids for b in batches]), torch.cat([b.truncated for b in batches]))


def pad_right(rows: list[list[float]], value=0.0, dtype=torch.float32) -> torch.Tensor:
    """Lists of different lengths -> [B, max_len] tensor padded with `value`."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    out = torch.full((len(rows), max(width, 1)), value, dtype=dtype)
    flat = [x for r in rows for x in r]
    if flat:      # one scatter of all values into the positions j < len(row)
        out[torch.arange(out.shape[1])[None, :] < lengths[:, None]] = torch.tensor(flat, dtype=dtype)
    return out


def batch_from_completions(prompt_ids: list[list[int]], completions) -> RolloutBatch:
    """Completions (ordered by prompt, then sample) -> RolloutBatch with one group per prompt."""
    responses = [c.token_ids for c in completions]
    return RolloutBatch(
        prompt_ids=[prompt_ids[c.prompt_index] for c in completions],
        response_ids=responses,
        rollout_logprobs=pad_right([c.logprobs for c in completions]),
        mask=pad_right([[1.0] * len(r) for r in responses]),
        group_ids=torch.tensor([c.prompt_index for c in completions]),
        truncated=torch.tensor([c.finish_reason == "length" for c in completions]),
    )


def micro_batches(batch: RolloutBatch, max_tokens: int) -> list[list[int]]:
    """Split sample indices into micro-batches of at most `max_tokens` packed tokens (at least one
    sample each): the learner packs each micro-batch into one row with no padding."""
    groups, current, used = [], [], 0
    for i in range(batch.size):
        n = len(batch.prompt_ids[i]) + len(batch.response_ids[i])
        if current and used + n > max_tokens:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    return groups + ([current] if current else [])
