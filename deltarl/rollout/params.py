"""What a rollout engine is asked for and what it returns, the same for every engine."""
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """Sampling settings of one generate() call (vLLM's names and meanings).

    temperature 0 is greedy. top_k <= 0 and top_p == 1 disable those filters. `n` samples per prompt
    share one prefill. `seed` makes each sample reproducible whatever else is in the batch.
    """
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self):
        checks = {
            "n": self.n >= 1,
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "max_tokens": self.max_tokens >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SamplingParams.{name}: invalid value {getattr(self, name)!r} "
                                 "(n >= 1, temperature >= 0, 0 < top_p <= 1, max_tokens >= 1)")


@dataclass
class Completion:
    """One sampled continuation: its tokens, the logprob of each under the distribution it was sampled
    from, and why it ended ("stop": EOS, a stop token or a stop string; "length": max_tokens)."""
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str | None = None
