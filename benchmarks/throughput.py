"""Time each algorithm's gradient update at its default configuration on synthetic locomotion-shaped data.

    python benchmarks/throughput.py                       # all four scripts, eager, on the device at hand
    python benchmarks/throughput.py --algos misa --compile --out results.json

Observations of size 17, actions of size 6, batch 256 (the scripts' default), random data; after --warmup updates,
updates are timed until --seconds have passed (with a device sync at both ends, none in between). Prints a markdown
table of updates per second with the device and torch version; --out also writes it as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
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
    compile: bool = False
    """also time the update wrapped in torch.compile"""
    warmup: int = 5
    """untimed updates first (compilation happens here)"""
    seconds: float = 10.0
    """time each configuration for about this long"""
    obs_dim: int = 17
    """observation size of the synthetic data"""
    act_dim: int = 6
    """action size of the synthetic data"""
    cuda: bool = True
    """use CUDA when it is available"""
    threads: Optional[int] = None
    """torch CPU threads (default: torch's choice)"""
    out: Optional[str] = None
    """also write the results as JSON to this path"""


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def make_agent(module, cls_name: str, args, obs_dim: int, act_dim: int, device: torch.device):
    cls = getattr(module, cls_name)
    if cls_name == "MISA":
        return cls(args, obs_dim, act_dim, device)
    return cls(args, obs_dim, act_dim, device, np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))


def time_updates(update, batch, warmup: int, seconds: float, device: torch.device) -> tuple[float, int]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        update(*batch)
    sync()
    start, n = time.perf_counter(), 0
    while True:
        for _ in range(5):  # check the clock every few updates only
            update(*batch)
        n += 5
        sync()
        if time.perf_counter() - start >= seconds:
            return n / (time.perf_counter() - start), n


def main(args: Args) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    results = []
    for algo in args.algos:
        path, cls_name = SCRIPTS[algo]
        module = load(path)
        script_args = module.Args()
        torch.manual_seed(0)
        b = script_args.batch_size
        batch = (torch.randn(b, args.obs_dim, device=device), torch.rand(b, args.act_dim, device=device) * 1.9 - 0.95,
                 torch.randn(b, device=device), torch.randn(b, args.obs_dim, device=device),
                 torch.zeros(b, device=device))
        for mode in ["eager"] + (["compile"] if args.compile else []):
            agent = make_agent(module, cls_name, script_args, args.obs_dim, args.act_dim, device)
            update = torch.compile(agent.update) if mode == "compile" else agent.update
            rate, n = time_updates(update, batch, args.warmup, args.seconds, device)
            results.append({"algo": algo, "mode": mode, "updates_per_s": rate, "updates_timed": n})
            print(f"{algo:7s} {mode:8s} {rate:9.2f} updates/s ({n} updates)", file=sys.stderr)
    header = {"device": device_name, "torch": torch.__version__, "batch_size": "script default",
              "obs_dim": args.obs_dim, "act_dim": args.act_dim}
    print(f"\ndevice: {device_name}; torch {torch.__version__}; obs {args.obs_dim}, act {args.act_dim}, "
          f"each script's default configuration\n")
    print("| script | mode | updates/s | 1M updates take |")
    print("|---|---|---|---|")
    for r in results:
        hours = 1e6 / r["updates_per_s"] / 3600
        print(f"| {r['algo']} | {r['mode']} | {r['updates_per_s']:.2f} | {hours:.1f} h |")
    if args.out:
        Path(args.out).write_text(json.dumps({**header, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
