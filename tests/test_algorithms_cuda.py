"""rl.algorithms on CUDA: same numbers as on the CPU, bitwise repeatable, and no op that
torch.use_deterministic_algorithms(True) would refuse (skipped without a GPU)."""
import warnings

import pytest
import torch

from deltarl.rl.algorithms import (compute_advantages, dynamic_sampling_filter, entropy_from_logits, kl_loss,
                           overlong_shaping, policy_loss)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _inputs(B=64, T=700, V=300, n=8):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return {
        "mask": mask, "lengths": lengths,
        "rewards": torch.randint(0, 2, (B,), generator=g).float(),
        "ids": torch.arange(B // n).repeat_interleave(n),
        "logp": -torch.rand(B, T, generator=g) * 3, "old": -torch.rand(B, T, generator=g) * 3,
        "rollout": -torch.rand(B, T, generator=g) * 3, "ref": -torch.rand(B, T, generator=g) * 3,
        "logits": torch.randn(4, 50, V, generator=g) * 2,
    }


def _run_all(device):
    x = {k: v.to(device) for k, v in _inputs().items()}
    out = {}
    for name in ("grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"):
        out[name] = compute_advantages(name, x["rewards"], x["ids"], x["mask"],
                                       token_rewards=-0.01 * x["old"] if name.startswith("reinforce") else None)
    out["returns_gamma"] = compute_advantages("reinforce_pp", x["rewards"], x["ids"], x["mask"], gamma=0.99)
    logp = x["logp"].clone().requires_grad_(True)
    loss, stats = policy_loss(logp, x["old"], out["grpo"], x["mask"], aggregation="sequence",
                              rollout_logprobs=x["rollout"], tis_cap=2.0)
    (loss + 0.1 * kl_loss(logp, x["ref"], x["mask"])).backward()
    out.update(loss=loss.detach(), grad=logp.grad, **stats)
    logits = x["logits"].clone().requires_grad_(True)
    entropy = entropy_from_logits(logits, chunk_size=64)
    entropy.sum().backward()
    out.update(entropy=entropy.detach(), entropy_grad=logits.grad)
    out["keep"] = dynamic_sampling_filter(x["rewards"], x["ids"])
    out["shaping"] = overlong_shaping(x["lengths"], 700, 100)
    return {k: v.cpu() for k, v in out.items()}


def test_cuda_matches_cpu_and_repeats_bitwise_under_deterministic_mode():
    cpu = _run_all("cpu")
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            first, second = _run_all("cuda"), _run_all("cuda")
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    refused = [str(w.message) for w in caught if "does not have a deterministic implementation" in str(w.message)]
    assert not refused, refused
    for key, value in cpu.items():
        assert torch.equal(first[key], second[key]), key
        torch.testing.assert_close(first[key], value, atol=1e-5, rtol=1e-4, msg=key)
