"""What a new user runs into, in all four scripts: damaged datasets, a misspelt --env-id, unwritable or taken output
folders, a full disk while checkpointing, Ctrl-C during the first-use dataset build, a stop that comes twice, and the
CQL-style Lagrange multiplier's start.
Each failure must be one 'error:' line that says what to do, and no earlier result may be lost."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from conftest import (ROOT, RUN_THE_WRAPPED_COMMAND, SWALLOWS_A_STOP, assert_clean_error, kill_the_process_group,
                      load_script, run_script, start_as_from_a_terminal)

import make_tiny_dataset as tiny

SCRIPTS = ["misa_continuous.py", "baselines/cql_continuous.py", "baselines/td3_bc_continuous.py",
           "baselines/iql_continuous.py"]
MODULES = {path: load_script(ROOT / path) for path in SCRIPTS}
THROUGHPUT = load_script(ROOT / "benchmarks" / "throughput.py")  # its make_agent knows each script's constructor


# ------------------------------------------------------------------------------------------------ damaged datasets
def damage(path: Path, how: str) -> None:
    data = path / "data"
    if how == "truncated-hdf5":
        size = (data / "main_data.hdf5").stat().st_size
        with open(data / "main_data.hdf5", "r+b") as f:
            f.truncate(size // 2)
    elif how == "missing-metadata":
        (data / "metadata.json").unlink()
    elif how == "garbled-metadata":
        (data / "metadata.json").write_text("{not json")
    elif how == "overwritten-hdf5":
        (data / "main_data.hdf5").write_bytes(b"\0" * 4096)
    elif how == "episode-lengths":  # one episode's rewards one shorter than its actions
        with h5py.File(data / "main_data.hdf5", "r+") as f:
            rewards = f["episode_1/rewards"][:-1]
            del f["episode_1/rewards"]
            f["episode_1/rewards"] = rewards


DAMAGES = ["truncated-hdf5", "missing-metadata", "garbled-metadata", "overwritten-hdf5", "episode-lengths"]


@pytest.fixture(scope="module")
def damaged_datasets(datasets_root):
    tiny.build("test/damaged/source-v0", tiny.pendulum_episodes(3, seed=3))
    for how in DAMAGES:
        target = datasets_root / "test" / "damaged" / f"{how}-v0"
        shutil.copytree(datasets_root / "test" / "damaged" / "source-v0", target)
        damage(target, how)
    return datasets_root


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_damaged_dataset_is_one_line_that_says_what_to_do(script, how, damaged_datasets, capsys):
    module = MODULES[script]
    with pytest.raises(SystemExit) as exit_info:
        module.read_transitions(f"test/damaged/{how}-v0", 0.999)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: dataset test/damaged/"), err
    assert str(damaged_datasets / "test" / "damaged" / f"{how}-v0") in err  # where it is
    assert "download it again" in err  # what to do


def test_damaged_short_name_dataset_names_the_rebuild_command(datasets_root, capsys):
    """A damaged dataset of our own (a short name) says how to rebuild it."""
    module = MODULES["misa_continuous.py"]
    target = datasets_root / "misa-pytorch" / "hopper" / "medium-v0"
    shutil.copytree(datasets_root / "test" / "pendulum" / "random-v0", target)
    try:
        damage(target, "truncated-hdf5")
        with pytest.raises(SystemExit):
            module.read_transitions("hopper-medium", 0.999)
    finally:
        shutil.rmtree(target)
    err = capsys.readouterr().err
    assert "python tools/make_dataset.py hopper-medium --overwrite" in err and str(target) in err, err


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_builder_1_0_dataset_is_named_with_the_rebuild_command(script, datasets_root, capsys):
    """make_dataset.py 1.0's data depend on the CPU: a run on such a build says so, and one on a 2.0 build does not."""
    import json

    target = datasets_root / "misa-pytorch" / "hopper" / "medium-v0"
    shutil.copytree(datasets_root / "test" / "pendulum" / "random-v0", target)
    try:
        said = {}
        for version in ("1.0", "2.0"):
            metadata = json.loads((target / "data" / "metadata.json").read_text())
            metadata["description"] = f"A dataset. Built by tools/make_dataset.py {version} (misa-pytorch)."
            (target / "data" / "metadata.json").write_text(json.dumps(metadata))
            MODULES[script].read_transitions("hopper-medium", 0.999)
            said[version] = capsys.readouterr().out
    finally:
        shutil.rmtree(target)
    assert "make_dataset.py 1.0, whose data depend on the CPU" in said["1.0"], said["1.0"]
    assert "python tools/make_dataset.py hopper-medium --overwrite" in said["1.0"]
    assert "make_dataset.py 1.0" not in said["2.0"], said["2.0"]


def test_damaged_dataset_end_to_end(damaged_datasets, tmp_path):
    r = run_script("misa_continuous.py", "--env-id", "test/damaged/truncated-hdf5-v0", "--total-timesteps", "1",
                   cwd=tmp_path)
    assert_clean_error(r, "damaged or unreadable", "truncated-hdf5-v0")


# ------------------------------------------------------------------------------------------------ output folders
@pytest.mark.parametrize("script", SCRIPTS)
def test_unwritable_output_folder_is_refused_before_any_work(script, datasets_root, tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    started = time.time()
    r = run_script(script, "--env-id", "test/pendulum/energy-v0", "--run-name", "x", cwd=tmp_path)
    assert_clean_error(r, "cannot create or write the run directory", "runs")
    assert "transitions from" not in r.stdout  # refused before the dataset was read
    assert (tmp_path / "runs").read_text() == "a file where the runs folder should be"
    assert time.time() - started < 120


@pytest.mark.parametrize("script", SCRIPTS)
def test_misspelt_env_id_is_one_line_and_leaves_no_run_directory(script, tmp_path):
    r = run_script(script, "--env-id", "hopper-mediun", cwd=tmp_path, timeout=120)
    assert_clean_error(r, "'hopper-mediun'", "hopper-medium-replay", "walker2d-expert")
    assert not (tmp_path / "runs").exists()  # refused before the run directory was claimed


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_second_run_never_destroys_the_first(script, datasets_root, tmp_path):
    run_dir = tmp_path / "runs" / "same-name"
    run_dir.mkdir(parents=True)
    (run_dir / "evaluations.csv").write_text("step,mean_return,std_return,normalized_score\n5000,1.0,0.0,7.0\n")
    r = run_script(script, "--env-id", "test/pendulum/energy-v0", "--run-name", "same-name", cwd=tmp_path)
    assert_clean_error(r, "already holds a run", "--resume", "--overwrite")
    assert (run_dir / "evaluations.csv").read_text().endswith("5000,1.0,0.0,7.0\n")  # untouched
    assert sorted(p.name for p in run_dir.iterdir()) == ["evaluations.csv"]  # nothing mixed in


def test_overwrite_starts_afresh(datasets_root, tmp_path):
    run_dir = tmp_path / "runs" / "same-name"
    run_dir.mkdir(parents=True)
    (run_dir / "evaluations.csv").write_text("step,mean_return,std_return,normalized_score\n5000,1.0,0.0,7.0\n")
    (run_dir / "events.out.tfevents.old").write_text("old")
    r = run_script("baselines/td3_bc_continuous.py", "--env-id", "test/pendulum/energy-v0", "--run-name", "same-name",
                   "--overwrite", "--total-timesteps", "4", "--eval-freq", "4", "--eval-episodes", "1", "--final-eval-episodes", "1",
                   "--batch-size", "16", "--hidden-dim", "16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "5000" not in (run_dir / "evaluations.csv").read_text()
    assert not (run_dir / "events.out.tfevents.old").exists()


class Tiny:
    SHARED_STATE = ()

    def state_dict(self):
        return {"w": torch.zeros(1, 3)}  # one agent


@pytest.mark.parametrize("script", SCRIPTS)
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(script, tmp_path, monkeypatch, capsys):
    module = MODULES[script]
    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    module.save_checkpoints([path.parent], ["run"], Tiny(), 10, module.Args())
    before = path.read_bytes()

    def save_half_then_fail(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(module.torch, "save", save_half_then_fail)
    with pytest.raises(SystemExit) as exit_info:
        module.save_checkpoints([path.parent], ["run"], Tiny(), 20, module.Args())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not write the checkpoint" in err and "previous checkpoint" in err
    assert path.read_bytes() == before  # the old checkpoint is whole
    assert not Path(str(path) + ".tmp").exists()  # and no half-written file is left
    assert torch.load(path, weights_only=False)["step"] == 10


# ------------------------------------------------------------------------------------------------ Ctrl-C in the build
def wait_until_it_writes(proc: subprocess.Popen, log: Path, pattern: str) -> None:
    """Waits (at most 180 s) until `log` matches the regular expression `pattern`; fails if the process ended first."""
    deadline = time.time() + 180
    while not re.search(pattern, log.read_text()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None and re.search(pattern, log.read_text()), log.read_text()


def run_wrapped(wrapper: str, argv: list[str], tmp_path: Path, env: dict,
                then=None) -> tuple[subprocess.Popen, str, str]:
    """Runs the command `argv` (a script and its arguments) under a wrapper (Python lines that patch something first)
    as from a terminal; `then(proc, err)` acts while it runs. Waits at most 120 s for the end; returns the process,
    its stdout and its stderr."""
    (tmp_path / "wrapper.py").write_text(wrapper + RUN_THE_WRAPPED_COMMAND)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = start_as_from_a_terminal([str(tmp_path / "wrapper.py"), *argv], tmp_path, env, fo, fe)
        try:
            if then is not None:
                then(proc, err)
            proc.wait(timeout=120)
        finally:  # a failed case must not leave the command or its workers running
            kill_the_process_group(proc)
    return proc, out.read_text(), err.read_text()


def ctrl_c_once_the_first_is_swallowed(proc: subprocess.Popen, err: Path) -> None:
    wait_until_it_writes(proc, err, "Exception ignored")
    time.sleep(1.5)  # a stop in the second after one was raised is taken as the same stop
    os.killpg(proc.pid, signal.SIGINT)


def assert_the_build_stopped_cleanly(proc: subprocess.Popen, err: Path, datasets: Path) -> None:
    """Exit 130, no traceback, the builder's one line, and no dataset or half-written staging folder left."""
    stderr = err.read_text()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "step" not in line]
    assert lines == ["interrupted: misa-pytorch/hopper/medium-v0 was not built, and nothing half-built was kept; "
                     "run the same command again to build it"], stderr
    assert not (datasets / "misa-pytorch" / "hopper" / "medium-v0").exists()
    assert not list(datasets.glob(".staging-*"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_during_the_first_use_build_is_one_line_and_keeps_nothing(script, tmp_path):
    datasets = tmp_path / "minari"
    env = dict(os.environ, MINARI_DATASETS_PATH=str(datasets), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = start_as_from_a_terminal([str(ROOT / script), "--env-id", "hopper-medium"], tmp_path, env, fo, fe)
        try:
            wait_until_it_writes(proc, err, "step/s")  # the builder is stepping its envs
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the script and the builder get it
            proc.wait(timeout=120)
        finally:  # a failed case must not leave the script (and its builder) building and then training
            kill_the_process_group(proc)
    assert_the_build_stopped_cleanly(proc, err, datasets)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_kill_during_the_first_use_build_of_a_background_job_stops_the_builder(script, tmp_path):
    """A job started in the background (nohup, `&`, benchmark.py under either) ignores SIGINT, and so does the builder
    it starts. A kill of the script alone, then more kills while it waits for the builder, must still stop the build at
    once: one line, exit 130, nothing half-built kept."""
    datasets = tmp_path / "minari"
    env = dict(os.environ, MINARI_DATASETS_PATH=str(datasets), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, str(ROOT / script), "--env-id", "hopper-medium"], cwd=tmp_path,
                                env=env, stdout=fo, stderr=fe, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            wait_until_it_writes(proc, err, "step/s")  # the builder is stepping its envs
            proc.send_signal(signal.SIGTERM)  # `kill PID` of the script, not of its process group
            deadline = time.time() + 60
            while "interrupted" not in err.read_text() and proc.poll() is None and time.time() < deadline:
                proc.send_signal(signal.SIGTERM)  # and more, while it waits for the builder
                time.sleep(0.05)
            proc.wait(timeout=60)  # the builder stepped on for its whole build before the fix
        finally:
            kill_the_process_group(proc)
    assert_the_build_stopped_cleanly(proc, err, datasets)


# ------------------------------------------------------------------------------------------------ stopped twice
def ctrl_c_then_stop_again_and_again(proc: subprocess.Popen, log: Path, last_words: str) -> None:
    """A terminal's Ctrl-C, then SIGTERM every 2 ms, as a parent passing the stop on may send it at any moment, until
    the process writes `last_words` to `log`. Not after them: a signal that comes while Python shuts down, after the
    handlers are gone, ends the process by the signal's default action, as in any program."""
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 120
    while last_words not in log.read_text() and proc.poll() is None and time.time() < deadline:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.002)
    proc.wait(timeout=120)


def train_stop_twice_and_check_the_checkpoint(argv: list[str], tmp_path: Path, checkpoint: Path) -> None:
    """Starts a training command, stops it once it trains, then again and again while it saves: exit 130, no
    traceback, and a checkpoint with the steps trained."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = start_as_from_a_terminal(argv, tmp_path, env, fo, fe)
        try:
            wait_until_it_writes(proc, err, "[0-9]step/s")  # the progress bar shows a training speed
            ctrl_c_then_stop_again_and_again(proc, out, "interrupted at step")
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = err.read_text()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert torch.load(checkpoint, weights_only=False)["step"] > 0


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_second_stop_does_not_interrupt_the_checkpoint(script, datasets_root, tmp_path):
    """A terminal's Ctrl-C reaches a run of benchmark.py's grid, and benchmark.py passes the stop on as SIGTERM: the
    run stops on the first signal and ignores the rest, however late they come, so it saves a checkpoint that resumes
    and exits 130, with no traceback from a second KeyboardInterrupt raised while it saves or exits."""
    tiny = ["--batch-size", "32", "--hidden-dim", "32", "--eval-episodes", "1", "--final-eval-episodes", "1"]
    if script == "misa_continuous.py":
        tiny += ["--num-mc-samples", "4", "--mcmc-burnin", "2"]
    train_stop_twice_and_check_the_checkpoint([str(ROOT / script), "--env-id", "test/pendulum/energy-v0",
                                               "--total-timesteps", "1000000", "--eval-freq", "1000000", "--run-name",
                                               "run", *tiny], tmp_path, tmp_path / "runs" / "run" / "checkpoint.pt")


def test_a_second_stop_does_not_interrupt_the_builders_cleanup(tmp_path):
    """tools/make_dataset.py stopped, then stopped again and again while it ends its workers: one line, exit 130,
    nothing half-built kept. A second KeyboardInterrupt used to cut the ending of the workers short, and they printed
    EOFError and BrokenPipeError tracebacks."""
    datasets = tmp_path / "minari"
    env = dict(os.environ, MINARI_DATASETS_PATH=str(datasets), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        # two workers, as on a machine of 4 or more cores: ending them is the cleanup a second stop could interrupt
        proc = start_as_from_a_terminal([str(ROOT / "tools" / "make_dataset.py"), "hopper-medium", "--workers", "2"],
                                        tmp_path, env, fo, fe)
        try:
            wait_until_it_writes(proc, err, "step/s")  # it is stepping its envs
            ctrl_c_then_stop_again_and_again(proc, err, "interrupted:")
        finally:
            kill_the_process_group(proc)
    assert_the_build_stopped_cleanly(proc, err, datasets)


BUILD_WITH_A_SWALLOWED_CTRL_C = SWALLOWS_A_STOP + """
import os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import train_behavior
load_actor = train_behavior.load_actor


def a_swallowed_ctrl_c_while_loading_the_policy(*args, **kwargs):
    SwallowsAStop()
    return load_actor(*args, **kwargs)


train_behavior.load_actor = a_swallowed_ctrl_c_while_loading_the_policy  # before make_dataset.py imports it
"""


def test_a_builder_stop_that_python_swallowed_is_not_the_last(tmp_path):
    """tools/make_dataset.py (and train_behavior.py, whose stop handler it shares) used to take a stop that Python
    dropped (raised in a __del__ or a weakref callback) as its one stop, and then built on, ignoring every later Ctrl-C
    and SIGTERM; a script waiting on that build could not stop it either (the old builder ran past the 120 s wait on
    it, building the whole dataset). The next Ctrl-C now stops the build."""
    datasets = tmp_path / "minari"
    env = dict(os.environ, MINARI_DATASETS_PATH=str(datasets), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")

    def ctrl_c_again_once_it_builds_on(proc: subprocess.Popen, err: Path) -> None:
        wait_until_it_writes(proc, err, "step/s")
        ctrl_c_once_the_first_is_swallowed(proc, err)

    proc, _, stderr = run_wrapped(BUILD_WITH_A_SWALLOWED_CTRL_C, [str(ROOT / "tools" / "make_dataset.py"),
                                  "hopper-medium"], tmp_path, env, then=ctrl_c_again_once_it_builds_on)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "step" not in line]
    assert lines[-1] == ("interrupted: misa-pytorch/hopper/medium-v0 was not built, and nothing half-built was kept; "
                         "run the same command again to build it"), stderr
    assert not (datasets / "misa-pytorch" / "hopper" / "medium-v0").exists()


def test_a_second_stop_does_not_interrupt_the_behaviour_policys_checkpoint(tmp_path):
    """tools/train_behavior.py stopped, then stopped again and again while it saves: exit 130, no traceback, and a
    checkpoint that holds the steps trained."""
    argv = [str(ROOT / "tools" / "train_behavior.py"), "hopper", "--total-steps", "1000000", "--learning-starts", "200",
            "--eval-every", "1000000", "--checkpoint-every", "1000000", "--batch-size", "32", "--hidden-dim", "32",
            "--run-dir", str(tmp_path / "run"), "--out-dir", str(tmp_path / "out"), "--target-score", "99"]
    train_stop_twice_and_check_the_checkpoint(argv, tmp_path, tmp_path / "run" / "checkpoint.pt")


# ------------------------------------------------------------------------------------------------ Ctrl-C, eval workers
# On a machine of 4 or more cores the scripts evaluate in worker processes (gymnasium's AsyncVectorEnv), which a
# terminal's Ctrl-C reaches too. These wrappers run a script as a user would, with that machine's evaluation and a
# real Ctrl-C to the script's process group at a chosen moment.
CTRL_C_WHILE_THE_WORKERS_STEP = """
import os, signal, time
import gymnasium.vector
from gymnasium.envs.classic_control.pendulum import PendulumEnv
os.cpu_count = lambda: 8  # evaluation in worker processes, as on a machine with cores to spare
pendulum_step = PendulumEnv.step


def a_slow_step(self, action):  # so that the workers are still stepping when the Ctrl-C lands
    time.sleep(0.05)
    return pendulum_step(self, action)


PendulumEnv.step = a_slow_step


class CtrlCWhileTheWorkersStep(gymnasium.vector.AsyncVectorEnv):
    stopped = False

    def step_wait(self, timeout=None):  # the script waits on its workers' replies to a step
        if not CtrlCWhileTheWorkersStep.stopped:
            CtrlCWhileTheWorkersStep.stopped = True
            os.killpg(0, signal.SIGINT)  # a terminal's Ctrl-C: the script and its workers get it
        return super().step_wait(timeout)


gymnasium.vector.AsyncVectorEnv = CtrlCWhileTheWorkersStep
"""


def while_the_dataset_loads(action: str) -> str:
    """A wrapper's lines that run `action` (one line of Python) each time the script loads its dataset with Minari,
    before training began."""
    return f"""
import os, signal
import minari
load_dataset = minari.load_dataset


def load_dataset_after_the_action(*args, **kwargs):
    {action}
    return load_dataset(*args, **kwargs)


minari.load_dataset = load_dataset_after_the_action
"""


CTRL_C_WHILE_LOADING_THE_DATASET = while_the_dataset_loads("os.killpg(0, signal.SIGINT)  # a terminal's Ctrl-C")


def run_with_a_ctrl_c(wrapper: str, script: str, tmp_path: Path, then=None) -> tuple[subprocess.Popen, str, str]:
    """A training script at tiny sizes on the test dataset, evaluating every 3 steps, under `wrapper`."""
    tiny = ["--batch-size", "32", "--hidden-dim", "32", "--eval-episodes", "2", "--final-eval-episodes", "2"]
    if script == "misa_continuous.py":
        tiny += ["--num-mc-samples", "4", "--mcmc-burnin", "2"]
    argv = [str(ROOT / script), "--env-id", "test/pendulum/energy-v0", "--total-timesteps", "1000000",
            "--eval-freq", "3", "--run-name", "run", *tiny]
    return run_wrapped(wrapper, argv, tmp_path, dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"), then)


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_during_an_evaluation_in_worker_processes_ends_cleanly(script, datasets_root, tmp_path):
    """The workers used to take the Ctrl-C as their own stop, die with a KeyboardInterrupt, and leave gymnasium to
    report it at exit as 'Exception ignored in AsyncVectorEnv.__del__' with a traceback, after the script's own last
    line. Now they leave the stop to the script: its checkpoint, its one line, exit 130, and nothing after."""
    proc, stdout, stderr = run_with_a_ctrl_c(CTRL_C_WHILE_THE_WORKERS_STEP, script, tmp_path)
    assert proc.returncode == 130 and "Traceback" not in stderr and "Exception" not in stderr, stderr
    assert "interrupted at step 3; saved" in stdout, stdout
    assert torch.load(tmp_path / "runs" / "run" / "checkpoint.pt", weights_only=False)["step"] == 3


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_before_training_began_is_one_line(script, datasets_root, tmp_path):
    """A Ctrl-C while the dataset loads (seconds to minutes for a large one) used to end in a KeyboardInterrupt
    traceback and exit -2 (read by benchmark.py as a failed run); now it is one line and exit 130, as a stop in the
    training loop is."""
    proc, stdout, stderr = run_with_a_ctrl_c(CTRL_C_WHILE_LOADING_THE_DATASET, script, tmp_path)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and lines == ["interrupted before training began; nothing was trained"], stderr
    assert not (tmp_path / "runs" / "run" / "checkpoint.pt").exists()


CTRL_C_THAT_PYTHON_SWALLOWS = SWALLOWS_A_STOP + while_the_dataset_loads("SwallowsAStop()")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_stop_that_python_swallowed_is_not_the_last(script, datasets_root, tmp_path):
    """A KeyboardInterrupt raised in a weakref callback or a __del__ is printed and dropped by Python (seen while the
    dataset loads, in 2 of 12 Ctrl-Cs at random moments). The run used to take that stop as its one stop, so it trained
    on and ignored every later Ctrl-C and SIGTERM until killed; now the next Ctrl-C stops it."""
    proc, stdout, stderr = run_with_a_ctrl_c(CTRL_C_THAT_PYTHON_SWALLOWS, script, tmp_path,
                                             then=ctrl_c_once_the_first_is_swallowed)
    assert proc.returncode == 130 and "Traceback (most recent call last)" in stderr, stderr  # the swallowed one
    assert ("interrupted before training began" in stderr or "interrupted at step" in stdout), (stdout, stderr)


# ------------------------------------------------------------------------------------------------ fidelity
@pytest.mark.parametrize("script, cls", [("misa_continuous.py", "MISA"), ("baselines/cql_continuous.py", "CQL")])
def test_lagrange_multiplier_starts_at_log_alpha_prime_one(script, cls):
    module = MODULES[script]
    args = module.Args(hidden_dim=8)
    agent = THROUGHPUT.make_agent(module, cls, args, 3, 1, torch.device("cpu"), num_agents=2)
    assert agent.log_alpha_prime.tolist() == [1.0, 1.0]
