"""The embedded engine: batched recurrent decoding with the project's own model and cache.

It is the default where vLLM is absent (CPU, tests). Sequences decode together; one that finishes leaves
the batch at once and waiting prompts are prefilled and join it (continuous batching), so one long
straggler does not hold a batch of finished sequences.
"""
from collections import deque
from dataclasses import dataclass, field

import torch

from deltarl.model import KimiLinearCache

from .params import Completion, SamplingParams
from .sampling import sample_tokens


@dataclass
class _Sequence:
    prompt_index: int
    sample_index: int
    generator: torch.Generator
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None


class EmbeddedEngine:
    """generate / update_weights / sleep / wake_up around a KimiLinearForCausalLM.

    max_batch_size bounds the sequences decoding at once (n samples of a prompt count n times);
    max_prefill_tokens bounds the padded prompt tokens prefilled together (at least one prompt), so long
    prompts join the batch a few at a time instead of all at once.
    """

    def __init__(self, model, tokenizer=None, max_batch_size: int = 64, max_prefill_tokens: int = 65536):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.device = next(model.parameters()).device
        self.asleep = False

    # --- the engine face -------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Completions ordered by prompt, then sample: n per prompt."""
        if self.asleep:
            raise RuntimeError("the engine is asleep: call wake_up() first")
        if params.n > self.max_batch_size:
            raise ValueError(f"SamplingParams.n={params.n} exceeds max_batch_size={self.max_batch_size}")
        waiting = deque(enumerate(prompt_token_ids))
        active: list[_Sequence] = []
        cache, logits = KimiLinearCache(self.model.config), None
        done: list[_Sequence] = []
        while waiting or active:
            joining = []
            while (waiting and len(active) + len(joining) * params.n + params.n <= self.max_batch_size
                   and (not joining or self._padded_tokens(joining, waiting[0]) <= self.max_prefill_tokens)):
                joining.append(waiting.popleft())
            if joining:
                new_seqs, new_cache, new_logits = self._prefill(joining, params)
                active += new_seqs
                cache.merge(new_cache)
                logits = new_logits if logits is None else torch.cat([logits, new_logits])
            tokens, logprobs = sample_tokens(logits, params.temperature, params.top_k, params.top_p,
                                             [s.generator for s in active])
            for seq, token, logprob in zip(active, tokens.tolist(), logprobs.tolist()):
                self._append(seq, token, logprob, params)
            keep = [i for i, s in enumerate(active) if s.finish_reason is None]
            done += [s for s in active if s.finish_reason is not None]
            active = [active[i] for i in keep]
            if not active:
                cache, logits = KimiLinearCache(self.model.config), None
                continue
            index = torch.tensor(keep, device=self.device)
            if len(keep) < len(tokens):         # some finished: drop their cache rows (a copy of the cache)
                cache.select(index)
            feed = tokens[index][:, None]
            logits = self.model(feed, past_key_values=cache, use_cache=True).logits[:, -1]
        done.sort(key=lambda s: (s.prompt_index, s.sample_index))
        return [Completion(s.prompt_index, s.sample_index, s.token_ids, s.logprobs, s.finish_reason, s.text)
                for s in done]

    def update_weights(self, named_tensors):
        """Copy new values into the model's parameters and buffers, by name, without rebuilding anything."""
        own = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        pairs = named_tensors.items() if hasattr(named_tensors, "items") else named_tensors
        with torch.no_grad():
            for name, tensor in pairs:
                if name not in own:
                    raise KeyError(f"update_weights: the model has no tensor named {name!r}")
                own[name].copy_(tensor.to(own[name].device, own[name].dtype))

    def receive_weights(self, address, rank: int) -> dict:
        """One bucketed broadcast sync from the learner (`weight_transfer`): join the group as `rank` at
        the first call, then load each bucket through `update_weights` as it arrives."""
        from .weight_transfer import WeightReceiver
        if not hasattr(self, "_receiver"):
            self._receiver = WeightReceiver()
        return self._receiver.receive(address, rank, self.update_weights)

    def weight_ranks(self) -> int:
        """One process: one rank of the weight group."""
        return 1

    def weights_digest(self) -> str:
        """`weight_transfer.weights_digest` of the model's parameters and buffers."""
        from .weight_transfer import weights_digest
        return weights_digest([*self.model.named_parameters(), *self.model.named_buffers()])

    def sleep(self):
        """Hand the accelerator back: move the weights to host memory (nothing to free on the CPU)."""
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self.asleep = True

    def wake_up(self):
        self.model.to(self.device)
        self.asleep = False

    # --- internals -------------------------------------------------------------------------
    @staticmethod
    def _padded_tokens(joining, candidate):
        """Tokens of the left-padded prefill batch if `candidate` joined `joining`."""
        return (len(joining) + 1) * max(len(ids) for _, ids in (*joining, candidate))

    def _prefill(self, prompts, params):
        """Prefill a group of prompts together (left-padded) and fan each out to its n samples."""
        width = max(len(ids) for _, ids in prompts)
        if width == 0:
            raise ValueError("generate: empty prompt (give at least one token, e.g. BOS)")
        pad = self.model.config.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for _, p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p in prompts], device=self.device)
        cache = KimiLinearCache(self.model.config)
        logits = self.model(ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1]
        fan_out = torch.arange(len(prompts), device=self.device).repeat_interleave(params.n)
        cache.select(fan_out)
        seqs = [_Sequence(index, j, self._generator(params.seed, index, j)) for index, _ in prompts
                for j in range(params.n)]
        return seqs, cache, logits[fan_out]

    @staticmethod
    def _generator(seed, prompt_index, sample_index):
        gen = torch.Generator()
        base = int(torch.randint(0, 2**62, ())) if seed is None else seed
        gen.manual_seed((base * 1_000_003 + prompt_index * 10_007 + sample_index) % 2**63)
        return gen

    def _append(self, seq, token, logprob, params):
        seq.token_ids.append(token)
        seq.logprobs.append(logprob)
        eos = self.model.config.eos_token_id
        eos_ids = set() if params.ignore_eos or eos is None else set(eos if isinstance(eos, list) else [eos])
        if token in eos_ids or token in params.stop_token_ids:
            seq.finish_reason = "stop"
        if self.tokenizer is not None and params.stop:
            text = self.tokenizer.decode(seq.token_ids, skip_special_tokens=True)
            hit = [text.index(s) for s in params.stop if s in text]
            if hit:
                seq.text, seq.finish_reason = text[: min(hit)], "stop"
        if seq.finish_reason is None and len(seq.token_ids) >= params.max_tokens:
            seq.finish_reason = "length"
        if seq.finish_reason is not None and seq.text is None and self.tokenizer is not None:
            seq.text = self.tokenizer.decode(seq.token_ids, skip_special_tokens=True)
