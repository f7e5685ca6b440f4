"""Run a grid of offline-RL experiments: scripts x datasets x seeds, locally or on a Ray cluster.

    python benchmark.py --scripts misa_continuous.py baselines/td3_bc_continuous.py \
        --env-ids hopper-medium walker2d-medium --num-seeds 3 --workers 2
    python benchmark.py ... --extra-args="--total-timesteps 20000 --eval-freq 5000" --resume
    python benchmark.py ... --ray-address auto            # one Ray task per run on an existing cluster

Each run is one subprocess, `python SCRIPT --env-id ENV --seed N --run-name NAME [extra args]`, with the
deterministic name ENV__SCRIPT__SEED, so its outputs land in runs/NAME/ and a rerun finds them. Logs go to
runs/logs/NAME.log. A failed run is reported with its log and the others go on. A grid whose runs already have
results is refused unless --resume (skip the finished runs, continue those with a checkpoint) or --overwrite is given.
Local runs share the cores: each gets OMP_NUM_THREADS = cores / --workers. Then `python benchmarks/report.py`
makes the tables.
"""

from __future__ import annotations

import csv
import os
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
    """skip runs whose evaluations.csv already reaches their --total-timesteps, continue those that saved a
    checkpoint.pt (passing --resume), and restart from scratch those that stopped without one (passing --overwrite)"""
    overwrite: bool = False
    """rerun runs whose directory already exists from scratch, deleting their results (passes --overwrite); without
    this or --resume such a grid is refused, so that no earlier result is lost"""
    threads_per_run: Optional[int] = None
    """torch (OpenMP) threads of each local run, set as OMP_NUM_THREADS; default: the machine's cores divided by
    --workers, at least 1, so that concurrent runs do not oversubscribe the cores (ignored with --ray-address,
    where Ray sets it from each task's one CPU)"""
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


def run_state(run: Run, output_dir: Path) -> str:
    """'complete', 'checkpoint' (can be continued), 'started' (a directory without a checkpoint) or 'new'."""
    run_dir = output_dir / "runs" / run.name
    if is_complete(run, output_dir):
        return "complete"
    if (run_dir / "checkpoint.pt").exists():
        return "checkpoint"
    return "started" if run_dir.is_dir() and any(run_dir.iterdir()) else "new"


def execute(command: list[str], log_path: str, cwd: str, env: Optional[dict] = None) -> int:
    """Run one experiment, its stdout and stderr appended to log_path; returns the exit code."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:  # appended: a resumed run's log keeps what came before
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        return subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def threads_per_run(workers: int, requested: Optional[int]) -> int:
    return requested if requested is not None else max(1, (os.cpu_count() or 1) // workers)


def run_local(todo: list[Run], workers: int, threads: int, output_dir: Path, on_done) -> None:
    # Each run gets its share of the cores: two torch processes with a full thread pool each on the same cores
    # slow each other down far below half speed (measured: docs/performance.md).
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait: the work is in subprocesses
        futures = {pool.submit(execute, r.command, str(output_dir / "runs" / "logs" / f"{r.name}.log"),
                               str(output_dir), env): r for r in todo}
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
    if args.threads_per_run is not None and args.threads_per_run < 1:
        sys.exit(f"error: --threads-per-run must be >= 1, got {args.threads_per_run}")
    for script in args.scripts:
        if not Path(script).is_file():
            sys.exit(f"error: --scripts: no such file {script}")
    output_dir = Path(args.output_dir).resolve()
    runs = expand_grid(args)
    states = {r.name: run_state(r, output_dir) for r in runs}
    existing = [r.name for r in runs if states[r.name] != "new"]
    if existing and not (args.resume or args.overwrite):
        sys.exit(f"error: {len(existing)} runs of this grid already have results under {output_dir / 'runs'} "
                 f"(e.g. {existing[0]}); continue them with --resume, or start them afresh with --overwrite "
                 f"(deletes their results)")
    todo = []
    for r in runs:
        state = states[r.name]
        if args.resume and state == "complete":
            continue
        if args.resume and state == "checkpoint":
            checkpoint = output_dir / "runs" / r.name / "checkpoint.pt"
            r.command = [*r.command[:2], "--resume", str(checkpoint), *shlex.split(args.extra_args)]
        elif state != "new":
            r.command = [*r.command, "--overwrite"]
        todo.append(r)
    resumed = sum(1 for r in todo if "--resume" in r.command)
    print(f"{len(runs)} runs in the grid, {len(runs) - len(todo)} already complete, {len(todo)} to run"
          + (f" ({resumed} continued from their checkpoints)" if resumed else ""))
    threads = threads_per_run(args.workers, args.threads_per_run)
    if args.dry_run:
        for r in todo:
            print(shlex.join(r.command) + ("" if args.ray_address else f"  # OMP_NUM_THREADS={threads}"))
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
        run_local(todo, args.workers, threads, output_dir, on_done)
    bar.close()
    print(f"{len(todo) - len(failed)} of {len(todo)} runs succeeded in {time.time() - start:.0f} s")
    for run, log in failed:
        print(f"  failed: {run.name}: {log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
