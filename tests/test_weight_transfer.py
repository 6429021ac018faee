"""Bucketed weight broadcast over gloo (`deltarl.rollout.weight_transfer`): the plan alone, then a
sender and two embedded-engine Ray actors, then the trainer's `sync_weights` with a real Learner."""
import random

import pytest
import ray
import torch

from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config
from deltarl.rl.config import load_config
from deltarl.rl.learner_group import start_learner_group
from deltarl.rl.engines import open_weight_group, sync_weights
from deltarl.rollout import SamplingParams, rollout_actor_class
from deltarl.rollout.weight_transfer import (BucketPlan, WeightReceiver, WeightSender, host_store, plan_buckets,
                                             tensor_spec, weights_digest)

DTYPES = ["float32", "bfloat16", "float16", "int64", "uint8", "bool"]


# --- the plan alone -----------------------------------------------------------------------------

def random_specs(rng, count):
    specs = []
    for i in range(count):
        shape = tuple(rng.randint(1, 40) for _ in range(rng.randint(0, 3)))
        specs.append((f"t{i}", shape, rng.choice(DTYPES)))
    return specs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_places_every_byte_once_under_the_limit(seed):
    print(f"seed {seed}")
    rng = random.Random(seed)
    specs = random_specs(rng, 60)
    itemsize = {d: getattr(torch, d).itemsize for d in DTYPES}
    sizes = {n: (torch.Size(s).numel() * itemsize[d]) for n, s, d in specs}
    for bucket_mb in (64 / 2**20, max(sizes.values()) / 2**20, 1.0):       # tiny, the largest tensor, all
        plan = plan_buckets(specs, bucket_mb)
        assert BucketPlan.from_json(plan.to_json()) == plan
        placed = {}
        for bucket in plan.buckets:
            covered = torch.zeros(bucket.numel, dtype=torch.int32)
            for slot in bucket.slots:
                name, shape, dtype = next(s for s in specs if s[0] == slot.name)
                assert (slot.shape, bucket.dtype) == (shape, dtype)
                covered[slot.offset: slot.offset + slot.numel] += 1
                placed[slot.name] = placed.get(slot.name, 0) + 1
            assert bool((covered == 1).all()), "every element of a bucket belongs to exactly one tensor"
            assert bucket.nbytes <= plan.bucket_bytes or len(bucket.slots) == 1
        assert placed == {n: 1 for n, _, _ in specs}
        last = [max(i for i, s in enumerate(specs) if s[0] in {x.name for x in b.slots}) for b in plan.buckets]
        assert last == sorted(last), "buckets go in the order a sender walking the tensors completes them"
    assert len(plan_buckets(specs, 1.0).buckets) == len({d for _, _, d in specs})     # all fits: one per dtype


# --- sender and engines through Ray -------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def tiny_model(seed):
    torch.manual_seed(seed)
    tok = char_tokenizer()
    return KimiLinearForCausalLM(tiny_config(num_layers=4, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id)).eval()


def all_tensors(model):
    return [*model.named_parameters(), *model.named_buffers()]


@ray.remote(num_cpus=1)
class Sender:
    """Rank 0 holding a dict of tensors, sending them with the learner's `WeightSender`."""

    def __init__(self):
        self.sender, self.tensors = WeightSender(), {}

    def set_tensors(self, tensors: dict):
        self.tensors = tensors

    def send(self, address, bucket_mb):
        specs = [tensor_spec(k, v) for k, v in self.tensors.items()]
        return self.sender.send(address, specs, iter(self.tensors.items()), bucket_mb)


@ray.remote(num_cpus=1)
class Recorder:
    """An engine-side rank whose loader keeps copies of what arrived (dtypes the models do not have)."""

    def __init__(self):
        self.receiver, self.got = WeightReceiver(), {}

    def receive(self, address, rank):
        def keep(pairs):
            self.got.update({n: t.clone() for n, t in pairs})
        stats = self.receiver.receive(address, rank, keep)
        return stats, weights_digest(self.got.items())


@pytest.fixture(scope="module")
def engines(tmp_path_factory, ray_local):
    path = tmp_path_factory.mktemp("weights") / "a"
    tiny_model(0).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    actor = rollout_actor_class(num_cpus=1)
    return path, [actor.remote("embedded", str(path), device="cpu") for _ in range(2)]


def broadcast(sender, receivers, address, bucket_mb, receive="receive_weights"):
    refs = [sender.send.remote(address, bucket_mb)]
    refs += [getattr(r, receive).remote(address, rank) for rank, r in enumerate(receivers, start=1)]
    return ray.get(refs, timeout=120)


def test_broadcast_sync_makes_every_engine_equal_the_sender(engines, ray_local):
    seed = 11
    print(f"seed {seed}")
    path, workers = engines
    sender = Sender.remote()
    store, address = host_store(3, "gloo", host="127.0.0.1", timeout_s=120)
    largest = max(t.numel() * t.element_size() for t in tiny_model(0).state_dict().values())
    total = sum(t.numel() * t.element_size() for t in tiny_model(0).state_dict().values())
    for round_, bucket_bytes in enumerate([largest // 3, largest, 2 * total]):
        model = tiny_model(seed + round_)
        expected = weights_digest(all_tensors(model))
        assert ray.get([w.weights_digest.remote() for w in workers]) != [expected] * 2
        ray.get(sender.set_tensors.remote(model.state_dict()))
        sent, *received = broadcast(sender, workers, address, bucket_bytes / 2**20)
        print(f"bucket {bucket_bytes} B: {sent['buckets']} buckets, {sent['bytes']} B, {sent['seconds']:.3f} s")
        assert sent["bytes"] == total and all(r["bytes"] == total for r in received)
        assert sent["buckets"] > (1 if bucket_bytes < total else 0)
        assert ray.get([w.weights_digest.remote() for w in workers]) == [expected] * 2, "bitwise equal weights"

    # a fresh engine of the same kind (an actor: same thread count) loaded from the last weights
    model.save_pretrained(path.parent / "last")
    char_tokenizer().save_pretrained(path.parent / "last")
    fresh_worker = rollout_actor_class(num_cpus=1).remote("embedded", str(path.parent / "last"), device="cpu")
    prompts = [char_tokenizer()(p).input_ids for p in ["1+1=", "hello", "7*6="]]
    params = SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=seed)
    fresh = ray.get(fresh_worker.generate.remote(prompts, params))
    for remote in ray.get([w.generate.remote(prompts, params) for w in workers]):
        assert [c.token_ids for c in remote] == [c.token_ids for c in fresh]
        assert [c.logprobs for c in remote] == [c.logprobs for c in fresh]
    ray.kill(fresh_worker)
    del store


def test_every_dtype_arrives_bitwise(ray_local):
    seed = 5
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, dtype in enumerate(DTYPES * 3):
        shape = (int(torch.randint(1, 300, (), generator=gen)), 3) if i % 4 else ()
        raw = torch.randn(shape, generator=gen) * 100
        tensors[f"{dtype}.{i}"] = raw > 0 if dtype == "bool" else raw.to(getattr(torch, dtype))
    sender, receivers = Sender.remote(), [Recorder.remote() for _ in range(2)]
    ray.get(sender.set_tensors.remote(tensors))
    store, address = host_store(3, "gloo", host="127.0.0.1", timeout_s=120)
    for bucket_mb in (1000 / 2**20, 1.0):
        sent, *received = broadcast(sender, receivers, address, bucket_mb, receive="receive")
        assert [digest for _, digest in received] == [weights_digest(tensors.items())] * 2
        assert {r["tensors"] for r, _ in received} == {len(tensors)}
        print(f"bucket {bucket_mb * 2**20:.0f} B: {sent['buckets']} buckets")
    del store


def test_trainer_sync_weights_broadcast_from_a_learner(engines, ray_local, tmp_path):
    """The trainer's path: `open_weight_group` then `sync_weights` with rollout.weight_sync=broadcast,
    the real Learner (torch backend) sending its policy to both engines."""
    path, workers = engines
    seed = 23
    print(f"seed {seed}")
    model = tiny_model(seed)
    model.save_pretrained(tmp_path / "b")
    cfg = load_config(None, ["rollout.weight_sync=broadcast", "rollout.weight_sync_bucket_mb=0.05",
                             "learner.backend=torch", "rollout.num_workers=2", "ray.placement=split"])
    learner = start_learner_group([{"num_cpus": 1}], str(tmp_path / "b"), cfg.learner, cfg.algorithm, 1.0, 1)
    group = open_weight_group(cfg, ray, workers, shared_gpu=False)
    assert group[1].backend == "gloo" and group[1].world_size == 3 and group[2] == [1, 2]
    sync_weights(cfg, ray, workers, learner, False, group)
    assert ray.get([w.weights_digest.remote() for w in workers]) == [weights_digest(all_tensors(model))] * 2
