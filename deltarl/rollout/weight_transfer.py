"""Bucketed weight broadcast from the learner (rank 0) to every rollout engine worker.

The rollout side owns the wire format; the learner only hands over its tensors. One sync is:

1. a header broadcast, int64 [2] = (length of the plan's JSON, 0 if unchanged since the last sync);
   then, if changed, the plan itself as uint8 bytes: the receivers need no other channel;
2. one broadcast per bucket of the plan: a flat buffer of one dtype holding whole tensors back to back;
3. each receiver cuts its buffer into views and hands the (name, tensor) pairs to its engine's loader
   (vLLM: `model.load_weights`; embedded engine: `update_weights`), bucket by bucket.

The group is its own: a `TCPStore` hosted by the driver (`host_store`, an OS-chosen free port, so two
jobs on one node never collide) and a directly constructed `ProcessGroupNCCL` (GPU) or
`ProcessGroupGloo` (CPU, or one GPU shared by sender and engine: NCCL refuses two ranks on one
device). The default `torch.distributed` group, which DeepSpeed and vLLM each own in their process,
is never touched.

Bucket order is the order the sender completes them: a bucket is sent when its last tensor arrives,
so a ZeRO-3 learner can gather parameter by parameter and hold at most one open bucket per dtype.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import torch

BACKENDS = ("gloo", "nccl")
_PREFIX = "deltarl_weights"


# --- the bucket plan ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One tensor inside a bucket: its checkpoint name, shape, and element offset in the flat buffer."""
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Bucket:
    """A flat buffer of `numel` elements of `dtype` (a torch dtype name, e.g. "bfloat16")."""
    dtype: str
    numel: int
    slots: tuple[Slot, ...]

    @property
    def nbytes(self) -> int:
        return self.numel * _dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BucketPlan:
    """Buckets in sending order; `bucket_bytes` is the limit each respects (a larger tensor goes alone)."""
    buckets: tuple[Bucket, ...]
    bucket_bytes: int

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BucketPlan:
        raw = json.loads(text)
        buckets = tuple(Bucket(b["dtype"], b["numel"], tuple(Slot(s["name"], tuple(s["shape"]), s["offset"])
                                                             for s in b["slots"])) for b in raw["buckets"])
        return cls(buckets, raw["bucket_bytes"])


def tensor_spec(name: str, tensor: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
    """(name, full shape, dtype name) of a tensor; a ZeRO-3 partitioned parameter reports its full
    shape in `ds_shape` (its own `.shape` is the empty local placeholder)."""
    shape = getattr(tensor, "ds_shape", None) or tensor.shape
    return name, tuple(int(s) for s in shape), str(tensor.dtype).removeprefix("torch.")


def plan_buckets(specs: Iterable[tuple[str, tuple[int, ...], str]], bucket_mb: float) -> BucketPlan:
    """Pack tensors, in the given order, into per-dtype buckets of at most `bucket_mb` MiB.

    Each dtype keeps one open bucket; a tensor that does not fit closes it. A tensor larger than the
    limit gets a bucket of its own. Buckets are ordered by the position of their last tensor, which is
    when a sender walking the tensors in this order can send them."""
    limit = int(bucket_mb * 2**20)
    if limit <= 0:
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
    open_: dict[str, list[Slot]] = {}
    done: list[tuple[int, Bucket]] = []            # (index of the last tensor, bucket)
    last: dict[str, int] = {}

    def close(dtype):
        slots = open_.pop(dtype)
        done.append((last[dtype], Bucket(dtype, slots[-1].offset + slots[-1].numel, tuple(slots))))

    seen = set()
    for index, (name, shape, dtype) in enumerate(specs):
        if name in seen:
            raise ValueError(f"plan_buckets: tensor {name!r} listed twice")
        seen.add(name)
        size = _dtype(dtype).itemsize
        slot = Slot(name, tuple(shape), 0)
        if slot.numel * size > limit:              # alone, whatever is open stays open
            done.append((index, Bucket(dtype, slot.numel, (slot,))))
            continue
        slots = open_.get(dtype)
        used = slots[-1].offset + slots[-1].numel if slots else 0
        if slots and (used + slot.numel) * size > limit:
            close(dtype)
            used = 0
        open_.setdefault(dtype, []).append(Slot(name, slot.shape, used))
        last[dtype] = index
    for dtype in list(open_):
        close(dtype)
    done.sort(key=lambda pair: pair[0])
    return BucketPlan(tuple(b for _, b in done), limit)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


# --- the group ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupAddress:
    """Where the group meets: the driver's TCPStore, the group's size (sender + every engine worker),
    the backend, and the timeout of each collective."""
    host: str
    port: int
    world_size: int
    backend: str = "gloo"
    timeout_s: float = 1800.0


def host_store(world_size: int, backend: str, host: str | None = None, timeout_s: float = 1800.0):
    """Start the group's TCPStore in this process (the driver) on a free port; returns (store, address).
    Keep `store` alive as long as the group is used (NCCL meets through it on its first collective)."""
    if backend not in BACKENDS:
        raise ValueError(f"weight transfer backend {backend!r}: allowed values are {list(BACKENDS)}")
    host = host or _node_ip()
    store = torch.distributed.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=timeout_s))
    return store, GroupAddress(host, store.port, world_size, backend, timeout_s)


def _node_ip() -> str:
    try:
        import ray
        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return socket.gethostbyname(socket.gethostname())


@dataclass
class WeightGroup:
    """This process's member of the group: the backend object, its rank, and the device its buffers
    live on (the current CUDA device for NCCL, the CPU for gloo)."""
    address: GroupAddress
    rank: int
    backend: object
    device: torch.device
    plan: BucketPlan | None = None         # the last plan sent (rank 0) or received

    def broadcast(self, tensor: torch.Tensor):
        """Start a broadcast from rank 0 of `tensor` (in place on the others); returns the work handle."""
        opts = torch.distributed.BroadcastOptions()
        opts.rootRank = 0
        opts.rootTensor = 0
        return self.backend.broadcast([tensor], opts)


def join_group(address: GroupAddress, rank: int) -> WeightGroup:
    """Become `rank` of the group at `address`: a collective, every member must call it at once.
    Ends with a one-element broadcast so that a member that cannot join (NCCL: two ranks on one GPU)
    fails here, not in the middle of a sync."""
    if not 0 <= rank < address.world_size:
        raise ValueError(f"rank {rank} outside the weight group of {address.world_size}")
    timeout = datetime.timedelta(seconds=address.timeout_s)
    store = torch.distributed.TCPStore(address.host, address.port, is_master=False, timeout=timeout)
    store = torch.distributed.PrefixStore(f"{_PREFIX}/{address.backend}", store)
    if address.backend == "nccl":
        opts = torch.distributed.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        backend = torch.distributed.ProcessGroupNCCL(store, rank, address.world_size, opts)
        device = torch.device("cuda", torch.cuda.current_device())
    elif address.backend == "gloo":
        backend = torch.distributed.ProcessGroupGloo(store, rank, address.world_size, timeout)
        device = torch.device("cpu")
    else:
        raise ValueError(f"weight transfer backend {address.backend!r}: allowed values are {list(BACKENDS)}")
    group = WeightGroup(address, rank, backend, device)
    probe = torch.ones(1, device=device) if rank == 0 else torch.zeros(1, device=device)
    group.broadcast(probe).wait()
    if probe.item() != 1:
        raise RuntimeError("weight group: the probe broadcast did not arrive")
    return group


# --- one sync -----------------------------------------------------------------------------------

def send_buckets(group: WeightGroup, named_tensors: Iterable[tuple[str, torch.Tensor]], plan: BucketPlan,
                 in_flight: int = 2) -> dict:
    """Rank 0: broadcast `plan` (when it changed) and then every bucket, filled from `named_tensors`.

    The iterator is read once, in the plan's tensor order (the order given to `plan_buckets`), and
    each tensor is copied into its bucket before the next is asked for, so a ZeRO-3 learner can gather
    one parameter at a time. A bucket is broadcast as soon as its last tensor is in; up to `in_flight`
    broadcasts overlap with filling the next. Returns {"bytes", "buckets", "seconds"}."""
    if group.rank != 0:
        raise RuntimeError("send_buckets runs on rank 0 of the weight group")
    start = time.perf_counter()
    _send_plan(group, plan)
    where = {s.name: (i, s) for i, b in enumerate(plan.buckets) for s in b.slots}
    buffers: dict[int, torch.Tensor] = {}
    filled = [0] * len(plan.buckets)
    next_to_send, pending = 0, []
    for name, tensor in named_tensors:
        if name not in where:
            raise KeyError(f"send_buckets: tensor {name!r} is not in the plan")
        i, slot = where.pop(name)
        bucket = plan.buckets[i]
        if i not in buffers:
            buffers[i] = _buffer(bucket, group.device)
        if tuple(tensor.shape) != slot.shape or str(tensor.dtype).removeprefix("torch.") != bucket.dtype:
            raise ValueError(f"send_buckets: {name!r} is {tuple(tensor.shape)} {tensor.dtype}, the plan says "
                             f"{slot.shape} {bucket.dtype}")
        buffers[i][slot.offset: slot.offset + slot.numel].copy_(tensor.detach().reshape(-1))
        filled[i] += 1
        while next_to_send < len(plan.buckets) and filled[next_to_send] == len(plan.buckets[next_to_send].slots):
            buffer = buffers.pop(next_to_send)
            pending.append((group.broadcast(buffer), buffer))     # the buffer lives until its work is done
            next_to_send += 1
            if len(pending) > in_flight:
                pending.pop(0)[0].wait()
    if where:
        raise KeyError(f"send_buckets: {len(where)} tensors of the plan never came, e.g. {next(iter(where))!r}")
    for work, _ in pending:
        work.wait()
    _synchronize(group.device)
    return {"bytes": plan.nbytes, "buckets": len(plan.buckets), "seconds": time.perf_counter() - start}


def receive_buckets(group: WeightGroup) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Rank > 0: the (name, tensor) pairs of each bucket of one sync, in the plan's order. The tensors
    are views into the bucket's buffer, valid until the loader has copied them; the next bucket's
    broadcast is already under way while the caller loads this one."""
    if group.rank == 0:
        raise RuntimeError("receive_buckets runs on the engines' ranks (> 0)")
    plan = _receive_plan(group)
    buffers = [None] * len(plan.buckets)
    works = [None] * len(plan.buckets)

    def start(i):
        bucket = plan.buckets[i]
        buffers[i] = _buffer(bucket, group.device)
        works[i] = group.broadcast(buffers[i])

    if plan.buckets:
        start(0)
    for i, bucket in enumerate(plan.buckets):
        works[i].wait()
        if i + 1 < len(plan.buckets):
            start(i + 1)
        flat = buffers[i]
        yield [(s.name, flat[s.offset: s.offset + s.numel].view(s.shape)) for s in bucket.slots]
        buffers[i] = works[i] = None


def receive_into(group: WeightGroup, load: Callable[[list[tuple[str, torch.Tensor]]], object]) -> dict:
    """Receive one sync and feed each bucket to `load` (the engine's weight loader).
    Returns {"bytes", "buckets", "tensors", "seconds"}."""
    start, tensors, nbytes, buckets = time.perf_counter(), 0, 0, 0
    for pairs in receive_buckets(group):
        load(pairs)
        tensors += len(pairs)
        nbytes += sum(t.numel() * t.element_size() for _, t in pairs)
        buckets += 1
    _synchronize(group.device)
    return {"bytes": nbytes, "buckets": buckets, "tensors": tensors, "seconds": time.perf_counter() - start}


def _send_plan(group: WeightGroup, plan: BucketPlan):
    """Header (plan length or 0 = unchanged), then the plan's JSON if it changed."""
    text = plan.to_json().encode() if plan != group.plan else b""
    header = torch.tensor([len(text), 0], dtype=torch.int64, device=group.device)
    group.broadcast(header).wait()
    if text:
        payload = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(group.device)
        group.broadcast(payload).wait()
    group.plan = plan


def _receive_plan(group: WeightGroup) -> BucketPlan:
    header = torch.zeros(2, dtype=torch.int64, device=group.device)
    group.broadcast(header).wait()
    length = int(header[0])
    if length:
        payload = torch.empty(length, dtype=torch.uint8, device=group.device)
        group.broadcast(payload).wait()
        group.plan = BucketPlan.from_json(payload.cpu().numpy().tobytes().decode())
    if group.plan is None:
        raise RuntimeError("weight group: the sender announced an unchanged plan, but none was received")
    return group.plan


def _buffer(bucket: Bucket, device: torch.device) -> torch.Tensor:
    """A bucket's flat buffer; on the host of a GPU machine (gloo) pinned, so copies to and from the
    GPU run at full speed (torch caches pinned blocks, so this is no new allocation each sync)."""
    pin = device.type == "cpu" and torch.cuda.is_available()
    return torch.empty(bucket.numel, dtype=_dtype(bucket.dtype), device=device, pin_memory=pin)


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weights_digest(named_tensors) -> str:
    """A BLAKE2 digest of (name, dtype, shape, bytes) of every tensor, sorted by name: equal digests
    mean bitwise-equal weights, whichever path loaded them (the benchmark's check inside vLLM)."""
    digest = hashlib.blake2b()
    for name, tensor in sorted(named_tensors, key=lambda pair: pair[0]):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


# --- the two ends, as engines and learners hold them ---------------------------------------------

class WeightReceiver:
    """An engine worker's end: joins the group at the first sync (or when the address changes)."""

    def __init__(self):
        self.group: WeightGroup | None = None

    def receive(self, address: GroupAddress | dict, rank: int, load) -> dict:
        """`address` may come as a plain dict (vLLM's RPC carries primitives, not dataclasses)."""
        address = address if isinstance(address, GroupAddress) else GroupAddress(**address)
        if self.group is None or self.group.address != address or self.group.rank != rank:
            self.group = join_group(address, rank)
        return receive_into(self.group, load)


class WeightSender:
    """The learner's end (rank 0): joins at the first sync, plans from the tensors' specs, sends."""

    def __init__(self):
        self.group: WeightGroup | None = None

    def send(self, address: GroupAddress, specs: list, named_tensors: Iterable, bucket_mb: float) -> dict:
        """`specs`: (name, shape, dtype) of every tensor, in the order `named_tensors` yields them."""
        if self.group is None or self.group.address != address:
            self.group = join_group(address, 0)
        return send_buckets(self.group, named_tensors, plan_buckets(specs, bucket_mb))
