"""Tests of benchmark.py (grid, local runs, failures, --resume, Ray) and benchmarks/report.py."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import (ROOT, RUN_THE_WRAPPED_COMMAND, SWALLOWS_A_STOP, kill_the_process_group, load_script,
                      start_as_from_a_terminal)

FAKE = str(ROOT / "tests" / "fake_algo.py")


benchmark = load_script(ROOT / "benchmark.py")
report = load_script(ROOT / "benchmarks" / "report.py")


def test_grid_expansion_and_deterministic_names():
    args = benchmark.Args(scripts=[str(ROOT / "misa_continuous.py"), str(ROOT / "baselines" / "iql_continuous.py")],
                          env_ids=["hopper-medium", "mujoco/walker2d/medium-v0"], num_seeds=2, start_seed=5,
                          extra_args="--total-timesteps 100 --eval-freq 50")
    runs = benchmark.expand_grid(args)
    assert len(runs) == 2 * 2 * 2
    assert [r.name for r in runs[:4]] == ["hopper-medium__misa_continuous__5", "hopper-medium__misa_continuous__6",
                                          "mujoco-walker2d-medium-v0__misa_continuous__5",
                                          "mujoco-walker2d-medium-v0__misa_continuous__6"]
    assert runs[0].command[-8:] == ["--seed", "5", "--run-name", "hopper-medium__misa_continuous__5",
                                    "--total-timesteps", "100", "--eval-freq", "50"]
    assert [r.name for r in benchmark.expand_grid(args)] == [r.name for r in runs]  # deterministic
    assert all(r.total_timesteps == 100 for r in runs)
    # without the flag, the script's own default
    assert benchmark.total_timesteps(str(ROOT / "misa_continuous.py"), []) == 1_200_000
    assert benchmark.total_timesteps(str(ROOT / "baselines" / "iql_continuous.py"), []) == 1_000_000


def benchmark_command(tmp_path, *extra):
    return [sys.executable, str(ROOT / "benchmark.py"), "--scripts", FAKE, "--env-ids", "toy", "--output-dir",
            str(tmp_path), *extra]


def run_benchmark(tmp_path, *extra):
    return subprocess.run(benchmark_command(tmp_path, *extra), capture_output=True, text=True, timeout=300)


def start_benchmark_in_its_own_group(tmp_path, *extra, wrapper: str | None = None):
    """benchmark.py in a new process group, so that a test can signal it and its runs together as a terminal or a
    stopped session does; under `wrapper` (Python lines that patch something first) when one is given."""
    argv = benchmark_command(tmp_path, *extra)[1:]
    if wrapper is not None:
        (tmp_path / "wrapper.py").write_text(wrapper + RUN_THE_WRAPPED_COMMAND)
        argv = [str(tmp_path / "wrapper.py"), *argv]
    return start_as_from_a_terminal(argv)


def test_local_runs_report_failures_and_resume_skips_finished(tmp_path):
    r = run_benchmark(tmp_path, "--num-seeds", "2", "--start-seed", "12", "--workers", "2")
    assert r.returncode == 1
    assert "1 of 2 runs succeeded" in r.stdout
    log = tmp_path / "runs" / "logs" / "toy__fake_algo__13.log"
    assert f"failed: toy__fake_algo__13: failing on purpose (log: {log})" in r.stdout  # its error, without opening the log
    assert "failing on purpose" in log.read_text()
    assert (tmp_path / "runs" / "toy__fake_algo__12" / "evaluations.csv").exists()
    r = run_benchmark(tmp_path, "--num-seeds", "2", "--start-seed", "12", "--resume")
    assert "2 runs in the grid, 1 already complete, 1 to run" in r.stdout
    # a run whose csv stops short of --total-timesteps is not complete
    r = run_benchmark(tmp_path, "--num-seeds", "1", "--start-seed", "12", "--resume",
                      "--extra-args=--total-timesteps 60", "--dry-run")
    assert "1 runs in the grid, 0 already complete, 1 to run" in r.stdout


def test_a_rerun_never_destroys_results_and_resume_continues_checkpoints(tmp_path):
    r = run_benchmark(tmp_path, "--num-seeds", "2", "--start-seed", "1", "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    first = (tmp_path / "runs" / "toy__fake_algo__1" / "evaluations.csv").read_text()
    # the same grid again, without --resume or --overwrite: refused up front, nothing touched
    r = run_benchmark(tmp_path, "--num-seeds", "2", "--start-seed", "1")
    assert r.returncode != 0 and "--resume" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert (tmp_path / "runs" / "toy__fake_algo__1" / "evaluations.csv").read_text() == first
    # --resume with a longer budget: a run with a checkpoint is continued from it, one without restarts
    (tmp_path / "runs" / "toy__fake_algo__2" / "checkpoint.pt").write_bytes(b"stand-in")
    r = run_benchmark(tmp_path, "--num-seeds", "2", "--start-seed", "1", "--resume", "--extra-args=--total-timesteps 60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 to run (1 continued from their checkpoints)" in r.stdout
    resumed = (tmp_path / "runs" / "toy__fake_algo__2" / "invocation.txt").read_text()
    restarted = (tmp_path / "runs" / "toy__fake_algo__1" / "invocation.txt").read_text()
    assert f"resume={tmp_path / 'runs' / 'toy__fake_algo__2' / 'checkpoint.pt'}" in resumed
    assert "resume=None overwrite=True" in restarted


def test_local_runs_get_their_share_of_the_cores(tmp_path):
    assert benchmark.threads_per_run(workers=2, requested=None) == max(1, (os.cpu_count() or 1) // 2)
    assert benchmark.threads_per_run(workers=64, requested=None) == 1
    r = run_benchmark(tmp_path, "--num-seeds", "1", "--workers", "2", "--threads-per-run", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "threads=3" in (tmp_path / "runs" / "toy__fake_algo__1" / "invocation.txt").read_text()


def test_provenance_names_the_build_of_the_dataset(tmp_path, monkeypatch):
    """Two builds of one short name can hold different data, so each run records the one it read."""
    import json

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    assert benchmark.dataset_build("hopper-medium") == ""  # not built here
    data = tmp_path / "misa-pytorch" / "hopper" / "medium-v0" / "data"
    data.mkdir(parents=True)
    (data / "metadata.json").write_text(json.dumps({"description": (
        "D4RL-protocol medium dataset on Hopper-v5 (not D4RL itself): the SAC policy hopper-medium.pt. 1000000 "
        "steps, 2217 episodes, mean episode return 1355.1. Actions sampled ... Built by tools/make_dataset.py 2.0 "
        "(misa-pytorch).")}))
    assert benchmark.dataset_build("hopper-medium") == ("misa-pytorch/hopper/medium-v0: make_dataset.py 2.0, 2217 "
                                                        "episodes, mean return 1355.1")
    other = tmp_path / "D4RL" / "door" / "human-v2" / "data"
    other.mkdir(parents=True)
    (other / "metadata.json").write_text(json.dumps({"description": "Farama's"}))
    assert benchmark.dataset_build("D4RL/door/human-v2") == "D4RL/door/human-v2"


def test_provenance_names_a_dataset_built_after_the_run_started(tmp_path, monkeypatch):
    """A run on a short name not built yet builds its dataset on first use, after benchmark.py started it: its row
    names the build all the same (it was left empty when the row was made before the process started)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    metadata = tmp_path / "minari" / "misa-pytorch" / "hopper" / "medium-v0" / "data" / "metadata.json"
    build = ("import json, pathlib; p = pathlib.Path(%r); p.parent.mkdir(parents=True); p.write_text(json.dumps("
             "{'description': '1000000 steps, 2224 episodes, mean episode return 1352.3. Built by "
             "tools/make_dataset.py 2.0 (misa-pytorch).'}))" % str(metadata))
    path = tmp_path / "runs" / "hopper-medium__fake__1" / "provenance.csv"
    path.parent.mkdir(parents=True)
    returncode, _, _ = benchmark.execute([sys.executable, "-c", build], str(tmp_path / "log.txt"), str(tmp_path),
                                         provenance=[(str(path), {"run": "hopper-medium__fake__1"}, "hopper-medium")])
    assert returncode == 0
    with open(path) as f:
        (row,) = list(csv.DictReader(f))
    assert row["dataset"] == "misa-pytorch/hopper/medium-v0: make_dataset.py 2.0, 2224 episodes, mean return 1352.3"


def test_every_process_leaves_its_provenance_and_the_report_shows_it(tmp_path, monkeypatch):
    import torch

    r = run_benchmark(tmp_path, "--num-seeds", "2", "--start-seed", "12", "--workers", "2", "--threads-per-run", "1")
    assert r.returncode == 1  # seed 13 fails on purpose: its failed try is recorded too
    rows = {}
    for seed in (12, 13):
        with open(tmp_path / "runs" / f"toy__fake_algo__{seed}" / "provenance.csv") as f:
            (rows[seed],) = list(csv.DictReader(f))
    first = rows[12]
    assert first["command"] == "python tests/fake_algo.py --env-id toy --seed 12 --run-name toy__fake_algo__12"
    assert (first["exit_code"], rows[13]["exit_code"], first["threads"], first["seeds_in_process"]) == ("0", "3", "1", "1")
    assert float(first["wall_s"]) > 0 and first["started_utc"].endswith("+00:00")
    assert first["torch"] == torch.__version__.split("+")[0] or first["torch"] == torch.__version__
    assert first["commit"] == benchmark.this_commit() != "" and "CPU cores" in first["machine"]
    monkeypatch.setenv("BENCHMARK_COMMIT", "abc123 (named by hand)")  # a copy without .git names its commit
    assert benchmark.this_commit() == "abc123 (named by hand)"
    monkeypatch.delenv("BENCHMARK_COMMIT")
    # continuing the run appends a row: its wall time is the sum
    (tmp_path / "runs" / "toy__fake_algo__12" / "checkpoint.pt").write_bytes(b"stand-in")
    r = run_benchmark(tmp_path, "--num-seeds", "1", "--start-seed", "12", "--resume", "--extra-args=--total-timesteps 60")
    assert r.returncode == 0, r.stdout + r.stderr
    with open(tmp_path / "runs" / "toy__fake_algo__12" / "provenance.csv") as f:
        both = list(csv.DictReader(f))
    assert len(both) == 2 and "--resume" in both[1]["command"]
    # the report: per cell, the mean over seeds of each run's summed wall time (seed 13 failed: no evaluations)
    runs = tmp_path / "runs"
    write_run(runs, "toy__fake_algo__14", [1.0, 2.0, 3.0])
    with open(runs / "toy__fake_algo__14" / "provenance.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, benchmark.PROVENANCE_FIELDS)
        writer.writeheader()
        for wall_s in (600, 300):
            writer.writerow({**first, "run": "toy__fake_algo__14", "wall_s": wall_s})
    text = report.provenance_table(report.load_runs(runs), report.load_provenance(runs), ["fake_algo"], ["toy"])
    wall = (sum(float(row["wall_s"]) for row in both) + 900) / 2
    assert f"| fake_algo | toy | 12, 14 | 30, 60 | {wall / 60:.1f} min | 2 | 1 |" in text, text
    assert "`python tests/fake_algo.py --env-id toy --seed 12" in text
    assert text.splitlines()[2].endswith(" | - |")  # a toy env: no build of a dataset to name
    # a run without provenance (made by hand) is named; pinned rows and columns show missing cells as -
    write_run(runs, "toy__fake_algo__15", [1.0])
    text = report.provenance_table(report.load_runs(runs), report.load_provenance(runs), ["fake_algo"], ["toy"])
    assert "(not recorded for seed 15)" in text
    out = tmp_path / "out"
    out.mkdir()
    (out / "profile.png").write_bytes(b"an earlier report's plot")  # no aggregates this time: it must not stay
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--runs-dir", str(runs), "--out",
                        str(out), "--algos", "fake_algo", "misa_continuous", "--env-ids", "toy", "hopper-medium"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    md = (out / "results.md").read_text()
    assert "| hopper-medium | - | - |" in md and "## How each cell was run" in md
    assert not (out / "profile.png").exists() and "profile.png" not in r.stdout.splitlines()[-1]


def test_a_killed_process_still_leaves_its_provenance(tmp_path):
    """A session or machine stopped mid-run kills benchmark.py and its processes at once: the row written while the
    process ran stays, with its start, its wall time so far and no exit code; the report counts it."""
    process = start_benchmark_in_its_own_group(tmp_path, "--num-seeds", "1", "--provenance-every-s", "0.2",
                                               "--extra-args=--sleep 60")
    path = tmp_path / "runs" / "toy__fake_algo__1" / "provenance.csv"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # until the row says the process has run for a second
            rows = list(csv.DictReader(path.read_text().splitlines())) if path.exists() else []
            if rows and float(rows[-1]["wall_s"]) > 1.0:
                break
            time.sleep(0.1)
    finally:
        kill_the_process_group(process)  # benchmark.py and the run, as a stopped session does
        process.communicate(timeout=30)
    with open(path) as f:
        (row,) = list(csv.DictReader(f))
    assert row["exit_code"] == "" and 1.0 < float(row["wall_s"]) < 30 and row["started_utc"].endswith("+00:00")
    assert row["command"] == "python tests/fake_algo.py --env-id toy --seed 1 --run-name toy__fake_algo__1 --sleep 60"
    assert not path.with_name("provenance.csv.tmp").exists()
    # the report counts the killed process beside the one that finished the run
    (path.parent / "checkpoint.pt").write_bytes(b"stand-in")
    r = run_benchmark(tmp_path, "--num-seeds", "1", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["exit_code"] for r in rows] == ["", "0"] and "--resume" in rows[1]["command"]
    runs = tmp_path / "runs"
    text = report.provenance_table(report.load_runs(runs), report.load_provenance(runs), ["fake_algo"], ["toy"])
    assert "| 2 (1 did not finish) |" in text, text


@pytest.mark.parametrize("stop, to", [("SIGINT", "group"), ("SIGTERM", "group"), ("SIGTERM", "benchmark.py")])
def test_ctrl_c_or_sigterm_stops_the_grid_and_resume_finishes_it(tmp_path, stop, to):
    """Ctrl-C (SIGINT to the terminal's process group), SIGTERM to the group (a scheduler) or to benchmark.py alone
    (`kill PID`, which reaches no script unless benchmark.py passes it on): the running script saves a checkpoint and
    exits, no queued run starts, and --resume finishes the grid."""
    process = start_benchmark_in_its_own_group(tmp_path, "--num-seeds", "3", "--workers", "1",
                                               "--extra-args=--sleep 60")
    started = tmp_path / "runs" / "toy__fake_algo__1" / "invocation.txt"
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the fake has its SIGTERM handler by now
    (os.killpg if to == "group" else os.kill)(process.pid, getattr(signal, stop))
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        kill_the_process_group(process)
        raise
    assert process.returncode == 130, out
    assert "interrupted: 1 runs stopped, 2 not started" in out and "--resume" in out.splitlines()[-1], out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["logs", "toy__fake_algo__1"]  # 2, 3 never began
    with open(tmp_path / "runs" / "toy__fake_algo__1" / "provenance.csv") as f:
        assert [row["exit_code"] for row in csv.DictReader(f)] == ["130"]
    r = run_benchmark(tmp_path, "--num-seeds", "3", "--resume")
    assert r.returncode == 0 and "3 to run (1 continued from their checkpoints)" in r.stdout, r.stdout + r.stderr
    assert "3 of 3 runs succeeded" in r.stdout


def test_only_the_first_stop_counts(monkeypatch):
    """The first Ctrl-C or SIGTERM stops the grid; later ones must not interrupt the wait for the scripts' checkpoints
    (a terminal's Ctrl-C often comes with a scheduler's SIGTERM, or twice). A stop raised but never taken (Python
    swallowed it) is not the last: a later one, a second or more after it, raises again."""
    monkeypatch.setattr(benchmark, "STOPPING", threading.Event())
    monkeypatch.setattr(benchmark, "last_stop_raised", -math.inf)
    with pytest.raises(KeyboardInterrupt):
        benchmark.stop_once(signal.SIGINT, None)
    benchmark.stop_once(signal.SIGTERM, None)  # within the second: the same stop, still on its way
    monkeypatch.setattr(benchmark, "last_stop_raised", time.monotonic() - 1.5)  # not taken, and a second has passed
    with pytest.raises(KeyboardInterrupt):
        benchmark.stop_once(signal.SIGINT, None)
    benchmark.STOPPING.set()  # run_local took it
    monkeypatch.setattr(benchmark, "last_stop_raised", -math.inf)
    benchmark.stop_once(signal.SIGTERM, None)  # returns: nothing raised
    benchmark.stop_once(signal.SIGINT, None)


# benchmark.py run with its wait for the runs starting by a Ctrl-C that Python swallows once the first run has its
# stop handler.
SWALLOWS_THE_FIRST_STOP = SWALLOWS_A_STOP + """
import concurrent.futures, sys
from pathlib import Path

first_run = Path(sys.argv[sys.argv.index("--output-dir") + 1]) / "runs" / "toy__fake_algo__1" / "invocation.txt"
wait_for_the_runs = concurrent.futures.as_completed


def as_completed(futures):
    while not first_run.exists():
        time.sleep(0.05)
    time.sleep(0.5)  # the fake run has its handler by now
    SwallowsAStop()  # deleted at once
    return wait_for_the_runs(futures)


concurrent.futures.as_completed = as_completed  # before benchmark.py imports it
"""


def test_a_grid_stop_that_python_swallowed_is_not_the_last(tmp_path):
    """The terminal's Ctrl-C stops the running script (exit 130, checkpoint), but benchmark.py's KeyboardInterrupt is
    swallowed: the grid goes on with the next run as if nothing was asked of it, and the next Ctrl-C stops it cleanly.
    Before, the swallowed stop counted as taken: every later run was stopped as it started (killed before its
    handler, so reported as failed) and no Ctrl-C reached benchmark.py any more."""
    process = start_benchmark_in_its_own_group(tmp_path, "--num-seeds", "3", "--workers", "1", "--extra-args=--sleep 60",
                                               wrapper=SWALLOWS_THE_FIRST_STOP)
    try:
        second_run = tmp_path / "runs" / "toy__fake_algo__2" / "invocation.txt"
        deadline = time.time() + 60
        while not second_run.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        time.sleep(1.5)  # a stop in the second after one was raised is taken as the same stop
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    finally:
        kill_the_process_group(process)
    assert "Exception ignored" in out and "FAILED" not in out, out
    assert process.returncode == 130 and "interrupted: 2 runs stopped, 1 not started" in out, out
    for seed in (1, 2):
        with open(tmp_path / "runs" / f"toy__fake_algo__{seed}" / "provenance.csv") as f:
            assert [row["exit_code"] for row in csv.DictReader(f)] == ["130"]


def write_run(root, name, scores):
    d = root / name
    d.mkdir(parents=True)
    with open(d / "evaluations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "mean_return", "std_return", "normalized_score"])
        for i, s in enumerate(scores):
            w.writerow([(i + 1) * 10, 0.0, 0.0, s])


def test_report_means_stds_finals_bests_and_png(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "hopper-medium__iql__1", [10, 50, 30])
    write_run(runs, "hopper-medium__iql__2", [20, 40, 50])
    write_run(runs, "walker2d-medium__iql__1", [5, 7, 9])
    write_run(runs, "walker2d-medium__iql__2", [1, 2, 3])
    write_run(runs, "hopper-medium__misa__1__1700000000", [60, 70, 65])
    summary = report.summarize(report.load_runs(runs))
    assert summary[("iql", "hopper-medium")]["final"] == [30, 50]
    assert summary[("iql", "hopper-medium")]["best"] == [50, 50]
    md = report.table(summary, ["iql", "misa"], ["hopper-medium", "walker2d-medium"], "final")
    assert "| hopper-medium | 40.0 ± 10.0 (2) | 65.0 ± 0.0 (1) |" in md
    assert "| walker2d-medium | 6.0 ± 3.0 (2) | - |" in md
    # totals: seed 1 = 30 + 9, seed 2 = 50 + 3 -> 46.0 +- 6.5; misa lacks walker2d -> no total
    assert f"| **total** | 46.0 ± {np.std([39, 53]):.1f} (2) | - |" in md
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--runs-dir", str(runs), "--out",
                        str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "results.md").read_text()
    assert "deterministic policy" in text and "Best score" in text


def test_report_names_columns_without_runs_and_refuses_a_file_as_out(tmp_path):
    """A misspelt --algos or --env-ids name would give a column or row of dashes with no word why: the report says which
    names have no runs and which it found. --out naming a file is one line of error, not a traceback."""
    runs = tmp_path / "runs"
    write_run(runs, "hopper-medium__iql__1", [10, 50, 30])
    report_py = [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--runs-dir", str(runs)]
    r = subprocess.run([*report_py, "--out", str(tmp_path / "out"), "--algos", "iql", "iqll", "--env-ids",
                        "hopper-medium", "hoper-medium"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no runs of iqll (--algos)" in r.stderr and "runs found there: iql" in r.stderr
    assert "no runs of hoper-medium (--env-ids)" in r.stderr and "runs found there: hopper-medium" in r.stderr
    assert "| hopper-medium | 30.0 ± 0.0 (1) | - |" in (tmp_path / "out" / "results.md").read_text()
    (tmp_path / "a_file").write_text("x")
    r = subprocess.run([*report_py, "--out", str(tmp_path / "a_file")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: --out {tmp_path / 'a_file'} is a file, "
                                                                    "not a directory"]


def test_report_robust_aggregates_iqm_probability_of_improvement_and_profile(tmp_path):
    from scipy.stats import trim_mean

    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    finals = {"misa_continuous": rng.normal(70, 5, (4, 2)), "cql_continuous": rng.normal(50, 5, (4, 2))}
    for algo, matrix in finals.items():
        for seed in range(4):
            for j, env in enumerate(["hopper-medium", "walker2d-medium"]):
                write_run(runs, f"{env}__{algo}__{seed}", [10.0, matrix[seed, j]])
    summary = report.summarize(report.load_runs(runs))
    text = report.robust_aggregates(summary, sorted(finals), ["hopper-medium", "walker2d-medium"],
                                    "misa_continuous", reps=200, profile_path=tmp_path / "profile.png")
    iqm = trim_mean(finals["misa_continuous"].ravel(), 0.25)  # the mean of the middle half of all runs
    row = next(line for line in text.splitlines() if line.startswith("| misa_continuous |"))
    point, low, high = (float(x) for x in row.replace("[", " ").replace("]", " ").replace(",", " ").split("|")[2].split())
    assert abs(point - iqm) < 0.05 and low <= point <= high
    assert "P(misa_continuous > cql_continuous) | 1.00" in text  # every MISA score beats every CQL score
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same runs give the same intervals (the committed table is checked against a rebuild), whatever numpy's
    # global generator held before
    np.random.seed(12345)
    again = report.robust_aggregates(summary, sorted(finals), ["hopper-medium", "walker2d-medium"],
                                     "misa_continuous", reps=200, profile_path=tmp_path / "profile.png")
    assert again == text


def test_report_probability_of_improvement_between_the_baselines_too(tmp_path):
    """The reference against each other algorithm first, then every pair of the others in --algos order; without the
    reference (MISA before its cells exist), the baselines' pairs alone."""
    runs = tmp_path / "runs"
    levels = {"misa_continuous": 90.0, "cql_continuous": 30.0, "td3_bc_continuous": 60.0}
    for algo, level in levels.items():
        for seed in range(3):
            for env in ["hopper-medium", "walker2d-medium"]:
                write_run(runs, f"{env}__{algo}__{seed}", [10.0, level + seed])
    summary = report.summarize(report.load_runs(runs))

    def rows(algos):
        text = report.robust_aggregates(summary, algos, ["hopper-medium", "walker2d-medium"], "misa_continuous",
                                        reps=50, profile_path=tmp_path / "profile.png")
        return [line.split(" [")[0] for line in text.splitlines() if line.startswith("| P(")]

    assert rows(list(levels)) == ["| P(misa_continuous > cql_continuous) | 1.00",
                                  "| P(misa_continuous > td3_bc_continuous) | 1.00",
                                  "| P(cql_continuous > td3_bc_continuous) | 0.00"]
    assert rows(["td3_bc_continuous", "cql_continuous"]) == ["| P(td3_bc_continuous > cql_continuous) | 1.00"]


def test_ray_runs_two_jobs(tmp_path):
    pytest.importorskip("ray")
    head = subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "6390",
                           "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                          capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr
    try:
        r = run_benchmark(tmp_path, "--num-seeds", "2", "--ray-address", "127.0.0.1:6390")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 of 2 runs succeeded" in r.stdout
        assert len(list((tmp_path / "runs").glob("toy__fake_algo__*/evaluations.csv"))) == 2
        with open(tmp_path / "runs" / "toy__fake_algo__1" / "provenance.csv") as f:
            (row,) = list(csv.DictReader(f))  # written by the Ray task, on the shared output directory
        assert (row["threads"], row["exit_code"]) == ("ray", "0") and "the Ray driver's" in row["machine"]
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)


def test_representation_picture_from_misa_and_cql_checkpoints(datasets_root, tmp_path):
    from conftest import run_script

    tiny = ["--env-id", "test/pendulum/energy-v0", "--total-timesteps", "4", "--eval-freq", "4", "--eval-episodes", "1",
            "--final-eval-episodes", "1", "--batch-size", "16", "--hidden-dim", "16", "--save-model"]
    for script, extra in (("misa_continuous.py", ["--num-mc-samples", "2", "--mcmc-burnin", "1"]),
                          ("baselines/cql_continuous.py", [])):
        r = run_script(script, *tiny, *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    checkpoints = sorted(str(p) for p in (tmp_path / "runs").glob("*/checkpoint.pt"))
    assert len(checkpoints) == 2
    out = tmp_path / "representation.png"
    r = run_script("tools/plot_representation.py", *checkpoints, "--out", str(out), "--num-samples", "120",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sys.path.insert(0, str(ROOT / "tools"))
    import plot_representation

    features, rewards, title = plot_representation.critic_features(checkpoints[0], 50, seed=0)
    assert features.shape == (50, 16) and rewards.shape == (50,) and "on test/pendulum/energy-v0, step 4" in title
    r = run_script("tools/plot_representation.py", str(tmp_path / "missing.pt"), cwd=tmp_path)
    assert r.returncode == 2 and "no such checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_seeds_per_process_groups_consecutive_seeds_under_the_same_run_names(tmp_path):
    script = str(ROOT / "baselines" / "iql_continuous.py")
    args = benchmark.Args(scripts=[script], env_ids=["hopper-medium"], num_seeds=5, seeds_per_process=2, resume=True)
    runs = benchmark.expand_grid(args)
    states = {r.name: "new" for r in runs}
    jobs = benchmark.make_jobs(runs, states, args, tmp_path)
    assert [[r.seed for r in job.runs] for job in jobs] == [[1, 2], [3, 4], [5]]
    command = jobs[0].command
    assert command[command.index("--num-seeds") + 1] == "2" and command[command.index("--seed") + 1] == "1"
    template = command[command.index("--run-name") + 1]
    assert [template.replace("{seed}", str(r.seed)) for r in jobs[0].runs] == [r.name for r in runs[:2]]
    assert jobs[2].command == runs[4].command  # a lone seed runs exactly as without grouping
    # a finished seed splits the chunk; checkpointed seeds are resumed from the first one's checkpoint
    states.update({runs[1].name: "complete", runs[2].name: "checkpoint", runs[3].name: "checkpoint"})
    jobs = benchmark.make_jobs(runs, states, args, tmp_path)
    assert [[r.seed for r in job.runs] for job in jobs] == [[1], [3, 4], [5]]
    assert jobs[1].command[2:4] == ["--resume", str(tmp_path / "runs" / runs[2].name / "checkpoint.pt")]


def test_seeds_per_process_end_to_end_and_resume(datasets_root, tmp_path):
    def grid(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--scripts",
                               str(ROOT / "baselines" / "td3_bc_continuous.py"), "--env-ids", "test/pendulum/energy-v0",
                               "--num-seeds", "2", "--seeds-per-process", "2", "--output-dir", str(tmp_path),
                               "--threads-per-run", "1", *extra], capture_output=True, text=True, timeout=300)

    tiny = "--extra-args=--batch-size 16 --hidden-dim 16 --eval-episodes 1 --final-eval-episodes 1 --save-model"
    r = grid(tiny + " --total-timesteps 10 --eval-freq 5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 runs in the grid, 0 already complete, 2 to run in 1 processes" in r.stdout
    names = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name != "logs")
    assert names == ["test-pendulum-energy-v0__td3_bc_continuous__1", "test-pendulum-energy-v0__td3_bc_continuous__2"]
    assert (tmp_path / "runs" / "logs" / "test-pendulum-energy-v0__td3_bc_continuous__1-2.log").exists()
    r = grid(tiny + " --total-timesteps 20 --eval-freq 5", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 to run (2 continued from their checkpoints) in 1 processes" in r.stdout
    for name in names:
        with open(tmp_path / "runs" / name / "evaluations.csv") as f:
            assert [int(row["step"]) for row in csv.DictReader(f)] == [5, 10, 15, 20]


def test_results_grid_stops_before_any_run_when_a_dataset_fails_to_build(tmp_path):
    """benchmarks/results_grid.sh builds every dataset first; one that fails is named with its log's last line and the
    grid stops with status 1 before a single run starts (each run would otherwise try to build it again)."""
    out = tmp_path / "grid"
    env = {**os.environ, "ENVS": "walker2d-nonsense", "STEPS": "20", "SEEDS": "1", "OUT": str(out),
           "PY": sys.executable, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "results_grid.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("error: building walker2d-nonsense failed: error: unknown dataset name 'walker2d-nonsense'"
            in done.stderr), done.stderr
    assert f"(log: {out}/logs/build-walker2d-nonsense.log)" in done.stderr
    assert "using the" not in done.stdout  # this Python has the packages: the device wheels are not installed
    assert not (out / "runs").exists()
