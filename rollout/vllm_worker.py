"""Runs inside each vLLM worker process (named by `worker_extension_cls`): receives new weights."""
import torch


class WeightSyncExtension:
    """Mixed into vLLM's GPU worker; `collective_rpc("load_named_tensors", ...)` calls it on every worker."""

    def load_named_tensors(self, named_tensors):
        """Feed (name, tensor) pairs in checkpoint naming through the model's own `load_weights`, which
        knows vLLM's fused layouts (gate_up_proj, stacked experts, conv weights)."""
        model = self.model_runner.get_model()      # unwrapped from any CUDA-graph / compile wrapper
        device = next(model.parameters()).device
        weights = [(name, tensor.to(device)) for name, tensor in named_tensors]
        model.load_weights(weights=weights)
        torch.cuda.synchronize()
        return len(weights)
