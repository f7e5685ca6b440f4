"""Shared fixtures: tiny Minari datasets in a temporary MINARI_DATASETS_PATH, and a helper that runs a script in a
subprocess the way a user would."""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

# CI has no GPU: Triton kernels (MISA's --fused-hmc) run in Triton's CPU interpreter in this process. Triton reads the
# switch when it is imported and again when a kernel runs, so it is set before anything imports it. The scripts that
# tests start as subprocesses do not inherit it (run_script), as a user's run would not.
os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_tiny_dataset as tiny  # noqa: E402


def load_script(path: Path):
    """Import a script (not a package module) by path, registered under its file stem."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> Path:
    """Builds the test datasets once per session and points Minari (here and in subprocesses) at them."""
    root = tmp_path_factory.mktemp("minari")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network in tests
    tiny.build("test/pendulum/energy-v0", tiny.pendulum_episodes(20, seed=0, policy="energy"))
    tiny.build("test/pendulum/random-v0", tiny.pendulum_episodes(5, seed=100, policy="random"))
    bad = tiny.pendulum_episodes(2, seed=7)
    bad[1].rewards[3] = np.nan
    tiny.build("test/pendulum/nan-v0", bad)
    huge = tiny.pendulum_episodes(2, seed=8)
    for ep in huge:
        ep.rewards[:] = [3e38] * len(ep.rewards)  # finite, but the TD loss overflows at once
    tiny.build("test/pendulum/huge-v0", huge)
    tiny.build("test/cartpole/discrete-v0", tiny.cartpole_episodes(2, seed=0), env="CartPole-v1", ref_min=0.0,
               ref_max=500.0)
    return root


# One thread per process: the networks in the tests are tiny, and it keeps the suite fast and predictable when
# other work shares the 2 cores (torch's default thread pool slows down badly under contention).
torch.set_num_threads(1)


def run_script(script: str, *args: str, cwd: Path, timeout: float = 600,
               extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1") | (extra_env or {})
    del env["TRITON_INTERPRET"]
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def read_csv_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A bad input: non-zero exit, one-line 'error:' message naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "error" in result.stderr.lower(), result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def start_as_from_a_terminal(argv: list[str], cwd: Path | None = None, env: dict | None = None,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) -> subprocess.Popen:
    """A Python script (argv[0]) in its own process group, so that a test can signal it and its children together as
    a terminal's Ctrl-C does, with SIGINT back to its default: a test run started in the background of a
    non-interactive shell (nohup, CI wrappers) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt. What a user's Ctrl-C does is what is tested, whatever started pytest."""
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def kill_the_process_group(proc: subprocess.Popen) -> None:
    """Ends what a test started (the process and any builder or workers of its group), whether or not it still runs."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# The end of a wrapper script (Python lines that patch something first): runs the command given as its arguments.
RUN_THE_WRAPPED_COMMAND = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# A stop that Python swallows: KeyboardInterrupt raised inside a __del__ (as inside a weakref callback).
SWALLOWS_A_STOP = """
import os, signal, time


class SwallowsAStop:
    def __del__(self):  # an exception raised in a __del__ is printed as 'Exception ignored' and goes no further
        os.killpg(0, signal.SIGINT)  # a terminal's Ctrl-C: stop_once raises KeyboardInterrupt here
        time.sleep(0.01)
"""
