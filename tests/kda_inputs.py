"""Random KDA inputs in realistic ranges, shared by the kernel tests."""
import os

import torch
import torch.nn.functional as F


def fresh_seed() -> int:
    """A seed for one test: $KDA_TEST_SEED when set (to rerun a failure), else a new random one. Printed,
    and pytest shows a failed test's output, so every failure names the seed that reproduces it."""
    env = os.environ.get("KDA_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(4), "little")
    print(f"KDA_TEST_SEED={seed}")
    return seed


def kda_inputs(B, T, H, K, V, dtype=torch.float64, device="cpu", num_states=None, seed=None,
               normalized=True):
    """q, k, v, g, beta, initial_state with unit-norm keys, decays exp(g) in (0, 1), beta in (0, 1).
    seed None draws one from torch's global generator (seeded per test from fresh_seed)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(torch.randint(0, 2**31, ())) if seed is None else seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k = randn(B, T, H, K), randn(B, T, H, K)
    if normalized:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    v = randn(B, T, H, V)
    g = -F.softplus(randn(B, T, H, K)) * 0.3
    beta = torch.sigmoid(randn(B, T, H))
    h0 = randn(num_states or B, H, K, V) * 0.5
    cast = lambda x: x.to(device=device, dtype=dtype)
    return cast(q), cast(k), cast(v), g.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype), \
        cast(beta), h0.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def max_rel_err(a, b):
    """max |a - b| / max |b|: the largest error against the largest entry, for the gate-parameter
    gradients (dA_log [H], ddt_bias [H*K]), sums whose single entries can cancel to near zero."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def gate_sum_scales(x, ref):
    """dA_log and ddt_bias are sums over tokens (dA_log also over channels) that can cancel to near
    zero, so their error is measured against the size of the summed terms, sum |term|, taken from the
    float64 reference. With z = x + dt_bias and gate = -e^A_log softplus(z):
        ddt_bias[h, c] = sum_t dx[t, h, c]      dA_log[h] = sum_{t, c} dx softplus(z) / sigmoid(z)
    (d gate / d A_log = gate, d gate / d x = -e^A_log sigmoid(z))."""
    dx = ref["dg"].double()
    H, K = dx.shape[-2:]
    z = x["g"].double() + x["dt_bias"].double().view(H, K)
    terms = dx * F.softplus(z) / torch.sigmoid(z)
    assert torch.allclose(terms.sum((0, 1, 3)), ref["dA_log"].double(), rtol=1e-8, atol=1e-12)
    return {"dA_log": terms.abs().sum((0, 1, 3)), "ddt_bias": dx.abs().sum((0, 1)).reshape(-1)}


def gate_sum_errors(ours, ref, x):
    """{"dA_log", "ddt_bias": error of ours relative to the size of the summed terms (gate_sum_scales)}."""
    return {n: ((ours[n].double() - ref[n].double()).norm() / scale.norm()).item()
            for n, scale in gate_sum_scales(x, ref).items()}
