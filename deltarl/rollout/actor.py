"""A rollout engine inside a Ray actor: the unit the trainer schedules on a placement group."""
from .engines import make_engine


class RolloutWorker:
    """Holds one engine; Ray calls its methods remotely."""

    def __init__(self, kind: str, model_path: str, **engine_kwargs):
        self.engine = make_engine(kind, model_path, **engine_kwargs)

    def generate(self, prompt_token_ids, params):
        return self.engine.generate(prompt_token_ids, params)

    def update_weights(self, named_tensors):
        self.engine.update_weights(named_tensors)
        return True

    def update_weights_from_ipc(self, payload: bytes):
        """CUDA IPC handles from a learner on the same GPU (vLLM engine only)."""
        self.engine.update_weights_from_ipc(payload)
        return True

    def receive_weights(self, address, base_rank: int) -> dict:
        """One bucketed broadcast sync (`weight_transfer`): this engine's workers take ranks base_rank,
        base_rank + 1, ... of the weight group (one per vLLM worker; the embedded engine is one)."""
        return self.engine.receive_weights(address, base_rank)

    def weight_ranks(self) -> int:
        """How many ranks of the weight group this engine takes (its worker processes)."""
        return self.engine.weight_ranks()

    def weights_digest(self) -> str:
        return self.engine.weights_digest()

    def sleep(self):
        """Free the device for the learner (a no-op when already asleep)."""
        if not self.engine.asleep:
            self.engine.sleep()

    def wake_up(self):
        """Take the device back (a no-op when awake, e.g. just restarted)."""
        if self.engine.asleep:
            self.engine.wake_up()


def rollout_actor_class(num_cpus: float = 1, num_gpus: float = 0):
    """`ray.remote(RolloutWorker)` with the given resources (Ray imported only here)."""
    import ray
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(RolloutWorker)
