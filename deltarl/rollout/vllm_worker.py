"""Runs inside each vLLM worker process (named by `worker_extension_cls`): receives new weights."""
import pickle

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

    def load_ipc_handles(self, payload: bytes):
        """Map the learner's GPU tensors (CUDA IPC handles from `torch.multiprocessing.reductions.reduce_tensor`,
        pickled) into this process and load them: a device-to-device copy, no trip through host memory.
        The learner must share this GPU and keep the tensors alive until the call returns."""
        model = self.model_runner.get_model()
        device = torch.cuda.current_device()
        weights = []
        for name, (rebuild, args) in pickle.loads(payload).items():
            args = list(args)
            args[6] = device                       # storage_device: this process's index of the same GPU
            weights.append((name, rebuild(*args)))
        model.load_weights(weights=weights)
        torch.cuda.synchronize()
        return len(weights)

    def receive_weights(self, address: dict, base_rank: int) -> dict:
        """One bucketed broadcast sync (`deltarl.rollout.weight_transfer`): join the weight group as
        base_rank + this worker's rank at the first call, then feed each bucket, as it arrives, through
        the model's `load_weights` (checkpoint names; it knows vLLM's fused layouts)."""
        from deltarl.rollout.weight_transfer import WeightReceiver
        if not hasattr(self, "_deltarl_receiver"):
            self._deltarl_receiver = WeightReceiver()
        model = self.model_runner.get_model()
        device = next(model.parameters()).device

        def load(pairs):           # over gloo the buckets arrive in host memory: to the GPU first
            model.load_weights(weights=[(name, t.to(device, non_blocking=True)) for name, t in pairs])
        return self._deltarl_receiver.receive(address, base_rank + self.rank, load)

    def weights_digest(self) -> str:
        """`weight_transfer.weights_digest` of the served model: equal digests, bitwise-equal weights."""
        from deltarl.rollout.weight_transfer import weights_digest
        model = self.model_runner.get_model()
        return weights_digest([*model.named_parameters(), *model.named_buffers()])
