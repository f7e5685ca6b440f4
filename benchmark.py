"""Run a grid of offline-RL experiments: scripts x datasets x seeds, locally or on a Ray cluster.

    python benchmark.py --scripts misa_continuous.py baselines/td3_bc_continuous.py \
        --env-ids hopper-medium walker2d-medium --num-seeds 3 --workers 2
    python benchmark.py ... --extra-args="--total-timesteps 20000 --eval-freq 5000" --resume
    python benchmark.py ... --ray-address auto            # one Ray task per process on an existing cluster
    python benchmark.py ... --num-seeds 5 --seeds-per-process 5   # the 5 seeds of a pair in one process (GPU)

Each run has the deterministic name ENV__SCRIPT__SEED, so its outputs land in runs/NAME/ and a rerun finds them. By
default each run is one subprocess, `python SCRIPT --env-id ENV --seed N --run-name NAME [extra args]`, logging to
runs/logs/NAME.log; with --seeds-per-process K, up to K consecutive seeds of one (script, dataset) pair train in one
subprocess with the scripts' --num-seeds (`--seed N --num-seeds K --run-name ENV__SCRIPT__{seed}`: the same run names),
logging to runs/logs/ENV__SCRIPT__N-M.log. A failed process is reported with its log and the others go on. Ctrl-C or
SIGTERM (to benchmark.py alone, `kill PID`, or to its process group) stops a local grid: the running scripts save their
checkpoints and exit, no further run starts, and --resume continues the grid (later stops do nothing while they save;
one that Python swallowed, printed as "Exception ignored", is not taken: the next Ctrl-C stops the grid). A grid whose
runs already have results is refused unless --resume (skip the finished runs, continue those with a checkpoint) or
--overwrite is given. Local runs share the cores: each gets OMP_NUM_THREADS = cores / --workers. Every process writes
one row per run to runs/NAME/provenance.csv (command, start, wall time, exit code, commit, machine, torch version, which
build of the dataset), so a run directory says how it was made; the row is kept up to date while the process runs, so a
killed process leaves one too (empty exit code). Then `python benchmarks/report.py` makes the tables.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

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
    seeds_per_process: int = 1
    ("train up to this many consecutive seeds of one (script, dataset) pair together in one process, with the scripts' "
     "--num-seeds (one batched step for all of them: what a GPU wants); the run names stay the same. Keep the same "
     "value when resuming a grid: a resumed process continues the seeds it was started with")
    workers: int = 1
    """processes at a time on this machine (ignored with --ray-address)"""
    extra_args: str = ""
    """one string of flags passed to every run; write it with "=", e.g. --extra-args="--total-timesteps 20000" """
    ray_address: Optional[str] = None
    """address of an existing Ray cluster ("auto" for the local one); needs `pip install -r requirements-ray.txt`"""
    resume: bool = False
    ("skip runs whose evaluations.csv already reaches their --total-timesteps, continue those that saved a "
     "checkpoint.pt (passing --resume), and restart from scratch those that stopped without one (passing --overwrite)")
    overwrite: bool = False
    ("rerun runs whose directory already exists from scratch, deleting their results (passes --overwrite); without "
     "this or --resume such a grid is refused, so that no earlier result is lost")
    threads_per_run: Optional[int] = None
    ("torch (OpenMP) threads of each local process, set as OMP_NUM_THREADS; default: the machine's cores divided by "
     "--workers, at least 1, so that concurrent runs do not oversubscribe the cores (ignored with --ray-address, where "
     "Ray sets it from each task's one CPU)")
    output_dir: str = "."
    """runs/ and runs/logs/ are created here (on a Ray cluster, a path every node can reach)"""
    dry_run: bool = False
    """print the commands and exit"""
    provenance_every_s: float = 60.0
    ("how often (seconds) a running process's rows in provenance.csv are brought up to date with its wall time so far "
     "and an empty exit code, so that a process killed together with benchmark.py still leaves its row")


@dataclass
class Run:
    script: str
    env_id: str
    seed: int
    name: str
    command: list[str]
    total_timesteps: int


@dataclass
class Job:
    """One subprocess: one run, or several consecutive seeds of one (script, dataset) pair (--num-seeds)."""
    runs: list[Run]
    name: str
    command: list[str]


def run_name(script: str, env_id: str, seed) -> str:
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


def execute(command: list[str], log_path: str, cwd: str, env: Optional[dict] = None,
            provenance: Sequence[tuple[str, dict, str]] = (),
            provenance_every_s: float = 60.0) -> tuple[int, str, float]:
    """Run one experiment, its stdout and stderr appended to log_path; returns the exit code, the start time (UTC,
    ISO 8601) and the wall time in seconds. provenance: (path of a run's provenance.csv, that run's row without start,
    wall time, exit code and dataset build, the run's --env-id) for each run the process trains. While the process
    runs, the rows are brought up to date every provenance_every_s seconds (wall time so far, an empty exit code), then
    finished with the exit code: a process killed together with benchmark.py (a machine or a session stopped) still
    leaves its row, its wall time short by less than provenance_every_s. The build of the dataset is read at each
    update, as a run that builds its dataset on first use makes it only after it started."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()

    def record(exit_code: str) -> None:
        for path, row, env_id in provenance:
            # while running, only into a run directory the script has claimed: a new run refuses a directory that
            # holds anything, and --overwrite deletes it first
            if exit_code or Path(path).parent.is_dir():
                write_provenance_row(Path(path), {**row, "started_utc": started, "dataset": dataset_build(env_id),
                                                  "wall_s": f"{time.perf_counter() - t0:.3f}", "exit_code": exit_code})

    with open(log_path, "a") as log:  # appended: a resumed run's log keeps what came before
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        RUNNING.add(process)
        if STOPPING.is_set():  # started just as the grid was being stopped: stop it as the others
            process.send_signal(signal.SIGTERM)
        try:
            while True:
                try:
                    returncode = process.wait(timeout=provenance_every_s)
                    break
                except subprocess.TimeoutExpired:
                    record(exit_code="")
        finally:
            RUNNING.discard(process)
    record(exit_code=str(returncode))
    return returncode, started, time.perf_counter() - t0


PROVENANCE_FIELDS = ["run", "command", "threads", "started_utc", "wall_s", "exit_code", "seeds_in_process", "commit",
                     "machine", "torch", "dataset"]


def this_commit() -> str:
    """The repository's commit, with "+local-changes" where tracked files differ from it. A copy without .git (as on
    a device machine) names it through the environment variable BENCHMARK_COMMIT, else it is "unknown"."""
    if os.environ.get("BENCHMARK_COMMIT"):
        return os.environ["BENCHMARK_COMMIT"]

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return (commit + ("+local-changes" if git("status", "--porcelain", "--untracked-files=no") else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def this_machine() -> str:
    """The GPU(s) nvidia-smi names, else the CPU model, with the core count."""
    cores = f"{os.cpu_count()} CPU cores"
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.split("\n")
        gpus = [g.strip() for g in gpus if g.strip()]
        if gpus:
            return f"{len(gpus)} x {gpus[0]}, {cores}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {cores}"


def dataset_build(env_id: str) -> str:
    """Which build of the dataset the runs read, from its Minari metadata: for one tools/make_dataset.py wrote, the
    builder's version, episodes and mean return (builds of one name differ where the builder or MuJoCo did:
    docs/datasets.md); else the Minari id; "" where it is not on this machine."""
    short = re.fullmatch(r"(halfcheetah|hopper|walker2d)-(.+)", env_id)
    dataset_id = f"misa-pytorch/{short.group(1)}/{short.group(2)}-v0" if short else env_id
    root = Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))
    try:
        description = json.loads((root / dataset_id / "data" / "metadata.json").read_text()).get("description") or ""
    except (OSError, ValueError):
        return ""
    built = re.search(r"(\d+) episodes, mean episode return (-?[\d.]+)\..*Built by tools/make_dataset\.py (\S+) ",
                      description)
    if not built:
        return dataset_id
    return f"{dataset_id}: make_dataset.py {built.group(3)}, {built.group(1)} episodes, mean return {built.group(2)}"


def last_line(log: Path) -> str:
    """The last non-empty line of a run's log (its error, for a run that failed; progress bars end lines with \\r)."""
    try:
        lines = [line.strip() for line in re.split(r"[\r\n]", log.read_text(errors="replace")) if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def readable_command(command: list[str]) -> str:
    """The command as a person would type it: `python`, and the script relative to the repository when inside it."""
    script = Path(command[1])
    try:
        script = script.relative_to(Path(__file__).resolve().parent)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *command[2:]])


def provenance_rows(job: Job, output_dir: Path, threads: str, context: dict) -> list[tuple[str, dict, str]]:
    """(path, row, env id) for each run of a process; execute() adds the start, the wall time, the exit code and the
    build of the dataset."""
    return [(str(output_dir / "runs" / run.name / "provenance.csv"),
             {"run": run.name, "command": readable_command(job.command), "threads": threads,
              "seeds_in_process": len(job.runs), **context}, run.env_id) for run in job.runs]


def write_provenance_row(path: Path, row: dict) -> None:
    """Add a process's row to a run's provenance.csv, or replace the row it wrote before (same start and command): one
    row per process that trained the run, so a resumed run's wall time is the sum of its rows. Written to a temporary
    file and renamed, so that a kill during the write leaves the earlier file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    same = [i for i, r in enumerate(rows) if (r["started_utc"], r["command"]) == (row["started_utc"], row["command"])]
    if same:
        rows[same[-1]] = row
    else:
        rows.append(row)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, PROVENANCE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def torch_version() -> str:
    """torch's version in this Python, the one that runs the scripts locally."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def threads_per_run(workers: int, requested: Optional[int]) -> int:
    return requested if requested is not None else max(1, (os.cpu_count() or 1) // workers)


def make_jobs(runs: list[Run], states: dict[str, str], args: Args, output_dir: Path) -> list[Job]:
    """The processes to start: runs to redo, in chunks of up to --seeds-per-process consecutive seeds of one
    (script, dataset) pair that are all continued from checkpoints (--resume of the first: the script continues the
    seeds it was started with) or all started afresh (--overwrite where a member left something behind)."""
    extra = shlex.split(args.extra_args)
    jobs, chunk = [], []

    def resumes(run: Run) -> bool:
        return args.resume and states[run.name] == "checkpoint"

    def close_chunk() -> None:
        if not chunk:
            return
        first, last = chunk[0], chunk[-1]
        if resumes(first):
            command = [*first.command[:2], "--resume", str(output_dir / "runs" / first.name / "checkpoint.pt"), *extra]
        elif len(chunk) == 1:
            command = list(first.command)
        else:
            command = [*first.command[:2], "--env-id", first.env_id, "--seed", str(first.seed), "--num-seeds",
                       str(len(chunk)), "--run-name", run_name(first.script, first.env_id, "{seed}"), *extra]
        if not resumes(first) and any(states[r.name] != "new" for r in chunk):
            command.append("--overwrite")
        name = first.name if len(chunk) == 1 else run_name(first.script, first.env_id, f"{first.seed}-{last.seed}")
        jobs.append(Job(list(chunk), name, command))
        chunk.clear()

    for run in runs:
        if args.resume and states[run.name] == "complete":
            close_chunk()
            continue
        if chunk and (len(chunk) == args.seeds_per_process or (run.script, run.env_id) != (chunk[-1].script, chunk[-1].env_id)
                      or run.seed != chunk[-1].seed + 1 or resumes(run) != resumes(chunk[-1])):
            close_chunk()
        chunk.append(run)
    close_chunk()
    return jobs


RUNNING: set[subprocess.Popen] = set()  # the processes execute() is waiting for, to which a stop is passed on
STOPPING = threading.Event()
STOP_GRACE_S = 10.0  # how long a stopped grid waits for its scripts to stop by themselves before it stops them


last_stop_raised = -math.inf  # time.monotonic() of the last KeyboardInterrupt stop_once raised


def stop_once(signum, frame):
    # Ctrl-C, or SIGTERM (a kill or a cluster's preemption), stops the grid. Once run_local has taken the stop
    # (STOPPING), later ones do nothing while the scripts save their checkpoints; nor do those in the second after one
    # is raised, while it travels to run_local. A stop raised where Python swallows exceptions (a __del__ or a weakref
    # callback, printed as "Exception ignored") is thus not the last: the next Ctrl-C stops the grid. Not SIG_IGN:
    # Python raises an error for a signal that arrives just before such a switch.
    global last_stop_raised
    if not STOPPING.is_set() and time.monotonic() - last_stop_raised > 1.0:
        last_stop_raised = time.monotonic()
        raise KeyboardInterrupt


def run_local(todo: list[Job], workers: int, threads: int, output_dir: Path, provenance, every_s: float,
              on_done) -> list[Job]:
    """Runs the processes, up to `workers` at a time; returns those never started. Ctrl-C (or SIGTERM, to
    benchmark.py alone or to its process group) reaches the running scripts too, and each saves a checkpoint and exits:
    then no further process is started, and those running are waited for and recorded, so that --resume continues the
    grid where it stopped."""
    # Each process gets its share of the cores: two torch processes with a full thread pool each on the same cores
    # slow each other down far below half speed (measured: docs/performance.md).
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait: the work is in subprocesses
        futures, recorded = {}, set()
        try:
            for r in todo:
                futures[pool.submit(execute, r.command, str(output_dir / "runs" / "logs" / f"{r.name}.log"),
                                    str(output_dir), env, provenance(r), every_s)] = r
            for future in as_completed(futures):
                on_done(futures[future], *future.result())
                recorded.add(future)
        except KeyboardInterrupt:  # the scripts are saving checkpoints: wait for them
            STOPPING.set()  # the stop is taken: later ones do nothing, and a process started now is stopped at once
            not_started = [futures[future] for future in futures if future.cancel()] + todo[len(futures):]
            running = [f for f in futures if not f.cancelled() and f not in recorded]
            print(f"\nstopping: {len(not_started)} processes not started; waiting for the {len(running)} running to "
                  f"save their checkpoints and exit", flush=True)
            # A kill of benchmark.py alone (not of its process group) reaches no script: pass the stop on to those
            # still running after a grace period. One that a terminal's Ctrl-C or a group's SIGTERM reached is gone by
            # then; a second signal while it exits would end it by the signal's default action, and with it the exit
            # code 130 that says its checkpoint was saved.
            deadline = time.time() + STOP_GRACE_S
            while time.time() < deadline and any(process.poll() is None for process in list(RUNNING)):
                time.sleep(0.1)
            for process in list(RUNNING):
                process.send_signal(signal.SIGTERM)
            for future in running:
                on_done(futures[future], *future.result())
            return not_started
    return []


def run_ray(todo: list[Job], address: str, output_dir: Path, provenance, every_s: float, on_done) -> None:
    try:
        import ray
    except ImportError:
        sys.exit("error: --ray-address needs Ray: pip install -r requirements-ray.txt")
    ray.init(address=address, log_to_driver=False)
    remote_execute = ray.remote(num_cpus=1)(execute)
    pending = {remote_execute.remote(r.command, str(output_dir / "runs" / "logs" / f"{r.name}.log"),
                                     str(output_dir), None, provenance(r), every_s): r for r in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            on_done(pending.pop(ref), *ray.get(ref))
    ray.shutdown()


def main(args: Args) -> int:
    if args.num_seeds < 1 or args.workers < 1 or args.seeds_per_process < 1:
        sys.exit("error: --num-seeds, --seeds-per-process and --workers must be >= 1")
    if args.threads_per_run is not None and args.threads_per_run < 1:
        sys.exit(f"error: --threads-per-run must be >= 1, got {args.threads_per_run}")
    if not args.provenance_every_s > 0:
        sys.exit(f"error: --provenance-every-s must be > 0, got {args.provenance_every_s}")
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
    todo = make_jobs(runs, states, args, output_dir)
    to_run = sum(len(job.runs) for job in todo)
    resumed = sum(len(job.runs) for job in todo if "--resume" in job.command)
    print(f"{len(runs)} runs in the grid, {len(runs) - to_run} already complete, {to_run} to run"
          + (f" ({resumed} continued from their checkpoints)" if resumed else "")
          + (f" in {len(todo)} processes" if len(todo) != to_run else ""))
    threads = threads_per_run(args.workers, args.threads_per_run)
    if args.dry_run:
        for r in todo:
            print(shlex.join(r.command) + ("" if args.ray_address else f"  # OMP_NUM_THREADS={threads}"))
        return 0
    from tqdm import tqdm

    context = {"commit": this_commit(), "machine": this_machine() + (" (the Ray driver's)" if args.ray_address else ""),
               "torch": torch_version()}
    failed, stopped = [], []
    # the bar counts finished runs; a long run's own progress bar is in its log
    print(f"each process's progress and errors are in its log under {output_dir / 'runs' / 'logs'}", flush=True)
    bar = tqdm(total=to_run, desc="benchmark", unit="run")
    start = time.time()

    def provenance(job: Job) -> list[tuple[str, dict, str]]:
        return provenance_rows(job, output_dir, "ray" if args.ray_address else str(threads), context)

    def on_done(job: Job, returncode: int, started: str, wall_s: float) -> None:
        log = output_dir / "runs" / "logs" / f"{job.name}.log"
        names = ", ".join(r.name for r in job.runs)
        if returncode == 130:  # the scripts' exit after Ctrl-C or SIGTERM, with a checkpoint where they could
            stopped.extend(job.runs)
            tqdm.write(f"stopped {names} (interrupted; --resume continues it); log: {log}")
        elif returncode != 0:
            failed.extend((r, log) for r in job.runs)
            tqdm.write(f"FAILED {names} (exit {returncode}): {last_line(log)}; log: {log}")
        else:
            tqdm.write(f"done   {names} in {wall_s / 60:.1f} min")
        bar.update(len(job.runs))

    not_started = 0
    if args.ray_address:
        run_ray(todo, args.ray_address, output_dir, provenance, args.provenance_every_s, on_done)
    else:
        signal.signal(signal.SIGTERM, stop_once)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a job started with Ctrl-C ignored keeps ignoring it
            signal.signal(signal.SIGINT, stop_once)
        not_started = sum(len(job.runs) for job in run_local(todo, args.workers, threads, output_dir, provenance,
                                                             args.provenance_every_s, on_done))
    bar.close()
    print(f"{to_run - len(failed) - len(stopped) - not_started} of {to_run} runs succeeded in "
          f"{time.time() - start:.0f} s")
    for run, log in failed:
        print(f"  failed: {run.name}: {last_line(log)} (log: {log})")
    if stopped or not_started:
        print(f"interrupted: {len(stopped)} runs stopped, {not_started} not started; continue the grid with the same "
              f"command and --resume")
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
