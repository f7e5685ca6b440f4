"""Run a grid of offline-RL experiments: scripts x datasets x seeds, locally or on a Ray cluster.

    python benchmark.py --scripts misa_continuous.py baselines/td3_bc_continuous.py \
        --env-ids hopper-medium walker2d-medium --num-seeds 3 --workers 2
    python benchmark.py ... --extra-args="--total-timesteps 20000 --eval-freq 5000" --resume
    python benchmark.py ... --ray-address auto            # one Ray task per run on an existing cluster

Each run is one subprocess, `python SCRIPT --env-id ENV --seed N --run-name NAME [extra args]`, with the
deterministic name ENV__SCRIPT__SEED, so its outputs land in runs/NAME/ and a rerun finds them. Logs go to
runs/logs/NAME.log. A failed run is reported with its log and the others go on. --resume skips runs whose
evaluations.csv already reaches the run's --total-timesteps. Then `python benchmarks/report.py` makes the tables.
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tyro


@dataclass
class Args:
    scripts: list[str] = field(default_factory=lambda: ["misa_continuous.py"])
    """paths of the algorithm scripts to run"""
    env_ids: list[str] = field(default_factory=lambda: ["walker2d-medium"])
    """datasets (short names or Minari ids) passed as --env-id"""
    num_seeds: int = 3
    """seeds per (script, dataset)"""
    start_seed: int = 1
    """the first seed; seeds are start-seed .. start-seed + num-seeds - 1"""
    workers: int = 1
    """runs at a time on this machine (ignored with --ray-address)"""
    extra_args: str = ""
    """one string of flags passed to every run; write it with "=", e.g. --extra-args="--total-timesteps 20000" """
    ray_address: Optional[str] = None
    """address of an existing Ray cluster ("auto" for the local one); needs `pip install -r requirements-ray.txt`"""
    resume: bool = False
    """skip runs whose evaluations.csv already reaches their --total-timesteps"""
    output_dir: str = "."
    """runs/ and runs/logs/ are created here (on a Ray cluster, a path every node can reach)"""
    dry_run: bool = False
    """print the commands and exit"""


@dataclass
class Run:
    script: str
    env_id: str
    seed: int
    name: str
    command: list[str]
    total_timesteps: int


def run_name(script: str, env_id: str, seed: int) -> str:
    return f"{env_id.replace('/', '-')}__{Path(script).stem}__{seed}"


def total_timesteps(script: str, extra: list[str]) -> int:
    """The run's --total-timesteps: from the extra args, else the script's default in its Args dataclass."""
    if "--total-timesteps" in extra:
        return int(extra[extra.index("--total-timesteps") + 1])
    match = re.search(r"^\s*total_timesteps: int = ([\d_]+)", Path(script).read_text(), re.M)
    if not match:
        raise ValueError(f"cannot find the default total_timesteps of {script}")
    return int(match.group(1).replace("_", ""))


def expand_grid(args: Args) -> list[Run]:
    extra = shlex.split(args.extra_args)
    runs = []
    for script in args.scripts:
        steps = total_timesteps(script, extra)
        for env_id in args.env_ids:
            for seed in range(args.start_seed, args.start_seed + args.num_seeds):
                name = run_name(script, env_id, seed)
                command = [sys.executable, str(Path(script).resolve()), "--env-id", env_id, "--seed", str(seed),
                           "--run-name", name, *extra]
                runs.append(Run(script, env_id, seed, name, command, steps))
    return runs


def is_complete(run: Run, output_dir: Path) -> bool:
    path = output_dir / "runs" / run.name / "evaluations.csv"
    if not path.exists():
        return False
    with open(path) as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    return bool(steps) and steps[-1] >= run.total_timesteps


def execute(command: list[str], log_path: str, cwd: str) -> int:
    """Run one experiment, its stdout and stderr into log_path; returns the exit code."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        return subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode


def run_local(todo: list[Run], workers: int, output_dir: Path, on_done) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait: the work is in subprocesses
        futures = {pool.submit(execute, r.command, str(output_dir / "runs" / "logs" / f"{r.name}.log"),
                               str(output_dir)): r for r in todo}
        for future in as_completed(futures):
            on_done(futures[future], future.result())


def run_ray(todo: list[Run], address: str, output_dir: Path, on_done) -> None:
    try:
        import ray
    except ImportError:
        sys.exit("error: --ray-address needs Ray: pip install -r requirements-ray.txt")
    ray.init(address=address, log_to_driver=False)
    remote_execute = ray.remote(num_cpus=1)(execute)
    pending = {remote_execute.remote(r.command, str(output_dir / "runs" / "logs" / f"{r.name}.log"),
                                     str(output_dir)): r for r in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            on_done(pending.pop(ref), ray.get(ref))
    ray.shutdown()


def main(args: Args) -> int:
    if args.num_seeds < 1 or args.workers < 1:
        sys.exit("error: --num-seeds and --workers must be >= 1")
    for script in args.scripts:
        if not Path(script).is_file():
            sys.exit(f"error: --scripts: no such file {script}")
    output_dir = Path(args.output_dir).resolve()
    runs = expand_grid(args)
    todo = [r for r in runs if not (args.resume and is_complete(r, output_dir))]
    print(f"{len(runs)} runs in the grid, {len(runs) - len(todo)} already complete, {len(todo)} to run")
    if args.dry_run:
        for r in todo:
            print(shlex.join(r.command))
        return 0
    from tqdm import tqdm

    failed = []
    bar = tqdm(total=len(todo), desc="benchmark", unit="run")
    start = time.time()

    def on_done(run: Run, returncode: int) -> None:
        log = output_dir / "runs" / "logs" / f"{run.name}.log"
        if returncode != 0:
            failed.append((run, log))
            tqdm.write(f"FAILED {run.name} (exit {returncode}); log: {log}")
        else:
            tqdm.write(f"done   {run.name}")
        bar.update(1)

    if args.ray_address:
        run_ray(todo, args.ray_address, output_dir, on_done)
    else:
        run_local(todo, args.workers, output_dir, on_done)
    bar.close()
    print(f"{len(todo) - len(failed)} of {len(todo)} runs succeeded in {time.time() - start:.0f} s")
    for run, log in failed:
        print(f"  failed: {run.name}: {log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
