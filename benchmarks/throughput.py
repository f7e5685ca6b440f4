"""Time each algorithm's gradient update at its default configuration on synthetic locomotion-shaped data.

    python benchmarks/throughput.py                       # all four scripts, eager, on the device at hand
    python benchmarks/throughput.py --algos misa --modes eager compile --out results.json
    python benchmarks/throughput.py --modes eager cuda-graphs compile+cuda-graphs   # on a GPU
    python benchmarks/throughput.py --algos misa --profile 20   # where the time goes (torch.profiler)
    python benchmarks/throughput.py --num-seeds 1 4 16          # many agents in one step (--num-seeds)
    python benchmarks/throughput.py --modes cuda-graphs --steps-per-replay 1 8 32   # several steps per graph replay
    python benchmarks/throughput.py --count-ops                 # tensor operations per step (eager launches)
    python benchmarks/throughput.py --algos misa --modes cuda-graphs --fused-hmc False True   # MISA's Triton chain

Observations of size 17, actions of size 6, batch 256 (the scripts' default), random data. Each mode builds the
training step exactly as the script does (`make_train_step`: minibatch sampling from a device-resident dataset, then
the update; compiled and/or captured in a CUDA graph). After --warmup steps, steps are timed until --seconds have
passed (with a device sync at both ends, none in between). With --num-seeds S the step trains S agents at once, as
the scripts' --num-seeds does: the table gives steps per second, agent-updates per second (S x steps/s) and the time
of one step. With --steps-per-replay K each call of the step runs K steps (one CUDA graph replay in the graph modes),
as the scripts' --steps-per-replay does. --count-ops also counts the tensor operations one eager step runs (aten
operations below autograd, views left out): on a GPU each is one kernel launch in eager mode and one kernel in a
CUDA graph, so the count measures, on any device, the launch-bound part of a step. Prints a markdown table with the
device and torch version; --out also writes it as JSON, rewritten after every configuration so that a run cut short
keeps what it measured. A configuration that fails is recorded with its error (the exit status is then 1) and the
next one still runs.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "misa": (ROOT / "misa_continuous.py", "MISA"),
    "cql": (ROOT / "baselines" / "cql_continuous.py", "CQL"),
    "td3_bc": (ROOT / "baselines" / "td3_bc_continuous.py", "TD3BC"),
    "iql": (ROOT / "baselines" / "iql_continuous.py", "IQL"),
}


@dataclass
class Args:
    algos: list[Literal["misa", "cql", "td3_bc", "iql"]] = field(default_factory=lambda: list(SCRIPTS))
    """which scripts to time"""
    modes: list[Literal["eager", "compile", "cuda-graphs", "compile+cuda-graphs"]] = field(default_factory=lambda: ["eager"])
    ("how to run the step: as written, torch.compile'd (--compile), captured in a CUDA graph (--cuda-graphs on), or "
     "both; the graph modes need CUDA and are skipped on the CPU")
    num_seeds: list[int] = field(default_factory=lambda: [1])
    """agents trained together in one step (the scripts' --num-seeds); each value is timed"""
    steps_per_replay: list[int] = field(default_factory=lambda: [1])
    """gradient steps per call of the training step (the scripts' --steps-per-replay); each value is timed"""
    warmup: int = 10
    """untimed steps first, in at least 4 calls (compilation and graph capture, on the 4th call, happen here)"""
    dataset_size: int = 100_000
    """transitions in the synthetic device-resident dataset the steps sample from"""
    profile: int = 0
    """if > 0, also profile this many steps per configuration with torch.profiler and print the top operations"""
    seconds: float = 10.0
    """time each configuration for about this long"""
    obs_dim: int = 17
    """observation size of the synthetic data"""
    act_dim: int = 6
    """action size of the synthetic data"""
    cuda: bool = True
    """use CUDA when it is available"""
    tf32: bool = False
    """allow TF32 matmuls on CUDA (a measurement of what lower matmul precision would buy; the scripts use full FP32)"""
    fused_hmc: list[bool] = field(default_factory=lambda: [False])
    ("MISA only: time its step without and/or with --fused-hmc (the Triton chain kernel; CUDA); each value is timed, "
     "e.g. --fused-hmc False True")
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice)"""
    count_ops: bool = False
    """also count the tensor operations (aten, views left out) of one eager step of each script"""
    out: Optional[str] = None
    """also write the results as JSON to this path"""


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def make_agent(module, cls_name: str, args, obs_dim: int, act_dim: int, device: torch.device, num_agents: int = 1):
    cls = getattr(module, cls_name)
    if cls_name == "MISA":
        return cls(args, obs_dim, act_dim, device, num_agents)
    return cls(args, obs_dim, act_dim, device, np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32), num_agents)


def synthetic_dataset(n: int, obs_dim: int, act_dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(obs, actions in (-0.95, 0.95), rewards, next_obs, dones), random, resident on the device like the scripts'."""
    return (torch.randn(n, obs_dim, device=device), torch.rand(n, act_dim, device=device) * 1.9 - 0.95,
            torch.randn(n, device=device), torch.randn(n, obs_dim, device=device), torch.zeros(n, device=device))


def make_step(module, cls_name: str, algo: str, script_args, dataset: tuple, device: torch.device):
    """The script_args.num_seeds agents and `run_steps(first)`, which takes the script_args.steps_per_replay steps
    first, first + 1, ... in one call of the training step built as the script builds it (`make_train_step`: one
    minibatch per agent drawn on the device, then the update, --steps-per-replay times) and returns their last
    metrics."""
    if script_args.compile:
        # compile afresh, as a run of the script does: dynamo's caches from this process's earlier configurations would
        # make it recompile with dynamic shapes (another seed count) and, past its recompile limit (each optimiser's
        # step counts), run the rest eagerly; both would be timed as if they were the script's compiled step
        torch._dynamo.reset()
    num_agents = script_args.num_seeds
    agent = make_agent(module, cls_name, script_args, dataset[0].shape[1], dataset[1].shape[1], device, num_agents)

    sample_batch = module.make_minibatch_sampler(dict(zip(module.TRANSITION_FIELDS, dataset)), num_agents,
                                                 script_args.batch_size, device)
    watch = module.NonFiniteWatch(getattr(module, cls_name).LOSS_NAMES, num_agents, 0, device)
    train_step = module.make_train_step(agent, script_args, device, sample_batch, watch)
    # TD3+BC's delayed actor step is chosen by the caller, as in its training loop
    phase = (lambda i: ((i + 1) % script_args.policy_freq == 0,)) if algo == "td3_bc" else (lambda i: ())

    def run_steps(first: int) -> dict:
        return train_step(*[phase(i) for i in range(first, first + script_args.steps_per_replay)])

    return agent, run_steps


def time_steps(run_steps, steps_per_call: int, warmup: int, seconds: float, device: torch.device) -> tuple[float, int]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    n = 0
    for _ in range(max(4, -(-warmup // steps_per_call))):  # the graph modes capture on a key's 4th call
        run_steps(n)
        n += steps_per_call
    sync()
    start, first = time.perf_counter(), n
    while True:
        for _ in range(5):  # check the clock every few calls only
            run_steps(n)
            n += steps_per_call
        sync()
        if time.perf_counter() - start >= seconds:
            return (n - first) / (time.perf_counter() - start), n - first


def profile_steps(run_steps, steps_per_call: int, num_steps: int, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for n in range(0, num_steps, steps_per_call):
            run_steps(n)
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=60)


NOT_KERNELS = {"view", "_unsafe_view", "unsqueeze", "squeeze", "transpose", "t", "expand", "slice", "select", "alias",
               "detach", "as_strided", "permute", "split", "split_with_sizes", "unbind", "chunk", "reshape",
               "lift_fresh", "_record_function_enter_new", "_record_function_exit"}  # views and profiler markers


def count_ops(run_steps, steps_per_call: int) -> dict:
    """The aten operations per step (views and profiler markers left out), over two calls of `run_steps` (so that
    TD3+BC's steps with and without its delayed actor update both count), autograd's backward included, with each
    optimiser step counted as one operation, as the fused CUDA Adam of the scripts is one kernel (on the CPU, Adam
    runs elementwise operations per parameter instead). Also the host reads (`.item()`) outside the optimisers, which
    must be zero in the training step, and the most frequent operations."""
    from collections import Counter

    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts, self.in_optimiser = Counter(), False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not self.in_optimiser:
                self.counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    counter = CountOps()

    def enter(opt, args, kwargs):
        counter.in_optimiser = True
        counter.counts["optimiser step"] += 1

    def leave(opt, args, kwargs):
        counter.in_optimiser = False

    hooks = [register_optimizer_step_pre_hook(enter), register_optimizer_step_post_hook(leave)]
    try:
        with counter:
            run_steps(0)
            run_steps(steps_per_call)
    finally:
        for hook in hooks:
            hook.remove()
    counts = Counter({k: v / (2 * steps_per_call) for k, v in counter.counts.items() if k not in NOT_KERNELS})
    return {"ops_per_step": sum(counts.values()), "host_reads_per_step": counts["_local_scalar_dense"],
            "most_frequent_ops": counts.most_common(8)}


def print_tables(results: list[dict], header: dict) -> None:
    """The results as markdown tables on stdout."""
    print(f"\ndevice: {header['device']}; torch {header['torch']}; obs {header['obs_dim']}, act {header['act_dim']}, "
          f"each script's default configuration\n", flush=True)
    print("| script | mode | seeds S | steps per replay K | steps/s | agent-updates/s | ms per step | 1M steps (S agents) take |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['algo']} | {r['mode']} | {r['num_seeds']} | {r['steps_per_replay']} | failed: {r['error']} "
                  f"| | | |")
            continue
        hours = 1e6 / r["steps_per_s"] / 3600
        print(f"| {r['algo']} | {r['mode']} | {r['num_seeds']} | {r['steps_per_replay']} | {r['steps_per_s']:.2f} "
              f"| {r['agent_updates_per_s']:.2f} | {r['ms_per_step']:.2f} | {hours:.1f} h |")
    if any("ops_per_step" in r for r in results):
        print("\n| script | seeds S | tensor operations per eager step (an optimiser step counts 1) | host reads |\n"
              "|---|---|---|---|")
        for r in results:
            if "ops_per_step" in r:
                print(f"| {r['algo']} | {r['num_seeds']} | {r['ops_per_step']:g} | {r['host_reads_per_step']:g} |")
    sys.stdout.flush()


def main(args: Args) -> int:
    """Times every configuration; one that fails (a kernel that does not compile on this GPU, memory) is recorded
    with its error and the next one runs. Returns the exit status: 1 if any configuration failed."""
    torch.set_flush_denormal(True)  # as the scripts' main() does, before torch's thread pool starts
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    header = {"device": device_name, "torch": torch.__version__, "tf32": args.tf32, "batch_size": "script default",
              "obs_dim": args.obs_dim, "act_dim": args.act_dim}
    results = []

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps({**header, "results": results}, indent=2) + "\n")

    for algo in args.algos:
        path, cls_name = SCRIPTS[algo]
        module = load(path)
        torch.manual_seed(0)
        dataset = synthetic_dataset(args.dataset_size, args.obs_dim, args.act_dim, device)
        for mode in args.modes:
            if "cuda-graphs" in mode and device.type != "cuda":
                print(f"{algo:7s} {mode}: skipped (CUDA graphs need a GPU)", file=sys.stderr)
                continue
            fused_values = args.fused_hmc if algo == "misa" else [False]
            for seeds, k, fused in [(s, k, f) for s in args.num_seeds for k in args.steps_per_replay
                                    for f in fused_values]:
                if fused and device.type != "cuda":
                    print(f"{algo:7s} {mode}+fused-hmc: skipped (the Triton kernel runs on a GPU)", file=sys.stderr)
                    continue
                result = {"algo": algo, "mode": mode + "+fused-hmc" * fused, "num_seeds": seeds, "steps_per_replay": k}
                try:
                    extra = dict(fused_hmc=fused, tf32=args.tf32) if algo == "misa" else {}
                    script_args = module.Args(compile="compile" in mode,
                                              cuda_graphs="on" if "cuda-graphs" in mode else "off",
                                              num_seeds=seeds, steps_per_replay=k, **extra)
                    _, run_steps = make_step(module, cls_name, algo, script_args, dataset, device)
                    rate, count = time_steps(run_steps, k, args.warmup, args.seconds, device)
                    result.update(steps_per_s=rate, agent_updates_per_s=seeds * rate, ms_per_step=1000 / rate,
                                  steps_timed=count)
                    print(f"{algo:7s} {result['mode']:30s} S={seeds:<3d} K={k:<3d} {rate:9.2f} steps/s, "
                          f"{seeds * rate:9.2f} agent-updates/s ({count} steps)", file=sys.stderr)
                    if args.count_ops and mode == "eager" and k == 1:
                        result.update(count_ops(run_steps, k))
                        print(f"{algo:7s} S={seeds}: {result['ops_per_step']:g} tensor operations per eager step, "
                              f"{result['host_reads_per_step']:g} host reads; most frequent: "
                              f"{', '.join(f'{n} {c:g}' for n, c in result['most_frequent_ops'])}", file=sys.stderr)
                    if args.profile > 0:
                        print(f"\n## profile: {algo}, {mode}, S={seeds}, K={k}, {args.profile} steps\n", flush=True)
                        print(profile_steps(run_steps, k, args.profile, device), flush=True)
                except Exception as e:  # noqa: BLE001 - recorded, and the other configurations still run
                    result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                    traceback.print_exc()
                    print(f"{algo:7s} {result['mode']:30s} S={seeds:<3d} K={k:<3d} failed: {result['error']}",
                          file=sys.stderr)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                results.append(result)
                save()  # after every configuration: a run cut short (a GPU session's time running out) keeps them
    save()
    print_tables(results, header)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
