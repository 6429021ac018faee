"""The packed-rows check shared by the model tests: sequences packed in one row (`cu_seqlens`) give the
logits and parameter gradients that separate forwards give."""
import torch


def assert_packed_equals_separate(model, lengths, tol: float, grad_floor: float, every_parameter: bool = False):
    """Logits within `tol`; each gradient within `tol` of its norm plus `grad_floor`. `every_parameter`:
    the packed pass must also reach every parameter that the separate passes reach."""
    seqs = [torch.randint(4, 128, (n,)) for n in lengths]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    packed = model(torch.cat(seqs)[None], cu_seqlens=cu).logits[0]
    packed.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for s, start, end in zip(seqs, cu[:-1].tolist(), cu[1:].tolist()):
        alone = model(s[None]).logits[0]
        assert (packed[start:end] - alone).abs().max() < tol
        alone.square().sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None and (every_parameter or n in grads):
            assert (grads[n] - p.grad).norm() <= tol * p.grad.norm() + grad_floor, n
