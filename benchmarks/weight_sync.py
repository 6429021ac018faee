"""Weight sync, learner process -> rollout engine process: seconds per sync and GB/s of each path.

A sender actor (standing in for learner rank 0: the model's tensors on its device, sent the way
`Learner.named_weights` / `Learner.broadcast_weights` / `Learner.weight_ipc_handles` send them) and one
`RolloutWorker` actor share the device. Paths timed, each from "the sender holds new weights" to "the
engine has loaded them":
- object store: full CPU copies put once in Ray's object store, the engine reads and loads them;
- broadcast: `deltarl.rollout.weight_transfer`, one broadcast per bucket (64/256/512 MiB by default)
  over a group of the two processes. NCCL where it can form the group; two processes on one GPU
  cannot (NCCL refuses two ranks on one device: a probe decides and its answer is recorded), and
  then the group runs over gloo (pinned host buffers, loopback);
- CUDA IPC (GPU only): handles to the sender's memory, the engine copies device to device.
The floor is bytes / the device's copy bandwidth (one copy of every byte, measured here).

Correctness, checked and fatal: the sender alternates two weight sets (seeds 1 and 2); after a sync
the engine's weights digest (BLAKE2 of every parameter's bytes, `weight_transfer.weights_digest`)
must equal the digest the object-store path left for the same weights, and differ from the other
seed's and from the initial checkpoint's.

    PYTHONPATH=/tmp/site:. python3 benchmarks/weight_sync.py --out $OUT       # GPU: vLLM engine, 106M and 1B
    python benchmarks/weight_sync.py --cpu-smoke [--out DIR]                  # embedded engine, tiny model, gloo
Writes benchmarks/results/weight_sync_<device>.md (and a copy under --out).
"""
import argparse
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_results  # noqa: E402
from deltarl.model import KimiLinearForCausalLM, char_tokenizer, tiny_config  # noqa: E402
from deltarl.rollout.weight_transfer import WeightSender, host_store, join_group, tensor_spec  # noqa: E402

SEEDS = (1, 2)       # the two weight sets the sender alternates between


def model_configs(smoke: bool) -> dict:
    """name -> KimiLinearConfig: the rollout benchmark's 106M hybrid and a 1.03B one (20 layers, hidden
    2048, 15 KDA + 5 MLA, MLA dims as the released model), or one tiny model for the CPU smoke run."""
    if smoke:
        return {"tiny": tiny_config(hidden_size=256, num_layers=4, num_heads=4, kda_head_dim=64,
                                    intermediate_size=704, eos_token_id=2, pad_token_id=0)}
    from benchmarks.rollout import bench_config
    big = tiny_config(vocab_size=128, hidden_size=2048, num_layers=20, num_heads=16, kda_head_dim=128,
                      mla_heads=16, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                      intermediate_size=5632, kda_every=4, eos_token_id=2, pad_token_id=0)
    return {"106M": bench_config(all_mla=False), "1B": big}


class Sender:
    """Learner rank 0's stand-in: a model on `device` in `dtype`, sending its state dict."""

    def __init__(self, config, device: str, dtype: str, path: str):
        torch.manual_seed(0)
        with torch.device(device):
            self.model = KimiLinearForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).eval()
        self.model.save_pretrained(path)              # the engine starts from these (initial) weights
        char_tokenizer().save_pretrained(path)
        self.device, self.sender = torch.device(device), WeightSender()

    def reseed(self, seed: int):
        """New values for every floating tensor, the same for the same seed."""
        gen = torch.Generator(self.device).manual_seed(seed)
        with torch.no_grad():
            for t in self.model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=gen, device=self.device) * 0.02)
        self._synchronize()

    def stats(self) -> dict:
        state = self.model.state_dict()
        return {"params": sum(t.numel() for t in state.values()),
                "bytes": sum(t.numel() * t.element_size() for t in state.values()), "tensors": len(state)}

    def named_weights(self) -> dict:
        """As Learner.named_weights: full CPU copies with storages of their own."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def ipc_payload(self) -> bytes:
        """As Learner.weight_ipc_handles (no ZeRO-3): CUDA IPC handles of the live tensors."""
        from torch.multiprocessing.reductions import reduce_tensor
        return pickle.dumps({k: reduce_tensor(v.detach()) for k, v in self.model.state_dict().items()})

    def broadcast(self, address, bucket_mb: float) -> dict:
        """As Learner.broadcast_weights: specs and the tensors in state-dict order into the sender."""
        state = self.model.state_dict()
        return self.sender.send(address, [tensor_spec(k, v) for k, v in state.items()], iter(state.items()),
                                bucket_mb)

    def copy_gbps(self, nbytes: int = 2**30, reps: int = 10) -> float:
        """Bytes copied per second by `dst.copy_(src)` on this device (GB/s, 1e9)."""
        src = torch.empty(nbytes, dtype=torch.uint8, device=self.device).random_(0, 255)
        dst = torch.empty_like(src)
        dst.copy_(src)
        self._synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        self._synchronize()
        return nbytes * reps / (time.perf_counter() - start) / 1e9

    def _synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def nccl_joins(ray, gpus: float) -> tuple[bool, str]:
    """Can two processes sharing this GPU form an NCCL weight group? Two throwaway actors try."""
    @ray.remote(num_gpus=gpus, num_cpus=0)
    def member(address, rank):
        join_group(address, rank)
        return "joined"
    store, address = host_store(2, "nccl", timeout_s=120)
    refs = [member.remote(address, rank) for rank in (0, 1)]
    try:
        ray.get(refs, timeout=180)
        return True, "NCCL formed the group of two processes on one GPU"
    except Exception as err:                        # noqa: BLE001  (recorded in the results)
        for ref in refs:
            ray.cancel(ref, force=True)
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = next((line.strip() for line in lines if "Duplicate GPU" in line or "invalid usage" in line),
                      lines[-1].strip() if lines else type(err).__name__)
        return False, f"NCCL could not form the group on one GPU: {reason[:300]}"
    finally:
        del store


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Check:
    """The engine's digest after a sync of seed s must equal the object-store path's for s."""

    def __init__(self, ray, engine, initial: str):
        self.ray, self.engine, self.reference, self.initial, self.checked = ray, engine, {}, initial, 0

    def __call__(self, what: str, seed: int):
        digest = self.ray.get(self.engine.weights_digest.remote())
        if digest == self.initial:
            raise SystemExit(f"FAIL {what}: the engine still holds its initial weights after the sync")
        if seed not in self.reference:
            if digest in self.reference.values():
                raise SystemExit(f"FAIL {what}: seed {seed} left the same weights as another seed")
            self.reference[seed] = digest
        elif digest != self.reference[seed]:
            raise SystemExit(f"FAIL {what}: the engine's weights after seed {seed} differ from the object-store "
                             f"path's (digest {digest[:16]} != {self.reference[seed][:16]})")
        self.checked += 1


def measure(ray, name, config, args, tmp, gpu: bool, backend: str, notes: list) -> dict:
    """Every path for one model; returns {"stats", "floor_gbps", "rows": [(path, bucket_mb, [seconds])]}."""
    from deltarl.rollout import rollout_actor_class
    share = 0.5 if gpu else 0
    path = str(Path(tmp) / name)
    sender = ray.remote(num_gpus=share, num_cpus=1)(Sender).remote(
        config, "cuda" if gpu else "cpu", "bfloat16" if gpu else "float32", path)
    stats = ray.get(sender.stats.remote())
    if gpu:
        engine_kwargs = dict(dtype="bfloat16", gpu_memory_utilization=args.gpu_memory_utilization,
                             max_model_len=1024, enforce_eager=True, enable_sleep_mode=False,
                             skip_tokenizer_init=True)
        engine = rollout_actor_class(num_cpus=1, num_gpus=share).remote("vllm", path, **engine_kwargs)
    else:
        engine = rollout_actor_class(num_cpus=1).remote("embedded", path, device="cpu", dtype="float32")
    check = Check(ray, engine, ray.get(engine.weights_digest.remote()))
    rows = []

    def run(label, bucket_mb, sync):
        times = []
        for rep in range(args.reps):
            for seed in SEEDS:
                ray.get(sender.reseed.remote(seed))
                times.append(timed(sync))
                if rep == 0 or seed == SEEDS[-1]:
                    check(f"{name} {label} {bucket_mb or ''}", seed)
        rows.append((label, bucket_mb, times))
        print(f"{name}: {label} {bucket_mb or ''}: median {statistics.median(times):.3f} s", flush=True)

    try:
        run("object store", None, lambda: ray.get(engine.update_weights.remote(sender.named_weights.remote())))
    except SystemExit:
        raise
    except Exception:                              # noqa: BLE001  (the broadcast rows may still run)
        traceback.print_exc()
        notes.append(f"{name}: the object-store path failed ({traceback.format_exc().strip().splitlines()[-1][:200]}); "
                     "its row is empty and the digest reference is the first broadcast's (a weaker check: "
                     "every later sync of a seed must leave the same weights)")
        rows.append(("object store", None, None))
    store, address = host_store(2, backend, timeout_s=600)
    for bucket_mb in args.buckets:
        run(f"broadcast ({backend})", bucket_mb,
            lambda: ray.get([sender.broadcast.remote(address, bucket_mb), engine.receive_weights.remote(address, 1)]))
    if gpu:
        run("CUDA IPC", None, lambda: ray.get(engine.update_weights_from_ipc.remote(sender.ipc_payload.remote())))
    floor_gbps = ray.get(sender.copy_gbps.remote(2**30 if gpu else 2**28))
    for actor in (engine, sender):
        ray.kill(actor)
    del store
    return {"stats": stats, "floor_gbps": floor_gbps, "rows": rows, "checked": check.checked}


def render(results: dict, device: str, notes: list[str], args) -> str:
    lines = [f"# Weight sync, learner process -> engine process ({device})", "",
             "| model | params | MB sent | path | bucket MiB | s / sync (median) | GB/s | vs object store "
             "| floor s | x floor |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        nbytes = r["stats"]["bytes"]
        floor = nbytes / (r["floor_gbps"] * 1e9)
        base = statistics.median(r["rows"][0][2]) if r["rows"][0][2] else None
        for label, bucket_mb, times in r["rows"]:
            head = f"| {name} | {r['stats']['params'] / 1e6:.1f}M | {nbytes / 1e6:.0f} | {label} | {bucket_mb or '-'} |"
            if not times:
                lines.append(f"{head} failed | - | - | {floor:.5f} | - |")
                continue
            s = statistics.median(times)
            ratio = f"{base / s:.2f}x" if base else "-"
            lines.append(f"{head} {s:.4f} | {nbytes / s / 1e9:.2f} | {ratio} | {floor:.5f} | {s / floor:.1f} |")
    lines += ["", f"Each cell: the median of {args.reps * len(SEEDS)} syncs (the sender alternates two weight sets). "
              "GB/s = bytes of the state dict / seconds. `vs object store` = object-store seconds / these seconds "
              "(above 1: faster). Floor = bytes / the device's measured copy bandwidth "
              + ", ".join(f"{n}: {r['floor_gbps']:.0f} GB/s" for n, r in results.items()) + "."]
    lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "Correctness: after every checked sync the engine's weights digest equalled the object-store "
              "path's for the same weights and differed from the other weight set's and the initial checkpoint's ("
              + ", ".join(f"{n}: {r['checked']} checks" for n, r in results.items()) + "); any mismatch aborts the run."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="embedded engine over gloo, tiny model, CPU")
    parser.add_argument("--out", help="also write the results file here")
    parser.add_argument("--models", help="comma-separated subset of the models (default: all)")
    parser.add_argument("--buckets", default=None, help="bucket sizes in MiB (default 64,256,512; smoke 0.25,1,64)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.25)
    args = parser.parse_args()
    args.buckets = [float(b) if "." in b else int(b) for b in
                    (args.buckets or ("0.25,1,64" if args.cpu_smoke else "64,256,512")).split(",")]
    gpu = not args.cpu_smoke
    if gpu and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --cpu-smoke")
    import ray
    ray.init(num_cpus=8, num_gpus=1 if gpu else 0, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    notes = [f"commit {_commit()}, torch {torch.__version__}, ray {ray.__version__}"]
    if gpu:
        ok, message = nccl_joins(ray, 0.5)
        backend = "nccl" if ok else "gloo"
        notes += [message + f"; the broadcast rows use {backend}.",
                  "Sender: the model in bfloat16 on the GPU (a Ray actor); engine: vLLM (RolloutWorker actor, "
                  "enforce_eager), loading through its own load_weights."]
    else:
        backend = "gloo"
        notes += ["CPU smoke run: sender and embedded engine are Ray actors on the CPU, float32, gloo; the floor "
                  "is host memory copy bandwidth."]
    configs = model_configs(args.cpu_smoke)
    chosen = args.models.split(",") if args.models else list(configs)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            try:
                results[name] = measure(ray, name, configs[name], args, tmp, gpu, backend, notes)
            except SystemExit:
                raise
            except Exception:                          # noqa: BLE001  (the other model may still run)
                notes.append(f"{name}: failed: {traceback.format_exc().strip().splitlines()[-1]}")
                traceback.print_exc()
    device = torch.cuda.get_device_name() if gpu else "cpu-smoke"
    text = render(results, device, notes, args)
    print(text)
    slug = device.replace(" ", "_")
    targets = [Path(args.out)] if args.out else []
    if gpu:
        targets.append(ROOT / "benchmarks" / "results")
    write_results(f"weight_sync_{slug}.md", text, targets)
    if len(results) < len(chosen):
        raise SystemExit("FAIL: a model did not complete (see the notes)")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
