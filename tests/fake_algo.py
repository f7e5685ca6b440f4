"""A stand-in algorithm script for the benchmark-runner tests: it behaves like the real scripts' CLI (writes
runs/<run-name>/evaluations.csv, refuses an existing run directory without --overwrite, continues with --resume)
in a fraction of a second (or after --sleep seconds), and fails on purpose for --seed 13. It records the
OMP_NUM_THREADS it was given."""

import argparse
import csv
import os
import shutil
import signal
import sys
import time
from pathlib import Path

total_timesteps: int = 30  # the default benchmark.py reads, as from the real scripts' Args

parser = argparse.ArgumentParser()
parser.add_argument("--env-id")
parser.add_argument("--seed", type=int)
parser.add_argument("--run-name")
parser.add_argument("--total-timesteps", type=int, default=total_timesteps)
parser.add_argument("--eval-freq", type=int, default=10)
parser.add_argument("--resume")
parser.add_argument("--overwrite", action="store_true")
parser.add_argument("--sleep", type=float, default=0.0)  # seconds, to stand in for a long run
args = parser.parse_args()
if args.seed == 13:
    print("failing on purpose", file=sys.stderr)
    sys.exit(3)
run_dir = Path(args.resume).parent if args.resume else Path("runs") / args.run_name
if run_dir.exists() and not args.resume:
    if not args.overwrite:
        sys.exit(f"error: {run_dir} already holds a run")
    shutil.rmtree(run_dir)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "invocation.txt").write_text(f"resume={args.resume} overwrite={args.overwrite} "
                                        f"threads={os.environ.get('OMP_NUM_THREADS')}\n")


stop_requested = False


def stop_once(signum, frame):  # as in the real scripts: Ctrl-C or SIGTERM stops a run, the first one only
    global stop_requested
    if not stop_requested:
        stop_requested = True
        raise KeyboardInterrupt


signal.signal(signal.SIGTERM, stop_once)
if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, stop_once)
try:
    time.sleep(args.sleep)
except KeyboardInterrupt:  # the real scripts save a checkpoint and exit 130
    (run_dir / "checkpoint.pt").write_bytes(b"stand-in")
    sys.exit(130)
with open(run_dir / "evaluations.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["step", "mean_return", "std_return", "normalized_score"])
    for step in range(args.eval_freq, args.total_timesteps + 1, args.eval_freq):
        w.writerow([step, step * 10.0, 1.0, step + (args.seed or 0)])  # a resumed run names no seed
print("ok")
