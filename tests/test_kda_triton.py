"""The Triton KDA kernels, run on the CPU by the Triton interpreter (TRITON_INTERPRET=1, set in
conftest.py when there is no GPU), against the float64 token-by-token oracle.

Small shapes (the interpreter is slow), fresh random inputs each run from one seed per test, printed
(KDA_TEST_SEED=<seed> reruns a failure with the same inputs); fp32 tolerance 1e-4 relative on the output,
the final state and every gradient, GATE_TOL on the gate parameters' gradients (see errors()).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from deltarl.kernels.kda import fused_recurrent_kda, naive_recurrent_kda
from tests.kda_inputs import fresh_seed, max_rel_err

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from deltarl.kernels.kda.triton_autograd import chunk_kda_triton  # noqa: E402
from deltarl.kernels.kda.triton_recurrent import fused_recurrent_kda_triton  # noqa: E402

# the kernels compute exp() of masked-out (i < j) exponents and discard them with tl.where; numpy
# in the interpreter warns about the overflow in the discarded lanes
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-4
GATE_TOL = 1e-3


@pytest.fixture(autouse=True)
def seed():
    """All of a test's randomness (inputs and cotangents) comes from one printed seed."""
    torch.manual_seed(fresh_seed())


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def errors(ours, ref, x):
    """{name: relative error} of the output, final state and every gradient (norm of the difference over
    the norm of the float64 oracle's). dA_log [H] and ddt_bias [H*K] are sums over all tokens whose
    entries can cancel to near zero, so theirs is max |difference| / max |oracle|, held to GATE_TOL: the
    gate cases have 2 or more heads, so max |oracle| of dA_log is rarely a cancelled one (measured on the
    interpreter over 6 seeds x 3 gate shapes: up to 3.1e-4 for a lone head, typically 1e-5)."""
    errs = {n: rel(ours[n], ref[n]) for n in ref}
    errs.update({n: max_rel_err(ours[n], ref[n]) for n in ("dA_log", "ddt_bias") if n in ref})
    return errs


def over_tolerance(errs):
    """The entries of {name: error} at or above their bound (pytest truncates a full dict)."""
    return {n: e for n, e in errs.items() if e >= (GATE_TOL if n in ("dA_log", "ddt_bias") else TOL)}


def _gen():
    """A generator seeded from torch's global one, which the autouse fixture seeded from the test's seed."""
    g = torch.Generator()
    g.manual_seed(int(torch.randint(0, 2**31, ())))
    return g


def make_inputs(B, T, H, K, V, n_lens=None, with_h0=True, gate=False, decay=0.5):
    """q, k l2-normalised (raw when the kernel normalises), decays in (0, 1), beta in (0, 1)."""
    gen = _gen()
    rn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    cu = None
    N = B
    if n_lens is not None:
        cu = torch.tensor([0] + list(torch.tensor(n_lens).cumsum(0)), dtype=torch.int32)
        assert int(cu[-1]) == T
        N = len(n_lens)
    x = dict(q=rn(B, T, H, K), k=rn(B, T, H, K), v=rn(B, T, H, V), beta=torch.rand(B, T, H, generator=gen))
    if gate:
        x["g"] = rn(B, T, H, K)
        x["A_log"] = torch.log(torch.rand(H, generator=gen) * 15 + 1)
        x["dt_bias"] = rn(H * K) * 0.5 - 1
    else:
        x["q"], x["k"] = F.normalize(x["q"], dim=-1), F.normalize(x["k"], dim=-1)
        x["g"] = -F.softplus(rn(B, T, H, K)) * decay
    if with_h0:
        x["initial_state"] = rn(N, H, K, V)
    return {n: t.to(DEV) for n, t in x.items()}, (cu.to(DEV) if cu is not None else None)


def fwd_bwd(fn, x, cu, do, dht, gate, double=False):
    leaves = {n: (t.double() if double else t.clone()).requires_grad_() for n, t in x.items()}
    o, ht = fn(**leaves, output_final_state=True, cu_seqlens=cu,
               use_qk_l2norm_in_kernel=gate, use_gate_in_kernel=gate)
    ((o * do.to(o.dtype)).sum() + (ht * dht.to(ht.dtype)).sum()).backward()
    return dict(o=o, ht=ht, **{"d" + n: t.grad for n, t in leaves.items()})


# (B, T, H, K, V, varlen lengths, initial state, gate + l2norm in kernel)
CHUNK_CASES = [
    (1, 64, 1, 16, 16, None, False, False),                 # exactly one chunk, no initial state
    (2, 100, 1, 16, 32, None, True, False),                 # T not a multiple of 64, V != K
    (1, 150, 2, 16, 16, [10, 64, 76], True, False),         # packed batch, a sequence of 64, one of 76
    (1, 130, 1, 32, 16, [1, 65, 64], False, False),         # 1-token sequence, 65, 64
    (2, 70, 2, 16, 16, None, True, True),                   # gate and q/k L2 norm in the kernel
    (1, 1, 1, 16, 16, None, True, False),                   # a single token
    (1, 80, 2, 64, 32, [30, 50], True, True),               # K = 64: several channel blocks per kernel
    (1, 70, 2, 16, 16, [0, 70, 0], True, False),            # empty sequences, first and last
]


@pytest.mark.parametrize("case", CHUNK_CASES, ids=lambda c: f"B{c[0]}T{c[1]}H{c[2]}K{c[3]}V{c[4]}"
                         f"{'-varlen' if c[5] else ''}{'-h0' if c[6] else ''}{'-gate' if c[7] else ''}")
def test_chunk_triton_matches_oracle(case):
    B, T, H, K, V, lens, with_h0, gate = case
    x, cu = make_inputs(B, T, H, K, V, lens, with_h0, gate)
    N = B if cu is None else cu.numel() - 1
    do = torch.randn(B, T, H, V, device=DEV)
    dht = torch.randn(N, H, K, V, device=DEV)
    ours = fwd_bwd(chunk_kda_triton, x, cu, do, dht, gate)
    ref = fwd_bwd(naive_recurrent_kda, x, cu, do, dht, gate, double=True)
    assert set(ours) == set(ref)
    errs = errors(ours, ref, x)
    assert not over_tolerance(errs), over_tolerance(errs)


def _candidates():
    from deltarl.kernels.kda.triton_utils import TUNED
    return [(name, i) for name, (_, configs) in sorted(TUNED.items()) for i in range(1, len(configs))]


@pytest.mark.parametrize("name,index", _candidates(), ids=lambda x: str(x))
def test_chunk_triton_every_autotune_candidate(name, index):
    """The GPU tunes over every candidate block size / warp count; the interpreter runs the first,
    so each other one is pinned here in turn (the rest stay on their first) and checked. Packed,
    ragged lengths, K = V = 64 so block sizes below 64 loop over channel blocks; 3 heads for the
    kernel that takes a block of heads per program (a full block and a partial one), 2 for the others."""
    from deltarl.kernels.kda.triton_utils import pin_config
    H = 3 if name == "_fwd_diag_kernel" else 2          # 2+ heads: dA_log's largest entry is not a cancelled sum
    x, cu = make_inputs(1, 90, H, 64, 64, [20, 70], with_h0=True, gate=True)
    do = torch.randn(1, 90, H, 64, device=DEV)
    dht = torch.randn(2, H, 64, 64, device=DEV)
    pin_config(name, index)
    try:
        ours = fwd_bwd(chunk_kda_triton, x, cu, do, dht, True)
    finally:
        pin_config(name, None)
    ref = fwd_bwd(naive_recurrent_kda, x, cu, do, dht, True, double=True)
    errs = errors(ours, ref, x)
    assert not over_tolerance(errs), over_tolerance(errs)


def test_autotune_pins_reject_bad_names_and_indices(monkeypatch):
    from deltarl.kernels.kda.triton_utils import TUNED, check_env_pins, pin_config
    n = len(TUNED["_fwd_diag_kernel"][1])
    with pytest.raises(IndexError, match=f"_fwd_diag_kernel has candidates 0..{n - 1}"):
        pin_config("_fwd_diag_kernel", n)
    with pytest.raises(KeyError, match="no autotuned kernel 'nope'"):
        pin_config("nope", 0)
    monkeypatch.setenv("DELTARL_KDA_CONFIG", "_fwd_diag_kernl=1")
    with pytest.raises(ValueError, match="names no autotuned kernel: \\['_fwd_diag_kernl'\\]"):
        check_env_pins()
    monkeypatch.setenv("DELTARL_KDA_CONFIG", "_fwd_diag_kernel=one")
    with pytest.raises(ValueError, match="is not kernel=index"):
        check_env_pins()


def test_chunk_triton_bf16_inputs_match_oracle():
    """bf16 q, k, v, beta: the key path (w, qg, kg) and the per-chunk states h, dh are stored in bf16,
    the value path and the running state in fp32. Against the float64 oracle on the same rounded
    inputs; the GPU bound is 5e-3, here 1e-2: Triton 3.6's interpreter converts fp32 to bf16 by
    truncation (twice the error of rounding, and biased; o lands well above the GPU's error here) and
    runs the dots in fp32 (triton_utils.dot_dtype)."""
    B, T, H, K, V = 1, 100, 2, 32, 32
    x, cu = make_inputs(B, T, H, K, V, [30, 70], with_h0=True)
    for n in ("q", "k", "v", "beta"):
        x[n] = x[n].bfloat16()
    do = torch.randn(B, T, H, V, device=DEV)
    dht = torch.randn(2, H, K, V, device=DEV)
    ours = fwd_bwd(chunk_kda_triton, x, cu, do, dht, False)
    ref = fwd_bwd(naive_recurrent_kda, x, cu, do, dht, False, double=True)
    errs = {n: rel(ours[n], ref[n]) for n in ref}
    assert all(e < 1e-2 for e in errs.values()), errs


def test_dense_chunk_table_matches_the_packed_one():
    """The dense batch's chunk table, built from the shape without a host sync, is the packed one."""
    from deltarl.kernels.kda.triton_utils import chunk_table, default_cu_seqlens, dense_chunk_table
    for B, T in [(1, 1), (2, 64), (3, 65), (2, 200)]:
        dense, packed = dense_chunk_table(B, T, torch.device(DEV)), chunk_table(default_cu_seqlens(B, T, DEV))
        assert dense[3] == packed[3]
        for a, b in zip(dense[:3], packed[:3]):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_packed_chunk_table_is_reused_until_cu_seqlens_changes_in_place():
    """The chunk table of a packed batch is computed once per cu_seqlens tensor (a model passes one
    to every layer); an in-place change of that tensor makes the next call see the new lengths."""
    B, T, H, K, V = 1, 100, 1, 16, 16
    x, cu = make_inputs(B, T, H, K, V, [30, 70], with_h0=True)
    do = torch.randn(B, T, H, V, device=DEV)
    dht = torch.randn(2, H, K, V, device=DEV)
    for lens in ([30, 70], [70, 30]):
        cu[1] = lens[0]                                            # in place: the same tensor object
        ours = fwd_bwd(chunk_kda_triton, x, cu, do, dht, False)
        ref = fwd_bwd(naive_recurrent_kda, x, cu, do, dht, False, double=True)
        errs = errors(ours, ref, x)
        assert not over_tolerance(errs), (lens, over_tolerance(errs))


def test_chunk_triton_rejects_more_than_128_key_channels():
    x, _ = make_inputs(1, 4, 1, 256, 16, None, True, False)
    with pytest.raises(ValueError, match="K <= 128 channels .* got K = 256"):
        chunk_kda_triton(**x)


def test_chunk_triton_rejects_key_channels_not_a_multiple_of_8():
    x, _ = make_inputs(1, 4, 1, 20, 16, None, True, False)
    with pytest.raises(ValueError, match="multiple of 8 .* got K = 20"):
        chunk_kda_triton(**x)


def test_chunk_triton_strong_decay_is_finite():
    """Per-channel decays down to exp(-30) per token: the 16-row split keeps every exp <= 1."""
    x, cu = make_inputs(1, 96, 1, 16, 16, None, True, False)
    x["g"] = -torch.rand(1, 96, 1, 16, generator=_gen()).to(DEV) * 30
    do = torch.randn(1, 96, 1, 16, device=DEV)
    dht = torch.randn(1, 1, 16, 16, device=DEV)
    ours = fwd_bwd(chunk_kda_triton, x, cu, do, dht, False)
    ref = fwd_bwd(naive_recurrent_kda, x, cu, do, dht, False, double=True)
    for n in ref:
        assert torch.isfinite(ours[n]).all(), n
        assert rel(ours[n], ref[n]) < TOL, (n, rel(ours[n], ref[n]))


@pytest.mark.parametrize("gate", [False, True], ids=["plain", "gate-l2norm"])
def test_recurrent_triton_matches_oracle(gate):
    B, T, H, K, V = 2, 12, 2, 32, 16
    x, _ = make_inputs(B, T, H, K, V, None, True, gate)
    o, ht = fused_recurrent_kda_triton(**x, output_final_state=True,
                                       use_qk_l2norm_in_kernel=gate, use_gate_in_kernel=gate)
    ro, rht = naive_recurrent_kda(**{n: t.double() for n, t in x.items()}, output_final_state=True,
                                  use_qk_l2norm_in_kernel=gate, use_gate_in_kernel=gate)
    assert rel(o, ro) < TOL and rel(ht, rht) < TOL


@pytest.mark.parametrize("impl", ["triton", "dispatch-cpu"])
def test_recurrent_state_pool_in_place(impl):
    """Decode 4 sequences (one a padding slot, index -1) from a pool of 6 states, in place."""
    H, K, V, P = 2, 16, 16, 6
    lens = [1, 2, 1, 1]
    x, cu = make_inputs(1, sum(lens), H, K, V, lens, with_h0=False)
    pool = torch.randn(P, H, K, V, device=DEV)
    idx = torch.tensor([4, -1, 0, 2], dtype=torch.int32, device=DEV)
    before = pool.clone()
    fn = fused_recurrent_kda_triton if impl == "triton" else fused_recurrent_kda
    o, final = fn(**x, initial_state=pool, cu_seqlens=cu, ssm_state_indices=idx, inplace_final_state=True)
    assert final is pool
    for n, slot in enumerate(idx.tolist()):
        s, e = int(cu[n]), int(cu[n + 1])
        if slot < 0:
            assert torch.all(o[0, s:e] == 0)
            continue
        ro, rht = naive_recurrent_kda(*(x[m][:, s:e].double() for m in ("q", "k", "v", "g", "beta")),
                                      initial_state=before[slot:slot + 1].double(), output_final_state=True)
        assert rel(o[:, s:e], ro) < TOL
        assert rel(pool[slot], rht[0]) < TOL
    untouched = [p for p in range(P) if p not in idx.tolist()]
    assert torch.equal(pool[untouched], before[untouched])


def test_recurrent_pool_out_of_place():
    """With indices but not in place: states gathered from the pool, new [N, ...] states returned."""
    H, K, V = 1, 16, 16
    x, cu = make_inputs(1, 3, H, K, V, [1, 1, 1], with_h0=False)
    pool = torch.randn(4, H, K, V, device=DEV)
    before = pool.clone()
    idx = torch.tensor([3, 1, -1], dtype=torch.int32, device=DEV)
    o, ht = fused_recurrent_kda_triton(**x, initial_state=pool, cu_seqlens=cu, ssm_state_indices=idx,
                                       output_final_state=True)
    assert torch.equal(pool, before) and ht.shape == (3, H, K, V)
    ro, rht = naive_recurrent_kda(*(x[m][:, :2].double() for m in ("q", "k", "v", "g", "beta")),
                                  initial_state=before[[3, 1]].double(), output_final_state=True,
                                  cu_seqlens=cu[:3])
    assert rel(o[:, :2], ro) < TOL and rel(ht[:2], rht) < TOL
    assert torch.all(ht[2] == 0) and torch.all(o[0, 2] == 0)
