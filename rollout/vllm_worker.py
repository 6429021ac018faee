"""Runs inside each vLLM worker process (named by `worker_extension_cls`): receives new weights."""
import torch


class WeightSyncExtension:
    """Mixed into vLLM's GPU worker; `collective_rpc("load_safetensors_blob", ...)` runs it on every worker."""

    def load_safetensors_blob(self, blob: bytes):
        """Feed the (name, tensor) pairs of a safetensors blob, in checkpoint naming, through the model's
        own `load_weights`, which knows vLLM's fused layouts (gate_up_proj, stacked experts, conv)."""
        from safetensors.torch import load
        model = self.model_runner.get_model()      # unwrapped from any CUDA-graph / compile wrapper
        device = next(model.parameters()).device
        weights = [(name, tensor.to(device)) for name, tensor in load(blob).items()]
        model.load_weights(weights=weights)
        torch.cuda.synchronize()
        return len(weights)
