"""The chunkwise PyTorch KDA against the float64 token-by-token oracle: outputs and every gradient."""
import pytest
import torch

from deltarl.kernels.kda import chunk_kda, chunk_kda_torch, fused_recurrent_kda, naive_recurrent_kda
from tests.kda_inputs import fresh_seed, kda_inputs, rel_err

TOL = 1e-8


@pytest.fixture(autouse=True)
def seed():
    """Each test's inputs and cotangents come from one printed seed (KDA_TEST_SEED=<seed> reruns it),
    not from wherever the global generator stood after the tests before it."""
    torch.manual_seed(fresh_seed())


def _run_with_grads(fn, inputs, cotangents, **kwargs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    q, k, v, g, beta, h0 = leaves
    o, final = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, **kwargs)
    do, dfinal = cotangents
    grads = torch.autograd.grad((o * do).sum() + (final * dfinal).sum(), leaves)
    return o, final, grads


@pytest.mark.parametrize("T", [1, 63, 64, 65, 130])
def test_chunk_matches_naive_float64(T):
    inputs = kda_inputs(B=2, T=T, H=2, K=16, V=8)
    cot = (torch.randn(2, T, 2, 8, dtype=torch.float64), torch.randn(2, 2, 16, 8, dtype=torch.float64))
    o_ref, s_ref, g_ref = _run_with_grads(naive_recurrent_kda, inputs, cot)
    o, s, grads = _run_with_grads(chunk_kda_torch, inputs, cot)
    assert rel_err(o, o_ref) < TOL and rel_err(s, s_ref) < TOL
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], grads, g_ref):
        assert rel_err(a, b) < TOL, name


def test_varlen_equals_each_sequence_alone():
    lengths = [1, 64, 70, 3, 129]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v, g, beta, h0 = kda_inputs(B=1, T=sum(lengths), H=2, K=16, V=8, num_states=len(lengths))
    o, final = chunk_kda_torch(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    o_ref, final_ref = naive_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                           cu_seqlens=cu)
    assert rel_err(o, o_ref) < TOL and rel_err(final, final_ref) < TOL
    for n, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        sl = slice(start, end)
        o_n, s_n = chunk_kda_torch(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl],
                                   initial_state=h0[n:n + 1], output_final_state=True)
        assert rel_err(o[:, sl], o_n) < TOL and rel_err(final[n:n + 1], s_n) < TOL


def test_varlen_gradients_match_naive():
    cu = torch.tensor([0, 5, 69, 100], dtype=torch.int32)
    inputs = kda_inputs(B=1, T=100, H=2, K=8, V=8, num_states=3)
    cot = (torch.randn(1, 100, 2, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64))
    _, _, g_ref = _run_with_grads(naive_recurrent_kda, inputs, cot, cu_seqlens=cu)
    _, _, grads = _run_with_grads(chunk_kda_torch, inputs, cot, cu_seqlens=cu)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], grads, g_ref):
        assert rel_err(a, b) < TOL, name


def test_in_kernel_l2norm_and_gate_gradients():
    q, k, v, g_raw, beta, h0 = kda_inputs(B=2, T=70, H=2, K=8, V=8, normalized=False)
    A_log = torch.rand(2, dtype=torch.float64).requires_grad_()
    dt_bias = torch.randn(16, dtype=torch.float64).requires_grad_()
    q, k, g_raw = (x.requires_grad_() for x in (q, k, g_raw))
    kwargs = dict(use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                  initial_state=h0, output_final_state=True)
    results = []
    for fn in (naive_recurrent_kda, chunk_kda_torch):
        o, s = fn(q, k, v, g_raw, beta, **kwargs)
        results.append((o, s, torch.autograd.grad(o.square().sum() + s.sum(), [q, k, g_raw, A_log, dt_bias])))
    (o_ref, s_ref, g_ref), (o, s, grads) = results
    assert rel_err(o, o_ref) < TOL and rel_err(s, s_ref) < TOL
    for name, a, b in zip(["q", "k", "g", "A_log", "dt_bias"], grads, g_ref):
        assert rel_err(a, b) < TOL, name


def test_float32_and_no_initial_state():
    q, k, v, g, beta, _ = kda_inputs(B=2, T=100, H=2, K=16, V=16, dtype=torch.float32)
    o_ref, _ = naive_recurrent_kda(*(x.double() for x in (q, k, v, g, beta)))
    o, final = chunk_kda(q, k, v, g, beta)
    assert o.dtype == torch.float32 and final is None
    assert rel_err(o, o_ref) < 1e-5


def test_recurrent_decoding_continues_a_prefill():
    q, k, v, g, beta, h0 = kda_inputs(B=3, T=40, H=2, K=8, V=8)
    o_all, s_all = naive_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    _, state = chunk_kda(q[:, :37], k[:, :37], v[:, :37], g[:, :37], beta[:, :37], initial_state=h0,
                         output_final_state=True)
    for t in range(37, 40):
        o_t, state = fused_recurrent_kda(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], g[:, t:t + 1],
                                         beta[:, t:t + 1], initial_state=state, output_final_state=True)
        assert rel_err(o_t, o_all[:, t:t + 1]) < TOL
    assert rel_err(state, s_all) < TOL


def test_bad_shapes_name_the_argument():
    q, k, v, g, beta, h0 = kda_inputs(B=2, T=10, H=2, K=8, V=8)
    with pytest.raises(ValueError, match="beta"):
        chunk_kda(q, k, v, g, beta[:, :5])
    with pytest.raises(ValueError, match="initial_state"):
        chunk_kda(q, k, v, g, beta, initial_state=h0[:1])
    with pytest.raises(ValueError, match="cu_seqlens"):
        chunk_kda(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))


@pytest.mark.parametrize("with_state", [False, True])
def test_short_packed_sequences_without_initial_state(with_state):
    """The RL learner's case: many short packed sequences, one chunk each, from a zero state."""
    lengths = [7, 11, 3, 1, 9]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v, g, beta, _ = kda_inputs(B=1, T=sum(lengths), H=2, K=8, V=4, num_states=len(lengths))
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g, beta)]
    results = []
    for fn in (naive_recurrent_kda, chunk_kda_torch):
        o, s = fn(*leaves, output_final_state=with_state, cu_seqlens=cu)
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() + (s.sum() if with_state else 0)
        results.append((o, s, torch.autograd.grad(loss, leaves)))
    (o_ref, s_ref, g_ref), (o, s, grads) = results
    assert rel_err(o, o_ref) < TOL
    assert (s is None) == (not with_state) and (not with_state or rel_err(s, s_ref) < TOL)
    for name, a, b in zip(["q", "k", "v", "g", "beta"], grads, g_ref):
        assert rel_err(a, b) < TOL, name
