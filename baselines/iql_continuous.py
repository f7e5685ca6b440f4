"""IQL: Offline Reinforcement Learning with Implicit Q-Learning (Kostrikov, Nair & Levine, ICLR 2022, arXiv 2110.06169).

    python baselines/iql_continuous.py --env-id walker2d-medium
    python baselines/iql_continuous.py --env-id walker2d-medium --num-seeds 5    # seeds 1..5 in one process, one batched step

One self-contained file in the same shape as misa_continuous.py (same data loading, checks, evaluation, logging,
checkpoints and --resume), so that one benchmark command line drives all four scripts. Hyperparameters are the
widely used CORL settings for gym-locomotion, with CORL's per-dataset exceptions in DATASET_PRESETS below; the
code is written fresh.

Deviations: none in the algorithm. Like every script here, actions are affinely mapped to [-1, 1] from the env's
Box bounds (an identity for MuJoCo locomotion) and dataset actions are clipped to +-0.999 (the Gaussian actor's
log-likelihood of a clipped action differs negligibly). Minari's D4RL/ datasets store dictionary observations for the mazes and Kitchen; they are flattened as
observation, achieved_goal, desired_goal (D4RL's own states had no goal, and AntMaze's `observation` here has no
x-y position, which only achieved_goal holds).
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Optional
from urllib.parse import urlparse

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

ALGO = "IQL"


# Each field's docstring is its --help text. The long ones are adjacent strings in parentheses, which Python joins into
# one: tyro keeps every line break of an indented multi-line docstring, which would break --help mid-sentence.
@dataclass
class Args:
    exp_name: str = Path(__file__).stem
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of python, numpy, torch and the evaluation envs"""
    num_seeds: int = 1
    ("train this many independent agents, seeds --seed .. --seed + num-seeds - 1, in one process and one batched "
     "training step (the dataset is shared on the device); each seed writes the run directory, evaluations.csv, "
     "TensorBoard scalars and checkpoint that a one-seed run of that seed would write")
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when it is available (--no-cuda forces the CPU)"""
    track: bool = False
    """log to Weights & Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "misa-pytorch"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team)"""
    save_model: bool = False
    """write runs/<run_name>/checkpoint.pt at every evaluation (and the final one)"""
    resume: Optional[str] = None
    ("path of a checkpoint.pt to continue; hyperparameters come from the checkpoint, and only --total-timesteps, "
     "--save-model, --track and --cuda are taken from the command line")
    run_name: Optional[str] = None
    ('name of the run directory under runs/ (default <env-id>__<exp-name>__<seed>__<unix time>); "{seed}" in it is '
     "replaced by each agent's seed, and is required with --num-seeds > 1; a directory that already holds a run is "
     "refused unless --overwrite is given")
    overwrite: bool = False
    """delete an existing run directory of the same name and start afresh (without it, such a run is refused)"""
    compile: bool = False
    """wrap the update in torch.compile (eager runs are unaffected; expect minutes of compilation first)"""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode (CUDA graphs come from --cuda-graphs, which captures more than torch.compile would)"""
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    ("capture the whole training step (minibatch sampling, losses, gradients, optimiser and target updates) in a CUDA "
     "graph and replay it, which removes the per-kernel launch cost; auto: on with --compile on CUDA. CUDA only")
    tf32: bool = False
    ("allow TF32 matrix products on CUDA (faster on Ampere and newer GPUs, with 10 mantissa bits; JAX's default "
     "there); off until a GPU ablation shows that learning is unchanged (docs/performance.md). No effect on the CPU")
    steps_per_replay: int = 1
    ("gradient steps per call of the training step; with CUDA graphs one graph holds that many consecutive steps and "
     "one replay runs them all, so launch and Python costs are paid once per that many steps (as lax.scan does in "
     "JAX). The steps are the same; a call never runs past a log, evaluation or the last step (shorter stretches run "
     "one step per call)")

    env_id: str = "walker2d-medium"
    """a Minari dataset id (e.g. mujoco/walker2d/medium-v0) or a short D4RL-style name (e.g. hopper-medium-replay)"""
    total_timesteps: int = 1_000_000
    """number of gradient steps"""
    eval_freq: int = 5_000
    """evaluate every this many gradient steps"""
    eval_episodes: int = 10
    """deterministic episodes per evaluation"""
    final_eval_episodes: int = 100
    """deterministic episodes of the last evaluation, at --total-timesteps: the score results tables report"""
    batch_size: int = 256
    """transitions per gradient step"""
    log_freq: int = 1_000
    """read the losses back from the device and log them every this many steps"""
    hidden_dim: int = 256
    """width of every hidden layer of the actor and the critics"""
    num_layers: int = 2
    """number of hidden layers of the actor and the critics"""
    dataset_presets: bool = True
    ("apply the per-domain settings (DOMAIN_PRESETS: AntMaze) and the per-dataset exceptions (DATASET_PRESETS) that "
     "match --env-id; a flag given on the command line wins over both")

    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics (every step)"""
    actor_lr: float = 3e-4
    """actor learning rate (cosine-annealed to 0 over --total-timesteps)"""
    q_lr: float = 3e-4
    """critic learning rate"""
    v_lr: float = 3e-4
    """value-network learning rate"""
    expectile: float = 0.7
    """tau of the expectile regression of V on min target Q (0.5 is the mean, towards 1 the max)"""
    beta: float = 3.0
    """inverse temperature of the advantage weights exp(beta * A)"""
    exp_adv_max: float = 100.0
    """the advantage weights are capped at this value"""
    deterministic_actor: bool = False
    """a deterministic tanh actor trained by advantage-weighted MSE instead of the Gaussian log-likelihood"""
    normalize_states: bool = True
    """standardise states with the dataset's mean and std (+1e-3)"""
    normalize_reward: bool = False
    """scale rewards by 1000 / (max episode return - min episode return)"""
    reward_scale: float = 1.0
    """rewards become reward_scale * r + reward_bias (after --normalize-reward); the AntMaze presets set them"""
    reward_bias: float = 0.0
    """see --reward-scale"""
    action_clip: float = 0.999
    """dataset actions are clipped to +-this"""


# Per-dataset exceptions (applied when --env-id is the matching short name and --dataset-presets is on).
DATASET_PRESETS: dict[str, dict] = {
    "hopper-medium": {"deterministic_actor": True, "normalize_reward": True, "tau": 0.001},
    "hopper-medium-replay": {"deterministic_actor": True, "normalize_reward": True, "tau": 0.001},
    "hopper-medium-expert": {"beta": 6.0, "expectile": 0.5},
}

# Per-domain settings, applied when the dataset id names the domain (before the per-dataset ones above): CORL's
# published IQL AntMaze configuration (reward r - 1, expectile 0.9, temperature 10, 100 evaluation episodes).
DOMAIN_PRESETS: dict[str, dict] = {
    "antmaze": {"reward_bias": -1.0, "expectile": 0.9, "beta": 10.0, "eval_episodes": 100},
}


def validate_args(args: Args) -> None:
    checks = [
        ("num-seeds", args.num_seeds >= 1, "an integer >= 1"),
        ("total-timesteps", args.total_timesteps >= 1, "an integer >= 1"),
        ("eval-freq", args.eval_freq >= 1, "an integer >= 1"),
        ("eval-episodes", args.eval_episodes >= 1, "an integer >= 1"),
        ("final-eval-episodes", args.final_eval_episodes >= 1, "an integer >= 1"),
        ("batch-size", args.batch_size >= 1, "an integer >= 1"),
        ("log-freq", args.log_freq >= 1, "an integer >= 1"),
        ("steps-per-replay", args.steps_per_replay >= 1, "an integer >= 1"),
        ("hidden-dim", args.hidden_dim >= 1, "an integer >= 1"),
        ("num-layers", args.num_layers >= 1, "an integer >= 1"),
        ("gamma", 0.0 <= args.gamma <= 1.0, "a number in [0, 1]"),
        ("tau", 0.0 < args.tau <= 1.0, "a number in (0, 1]"),
        ("actor-lr", args.actor_lr > 0, "a number > 0"),
        ("q-lr", args.q_lr > 0, "a number > 0"),
        ("v-lr", args.v_lr > 0, "a number > 0"),
        ("expectile", 0.0 < args.expectile < 1.0, "a number in (0, 1)"),
        ("beta", args.beta >= 0, "a number >= 0"),
        ("exp-adv-max", args.exp_adv_max > 0, "a number > 0"),
        ("action-clip", 0.0 < args.action_clip < 1.0, "a number in (0, 1)"),
    ]
    for flag, ok, accepted in checks:
        if not ok:
            fail(f"--{flag} must be {accepted}, got {getattr(args, flag.replace('-', '_'))}")
    resolve_dataset_id(args.env_id)  # a misspelt --env-id fails here, before the run directory is claimed


# Short D4RL-style names resolve to the project's own D4RL-protocol datasets on the Gymnasium v5 envs
# (tools/make_dataset.py builds them); the namespace is ours, never Farama's mujoco/ or D4RL/.
DATASET_NAMESPACE = "misa-pytorch"
SHORT_ENVS = ("halfcheetah", "hopper", "walker2d")
SHORT_KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
# D4RL's reference returns (random, expert), used when a dataset carries no reference scores of its own.
D4RL_REF_SCORES = {"halfcheetah": (-280.178953, 12135.0), "hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3)}


def fail(message: str) -> None:
    """Exit with one line of error and no traceback: bad input is the user's to fix, not a crash."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------------------------------
# Data
def resolve_dataset_id(env_id: str) -> tuple[str, Optional[str]]:
    """Returns (minari id, short name or None)."""
    if "/" in env_id:
        return env_id, None
    match = re.fullmatch(r"(\w+?)-(.+)", env_id)
    if not match or match.group(1) not in SHORT_ENVS or match.group(2) not in SHORT_KINDS:
        valid = ", ".join(f"{e}-{k}" for e in SHORT_ENVS for k in SHORT_KINDS)
        fail(f"--env-id {env_id!r} is neither a Minari id (namespace/name-vN) nor a known short name ({valid})")
    env, kind = match.groups()
    return f"{DATASET_NAMESPACE}/{env}/{kind}-v0", env_id


def remote_reachable(timeout: float = 3.0) -> bool:
    """Minari's remote is the Hugging Face hub; probe it so that an offline machine fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def dataset_remedy(dataset_id: str, short_name: Optional[str]) -> str:
    """What a user does about a damaged or unreadable dataset."""
    if short_name is not None:
        return f"rebuild it with `python tools/make_dataset.py {short_name} --overwrite`"
    return f"delete that folder and download it again (`minari download {dataset_id}`)"


def load_dataset(env_id: str):
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    dataset_id, short_name = resolve_dataset_id(env_id)
    local = (get_dataset_path(dataset_id) / "data").exists()
    if not local and short_name is not None:
        # Our D4RL-protocol datasets are built locally, never downloaded: build it now if the builder is at hand.
        builder = next((p for p in (Path(__file__).parent / "tools" / "make_dataset.py",
                                    Path(__file__).parent.parent / "tools" / "make_dataset.py") if p.exists()), None)
        if builder is None:
            fail(f"dataset {dataset_id} ({short_name}) is not built yet; build it with "
                 f"`python tools/make_dataset.py {short_name}` from the project root")
        print(f"dataset {dataset_id} is not built yet: building it now with {builder} (a few minutes, once)")
        build = subprocess.Popen([sys.executable, str(builder), short_name])
        try:
            returncode = build.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches the builder too, which says so in one line and keeps nothing
            take_the_stop()  # while it cleans up, more Ctrl-Cs or SIGTERMs do nothing (main() set stop_once)
            try:
                returncode = build.wait(timeout=10)
            except subprocess.TimeoutExpired:  # only this process was signalled (a kill): pass it on
                build.terminate()  # SIGTERM, which the builder obeys even where SIGINT is ignored (nohup, a `&` job)
                returncode = build.wait()
            if returncode == 0:
                print(f"interrupted after {dataset_id} was built; nothing was trained", file=sys.stderr)
            sys.exit(130)
        if returncode != 0:
            fail(f"building {dataset_id} failed (see above); rerun `python {builder} {short_name}`")
    elif not local:
        if not remote_reachable():
            fail(f"dataset {dataset_id} is not in {get_dataset_path()} and Minari's remote (the Hugging Face hub) "
                 f"cannot be reached; copy the dataset there (or set MINARI_DATASETS_PATH), or use a short name "
                 f"such as walker2d-medium, which is built locally")
        print(f"downloading {dataset_id} from Minari's remote ...")
        try:
            return minari.load_dataset(dataset_id, download=True)
        except Exception as e:  # minari raises ValueError for unknown ids, network errors for the rest
            fail(f"could not download {dataset_id}: {type(e).__name__}: {e}")
    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as e:  # a truncated HDF5 file, a missing or garbled metadata.json, ...
        fail(f"dataset {dataset_id} at {get_dataset_path(dataset_id)} is damaged or unreadable "
             f"({type(e).__name__}: {e}); {dataset_remedy(dataset_id, short_name)}")
    if short_name is not None and "make_dataset.py 1.0 " in (dataset.storage.metadata.get("description") or ""):
        print(f"note: {dataset_id} was built by make_dataset.py 1.0, whose data depend on the CPU that built them; "
              f"`python tools/make_dataset.py {short_name} --overwrite` builds the data every machine gets")
    return dataset


# Goal-conditioned datasets (Minari's D4RL/antmaze, D4RL/pointmaze, D4RL/kitchen) store dictionary observations. They
# are flattened in one fixed order, for the dataset and the evaluation env alike: `observation`, `achieved_goal`,
# `desired_goal`, then any other key; the keys of a nested dictionary (Kitchen's goals) in sorted order.
# `achieved_goal` is kept: AntMaze's `observation` holds no x-y position (the ant's position is only in
# `achieved_goal`, where D4RL's 29-dim state had it), and where it repeats part of `observation` (PointMaze, Kitchen)
# the copy costs an MLP nothing.
OBS_KEY_ORDER = ("observation", "achieved_goal", "desired_goal")


def is_flat_box_tree(space: gym.Space) -> bool:
    if isinstance(space, gym.spaces.Dict):
        return all(is_flat_box_tree(sub) for sub in space.spaces.values())
    return isinstance(space, gym.spaces.Box)


def flatten_observations(space: gym.Space, obs, top: bool = True) -> np.ndarray:
    """One observation (dim,) or an episode's (T+1, dim) from a Box or a (nested) Dict of Boxes, in OBS_KEY_ORDER."""
    if isinstance(space, gym.spaces.Box):
        x = np.asarray(obs, dtype=np.float64)
        return x.reshape(*x.shape[:x.ndim - len(space.shape)], -1)  # keeps a leading time axis
    keys = sorted(space.spaces, key=lambda k: (OBS_KEY_ORDER.index(k) if top and k in OBS_KEY_ORDER else 3, k))
    return np.concatenate([flatten_observations(space.spaces[k], obs[k], top=False) for k in keys], axis=-1)


class DamagedEpisode(ValueError):
    """An episode whose arrays do not fit together: damage, not a user's choice."""


def dataset_to_transitions(dataset, name: str, action_clip: float) -> dict[str, np.ndarray]:
    """Per episode: (obs[:-1], action, reward, obs[1:], done) with done = termination (a truncation is not terminal).
    Dictionary observations are flattened (flatten_observations). Actions are mapped to [-1, 1] from the Box bounds,
    then clipped to +-action_clip."""
    if not is_flat_box_tree(dataset.observation_space):
        fail(f"dataset {name}: the observation space is {dataset.observation_space}; only a Box or a dictionary of "
             f"Boxes is supported")
    if not isinstance(dataset.action_space, gym.spaces.Box):
        fail(f"dataset {name}: the action space is {type(dataset.action_space).__name__}; only a Box is supported")
    low, high = dataset.action_space.low.astype(np.float64), dataset.action_space.high.astype(np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        fail(f"dataset {name}: the action space must be bounded, got low={low}, high={high}")
    parts = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "dones")}
    for ep in dataset.iterate_episodes():
        obs = flatten_observations(dataset.observation_space, ep.observations)
        lengths = {"actions": len(ep.actions), "rewards": len(ep.rewards), "terminations": len(ep.terminations)}
        if obs.ndim != 2 or len(obs) != len(ep.actions) + 1 or len(set(lengths.values())) != 1:
            raise DamagedEpisode(f"episode {ep.id}'s arrays disagree in length: observations {obs.shape}, "
                                 + ", ".join(f"{k} {v}" for k, v in lengths.items()))
        parts["obs"].append(obs[:-1])
        parts["next_obs"].append(obs[1:])
        parts["actions"].append(np.asarray(ep.actions, dtype=np.float64).reshape(len(ep.actions), -1))
        parts["rewards"].append(np.asarray(ep.rewards, dtype=np.float64))
        parts["dones"].append(np.asarray(ep.terminations, dtype=np.float64))
    if not parts["obs"]:
        fail(f"dataset {name} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    for field, values in data.items():
        if not np.all(np.isfinite(values)):
            fail(f"dataset {name}: field {field!r} holds non-finite values at {int((~np.isfinite(values)).sum())} entries")
    data["actions"] = np.clip((data["actions"] - (high + low) / 2) / ((high - low) / 2), -action_clip, action_clip)
    return {k: v.astype(np.float32) for k, v in data.items()}


def read_transitions(env_id: str, action_clip: float):
    """The Minari dataset and its transitions; any damage found while reading is one line that says what to do."""
    from minari.storage.datasets_root_dir import get_dataset_path

    dataset = load_dataset(env_id)
    dataset_id, short_name = resolve_dataset_id(env_id)
    try:
        return dataset, dataset_to_transitions(dataset, dataset_id, action_clip)
    except Exception as e:  # h5py's OSError/KeyError for unreadable chunks or missing fields, or DamagedEpisode
        fail(f"dataset {dataset_id} at {get_dataset_path(dataset_id)} is damaged or unreadable "
             f"({type(e).__name__}: {e}); {dataset_remedy(dataset_id, short_name)}")


def make_eval_env(dataset, env_id: str) -> gym.Env:
    """The dataset's evaluation env, its observations flattened as the dataset's are. gymnasium-robotics registers the
    envs of the D4RL/ datasets (AntMaze, PointMaze, Adroit, Kitchen); it is imported only when one is needed."""
    spec = dataset.spec.env_spec  # the evaluation env, if the dataset names one, comes from the same package
    if spec is not None and spec.id not in gym.registry:
        try:
            import gymnasium_robotics  # prints a note on Adroit's v1 reward functions: worth reading for Adroit
            gym.register_envs(gymnasium_robotics)
        except ImportError:
            fail(f"the evaluation env of {env_id} ({spec.id}) needs gymnasium-robotics: pip install -r requirements.txt")
    try:
        env = dataset.recover_environment(eval_env=True)
    except Exception as e:
        known = (" FrankaKitchen-v1 does not build with gymnasium-robotics 1.4.2 on MuJoCo 3.12 or newer (its joint-type "
                 "check compares a MuJoCo enum with a NumPy integer): install requirements.txt, which keeps MuJoCo "
                 "below 3.12" if spec is not None and "Kitchen" in spec.id else "")
        fail(f"cannot build the evaluation env of {env_id}: {type(e).__name__}: {e}.{known}")
    space = dataset.observation_space
    if isinstance(space, gym.spaces.Dict):
        dim = flatten_observations(space, space.sample()).shape[-1]
        env = gym.wrappers.TransformObservation(env, lambda obs: flatten_observations(space, obs),
                                                gym.spaces.Box(-np.inf, np.inf, (dim,), np.float64))
    return env


def make_eval_envs(dataset, env_id: str, num_envs: int, asynchronous: bool) -> gym.vector.VectorEnv:
    """`num_envs` evaluation envs stepped together by gymnasium.vector, with autoreset off: `evaluate` resets each env
    itself when its episode ends, with the seed of the episode it runs next. `asynchronous` steps each env in a worker
    process of its own (forked, so nothing is pickled), which pays where the machine has cores to spare."""
    make_eval_env(dataset, env_id).close()  # built here once first, so that an env that cannot be built is one line
    if not asynchronous:
        return gym.vector.SyncVectorEnv([lambda: make_eval_env(dataset, env_id)] * num_envs,
                                        autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    stops, main_process = {signal.SIGINT, signal.SIGTERM}, os.getpid()

    def make_in_worker():
        # A terminal's Ctrl-C reaches every process of the job. The workers leave the stop to this process, which ends
        # them and saves its checkpoint; SIGTERM ends a worker at once, as gymnasium's close(terminate=True) expects.
        # (gymnasium also calls this once in this process, to read the spaces, where the stop handlers must stay.)
        if os.getpid() != main_process:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        return make_eval_env(dataset, env_id)

    # The workers are forked with the stops blocked, so that none takes one for its own before its handlers are set.
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        return gym.vector.AsyncVectorEnv([make_in_worker] * num_envs, context="fork",
                                         autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)  # a stop that came meanwhile is taken now


def end_eval_envs(envs: gym.vector.VectorEnv) -> None:
    """Ends the evaluation envs without waiting on them, as a stop must. A stop can land while this process reads a
    worker's reply; gymnasium's close() then fails to read the rest of it, and the workers are ended here instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium warns that it closes envs in the middle of a step
        try:
            envs.close(terminate=True)
        except Exception:
            for process in getattr(envs, "processes", []):
                process.terminate()
                process.join()
            for pipe in getattr(envs, "parent_pipes", []):
                pipe.close()
            envs.closed = True  # as close() would have set it; else gymnasium tries again, and fails again, at exit


def reference_scores(dataset) -> tuple[Optional[float], Optional[float], str]:
    """(min, max, source) for the normalised score: the dataset's own, else D4RL's for the three locomotion envs."""
    meta = dataset.storage.metadata
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        return float(meta["ref_min_score"]), float(meta["ref_max_score"]), "the dataset's reference scores"
    env_name = (dataset.spec.env_spec.id if dataset.spec.env_spec is not None else "").lower()
    for key, (lo, hi) in D4RL_REF_SCORES.items():
        if env_name.startswith(key):
            return lo, hi, f"D4RL's reference returns for {key} (the dataset has none)"
    return None, None, "none (raw returns only)"


def reward_range_scale(dataset) -> float:
    """1000 / (max episode return - min episode return): the locomotion reward normalisation of IQL and CQL."""
    returns = [float(np.sum(ep.rewards)) for ep in dataset.iterate_episodes()]
    return 1000.0 / max(max(returns) - min(returns), 1e-8)


def dataset_domain(env_id: str) -> Optional[str]:
    """The D4RL domain a dataset id belongs to (antmaze, pointmaze, adroit, kitchen), or None (locomotion, other)."""
    tokens = set(re.split(r"[/_-]", env_id.lower()))
    if tokens & {"antmaze", "pointmaze", "kitchen"}:
        return next(d for d in ("antmaze", "pointmaze", "kitchen") if d in tokens)
    return "adroit" if tokens & {"pen", "door", "hammer", "relocate"} else None


def apply_dataset_presets(args: Args) -> list[str]:
    """Apply DOMAIN_PRESETS for the dataset's domain, then DATASET_PRESETS when --env-id is one of its short names,
    except where the command line gives the flag itself; returns what changed, for the log."""
    preset = {**DOMAIN_PRESETS.get(dataset_domain(args.env_id), {}), **DATASET_PRESETS.get(args.env_id, {})}
    given = {a[2:].split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
    given |= {name[3:] for name in given if name.startswith("no_")}  # --no-cql-lagrange gives cql_lagrange
    preset = {k: v for k, v in preset.items() if k not in given} if args.dataset_presets else {}  # flags win
    for key, value in preset.items():
        setattr(args, key, value)
    return [f"{k}={v}" for k, v in preset.items()]


# ----------------------------------------------------------------------------------------------------------------------
# Networks
class EnsembleMLP(nn.Module):
    """Independent ReLU MLPs, one per member, stored as stacked weights (*members, in, out) and evaluated together by
    batched matmuls: members is (S,) for the actors of S agents, (S, 2) for their twin critics (PyTorch's default
    nn.Linear initialisation, per member)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int, members: tuple[int, ...]):
        super().__init__()
        dims = [in_dim] + [hidden] * layers + [out_dim]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # what nn.Linear's default init gives, weights and biases alike
            self.weights.append(nn.Parameter(torch.empty(*members, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(*members, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (*members, N, in), or a shape that broadcasts to it; returns (*members, N, out)."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if x.shape[:-2] == w.shape[:-2]:  # one input per member: one batched matmul with the bias fused (baddbmm)
                x = torch.baddbmm(b.flatten(0, -3), x.flatten(0, -3), w.flatten(0, -3)).view(*w.shape[:-2], x.shape[-2], -1)
            else:  # an input shared by several members (the twin critics' first layer): broadcast
                x = torch.matmul(x, w) + b
            if i < len(self.weights) - 1:
                x = F.relu(x)
        return x


class TwinCritic(nn.Module):
    """Q1 and Q2 on concat(s, a) for S agents, evaluated in one batched call."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int, num_agents: int):
        super().__init__()
        self.net = EnsembleMLP(obs_dim + act_dim, 1, hidden, layers, members=(num_agents, 2))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """obs (S, B, obs_dim), act (S, B, act_dim) -> Q values (2, S, B): the critic index first, so that min(0) is
        the twin minimum."""
        return self.net(torch.cat([obs, act], -1).unsqueeze(1)).squeeze(-1).movedim(1, 0)


class ValueNet(nn.Module):
    """V(s) of S agents: ReLU MLP with a scalar output, (S, B, obs_dim) -> (S, B)."""

    def __init__(self, obs_dim: int, hidden: int, layers: int, num_agents: int):
        super().__init__()
        self.net = EnsembleMLP(obs_dim, 1, hidden, layers, members=(num_agents,))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class Actor(nn.Module):
    """Gaussian policies of S agents with a tanh-squashed mean and a state-independent log-std clamped to [-20, 2];
    or, with deterministic=True, tanh policies. (S, B, obs_dim) -> (S, B, act_dim)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int, deterministic: bool, num_agents: int):
        super().__init__()
        self.net = EnsembleMLP(obs_dim, act_dim, hidden, layers, members=(num_agents,))
        self.deterministic = deterministic
        self.log_std = nn.Parameter(torch.zeros(num_agents, 1, act_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs), self.log_std.clamp(-20.0, 2.0)
        return (-0.5 * ((actions - mean) * torch.exp(-log_std)).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric L2: |expectile - 1(diff < 0)| * diff^2, with diff = target - prediction (S, B); one mean per agent."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean(-1)


class IQL:
    """S independent agents (networks, optimisers, the update) stacked along a leading agent dimension: every tensor
    that belongs to an agent has the agent first, (S, ...), and every loss is one value per agent, (S,).
    `update(batch)` takes one minibatch per agent, (S, B, ...), and returns a dict of detached (S,) tensors. Agent s's
    loss depends on agent s's parameters only, so the gradient of the summed losses gives each agent its own gradient,
    and Adam, elementwise, is S independent optimisers."""

    LOSS_NAMES = ("value_loss", "critic_loss", "actor_loss")
    SHARED_STATE = ("obs_mean", "obs_std")  # entries of state_dict() that all agents share

    def __init__(self, args: Args, obs_dim: int, act_dim: int, device: torch.device,
                 obs_mean: np.ndarray, obs_std: np.ndarray, num_agents: int):
        self.args, self.device = args, device
        self.actor = Actor(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.deterministic_actor,
                           num_agents).to(device)
        self.critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_layers, num_agents).to(device)
        self.critic_target = TwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_layers, num_agents).to(device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.value = ValueNet(obs_dim, args.hidden_dim, args.num_layers, num_agents).to(device)
        on_cuda = device.type == "cuda"
        cuda_flags = dict(capturable=on_cuda, fused=on_cuda or None)  # see match_device_flags
        # The actor's learning rate is a tensor that the update sets itself: a cosine from actor_lr to 0 over the run,
        # in closed form of the update count, so a resumed run follows the schedule of its current --total-timesteps
        # and a CUDA-graph replay advances it like an eager step.
        self.num_updates = torch.zeros((), dtype=torch.float64, device=device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=torch.full((), args.actor_lr, device=device),
                                          **cuda_flags)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=args.q_lr, **cuda_flags)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=args.v_lr, **cuda_flags)
        self.obs_mean = torch.as_tensor(obs_mean, device=device)
        self.obs_std = torch.as_tensor(obs_std, device=device)

    def update(self, obs, actions, rewards, next_obs, dones) -> dict[str, torch.Tensor]:
        args = self.args
        # 1. V by expectile regression on the min target Q
        with torch.no_grad():
            target_q = self.critic_target(obs, actions).min(0).values  # (S, B)
        v = self.value(obs)
        advantage = (target_q - v).detach()
        value_loss = expectile_loss(target_q - v, args.expectile)  # (S,)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.sum().backward()
        self.value_opt.step()
        # 2. Q on r + gamma (1 - d) V(s'), with the V just updated
        with torch.no_grad():
            td_target = rewards + args.gamma * (1.0 - dones) * self.value(next_obs)
        q = self.critic(obs, actions)  # (2, S, B)
        critic_loss = (q - td_target).pow(2).mean(-1).mean(0)  # (S,): mean of the two critics' MSEs
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_opt.step()
        # 3. Polyak update of the target critics
        with torch.no_grad():  # every target parameter in one multi-tensor kernel on CUDA
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), args.tau)
        # 4. actor by advantage-weighted regression, with the advantage of step 1
        weights = torch.exp(args.beta * advantage).clamp(max=args.exp_adv_max)
        if args.deterministic_actor:
            bc_losses = (self.actor(obs) - actions).pow(2).sum(-1)
        else:
            bc_losses = -self.actor.log_prob(obs, actions)
        actor_loss = (weights * bc_losses).mean(-1)  # (S,)
        progress = self.num_updates.clamp(max=args.total_timesteps) / args.total_timesteps
        self.actor_opt.param_groups[0]["lr"].copy_(args.actor_lr * 0.5 * (1 + torch.cos(math.pi * progress)))
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.actor_opt.step()
        self.num_updates += 1
        return {"losses/value_loss": value_loss.detach(), "losses/critic_loss": critic_loss.detach(),
                "losses/actor_loss": actor_loss.detach(), "losses/advantage": advantage.mean(-1),
                "losses/adv_weight": weights.mean(-1), "losses/q_data": q.detach().mean((0, 2)),
                "losses/v": v.detach().mean(-1)}

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor((obs - self.obs_mean) / self.obs_std)

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "value": self.value.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "value_opt": self.value_opt.state_dict(), "num_updates": self.num_updates.cpu(),
                "obs_mean": self.obs_mean.cpu(), "obs_std": self.obs_std.cpu()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "critic", "critic_target", "value", "actor_opt", "critic_opt", "value_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.actor_opt.param_groups[0]["lr"] = torch.as_tensor(  # a tensor on this device, whatever was saved
            self.actor_opt.param_groups[0]["lr"], dtype=torch.float32, device=self.device).clone()
        for opt in (self.actor_opt, self.critic_opt, self.value_opt):
            match_device_flags(opt, self.device.type == "cuda")
        self.num_updates.copy_(state["num_updates"])
        self.obs_mean = state["obs_mean"].to(self.device)
        self.obs_std = state["obs_std"].to(self.device)


# ----------------------------------------------------------------------------------------------------------------------
# Compiled and graph-captured training steps (--compile, --cuda-graphs)
def use_cuda_graphs(args: Args, device: torch.device) -> bool:
    return device.type == "cuda" and (args.cuda_graphs == "on" or (args.cuda_graphs == "auto" and args.compile))


def match_device_flags(opt: torch.optim.Optimizer, on_cuda: bool) -> None:
    """A loaded optimiser state carries the saving run's `capturable` and `fused` flags; set this device's. On CUDA
    the optimisers are fused (one kernel per step) and capturable (the step counters stay on the GPU, so no step syncs
    with the host and a CUDA graph can advance them): the same arithmetic as the default implementation."""
    for group in opt.param_groups:
        group["capturable"], group["fused"] = on_cuda, (True if on_cuda else None)
        for p in group["params"]:
            state = opt.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(p.device if on_cuda else "cpu", torch.float32)


class CUDAGraphStep:
    """Replays a training step from CUDA graphs, one graph per distinct tuple of the step's Python arguments.
    The first `warmup` calls of each run eagerly on a side stream: they are real updates, and they let autograd,
    cuBLAS and the optimisers allocate their state. The next call captures the graph and replays it. A replay reads
    and writes the very tensors the eager step used (parameters, optimiser states, the dataset), so none of them may
    be reallocated; the returned metrics are overwritten by the next replay."""

    def __init__(self, step_fn: Callable[..., dict], warmup: int = 3):
        self.step_fn, self.warmup = step_fn, warmup
        self.graphs, self.outputs, self.eager_calls = {}, {}, {}
        self.side_stream = torch.cuda.Stream()

    def __call__(self, *key) -> dict[str, torch.Tensor]:
        if key in self.graphs:
            self.graphs[key].replay()
            return self.outputs[key]
        if self.eager_calls.get(key, 0) < self.warmup:
            self.eager_calls[key] = self.eager_calls.get(key, 0) + 1
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                out = self.step_fn(*key)
            torch.cuda.current_stream().wait_stream(self.side_stream)
            return out
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records the kernels without running them
            self.outputs[key] = self.step_fn(*key)
        self.graphs[key] = graph
        graph.replay()
        return self.outputs[key]


TRANSITION_FIELDS = ("obs", "actions", "rewards", "next_obs", "dones")


def make_minibatch_sampler(data: dict, num_agents: int, batch_size: int, device: torch.device) -> Callable[[], tuple]:
    """Puts the dataset on the device as one (N, width) tensor, a transition per row, and returns a function that
    draws one minibatch per agent, (obs, actions, rewards, next_obs, dones), each (S, B, ...): one index draw and one
    gather per step, both on the device (no host round trip, one kernel for all five fields)."""
    columns = [torch.as_tensor(data[k], device=device).reshape(len(data["rewards"]), -1) for k in TRANSITION_FIELDS]
    table, widths = torch.cat(columns, 1), [c.shape[1] for c in columns]

    def sample_batch() -> tuple[torch.Tensor, ...]:
        idx = torch.randint(len(table), (num_agents, batch_size), device=device)
        obs, actions, rewards, next_obs, dones = table[idx].split(widths, -1)
        return obs, actions, rewards.squeeze(-1), next_obs, dones.squeeze(-1)

    return sample_batch


class NonFiniteWatch:
    """Remembers, on the device, the first step whose losses were not finite and which losses of which agents they
    were; the loop reads it back only when it logs or evaluates, so no step waits for the host. Its tensors are
    updated in place, so a CUDA graph that captured `record` keeps updating them on every replay."""

    def __init__(self, loss_names: tuple[str, ...], num_agents: int, step: int, device: torch.device):
        self.loss_names = loss_names
        self.step = torch.full((), step, dtype=torch.long, device=device)  # steps done, counted on the device
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_losses = torch.zeros(len(loss_names), num_agents, dtype=torch.bool, device=device)

    def record(self, metrics: dict[str, torch.Tensor]) -> None:
        self.step.add_(1)
        losses = torch.stack([metrics[f"losses/{n}"] for n in self.loss_names])  # (losses, S)
        bad = torch.isnan(losses - losses)  # x - x is NaN exactly when x is not finite: two kernels, isfinite takes five
        newly_bad = bad.any() & (self.first_bad_step < 0)
        torch.where(newly_bad, bad, self.bad_losses, out=self.bad_losses)
        torch.where(newly_bad, self.step, self.first_bad_step, out=self.first_bad_step)


def make_train_step(agent, args: Args, device: torch.device, sample_batch: Callable[[], tuple],
                    watch: NonFiniteWatch) -> Callable[..., dict]:
    """`train_step(*phases)` takes len(phases) gradient steps, each `sample_batch()` then `agent.update(*batch,
    *phase)`, and returns the last step's metrics; compiled and/or graph-captured as the flags ask (one CUDA graph
    per distinct `phases`, so --steps-per-replay K puts K steps in one graph)."""
    update = torch.compile(agent.update, mode=args.compile_mode) if args.compile else agent.update

    def train_step(*phases: tuple) -> dict[str, torch.Tensor]:
        for phase in phases:
            metrics = update(*sample_batch(), *phase)
            watch.record(metrics)
        return metrics

    return CUDAGraphStep(train_step) if use_cuda_graphs(args, device) else train_step


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation, checkpoints
def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], envs: gym.vector.VectorEnv, num_agents: int,
             num_episodes: int, seeds: list[int], action_low: np.ndarray, action_high: np.ndarray,
             device: torch.device) -> np.ndarray:
    """`num_episodes` deterministic episodes of each of S agents; returns their returns (S, num_episodes).
    `envs` holds E envs per agent (env j serves agent j // E), and each runs its agent's episodes one after another;
    episode k of agent s is reset with seeds[s] + k, so an agent's returns do not depend on the agents evaluated with
    it. `policy` maps observations (S, E, obs_dim) to deterministic actions in [-1, 1], mapped back to the env's Box
    bounds. An env whose agent has no episode left idles: reset with no seed, stepped, ignored."""
    per_agent = envs.num_envs // num_agents
    agent_of = np.repeat(np.arange(num_agents), per_agent)
    returns, next_episode = np.zeros((num_agents, num_episodes)), np.zeros(num_agents, dtype=int)
    episode = np.full(envs.num_envs, -1)  # the episode each env runs; -1: idle

    def start_episodes(mask: np.ndarray) -> np.ndarray:
        seeds_now = [None] * envs.num_envs
        for j in np.flatnonzero(mask):
            s = agent_of[j]
            episode[j] = next_episode[s] if next_episode[s] < num_episodes else -1
            next_episode[s] += episode[j] >= 0
            seeds_now[j] = int(seeds[s] + episode[j]) if episode[j] >= 0 else None
        return envs.reset(seed=seeds_now, options={"reset_mask": mask})[0]

    obs = start_episodes(np.ones(envs.num_envs, dtype=bool))
    while (episode >= 0).any():
        with torch.no_grad():
            batch = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(num_agents, per_agent, -1)
            squashed = policy(batch).reshape(envs.num_envs, -1).cpu().numpy()
        obs, reward, terminated, truncated, _ = envs.step(action_low + (squashed + 1.0) * 0.5 * (action_high - action_low))
        running = episode >= 0
        returns[agent_of[running], episode[running]] += reward[running]
        done = terminated | truncated
        if done.any():
            obs = start_episodes(done)
    return returns


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Claims the run directory before any data is read or any step is taken: a new run never writes into another
    run's directory (refused, or with --overwrite deleted first), and an unwritable place is reported at once."""
    try:
        if not resuming and run_dir.is_dir() and any(run_dir.iterdir()):
            if not overwrite:
                fail(f"{run_dir} already holds a run; continue it with --resume {run_dir / 'checkpoint.pt'} (if it saved "
                     f"one), or start afresh with --overwrite (deletes that run) or another --run-name")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        fail(f"cannot create or write the run directory {run_dir}: {e.strerror or e} ({e.filename or run_dir}); "
             f"choose another place to run from, or free or fix that path")


def write_csv(path: Path, rows: list, mode: str) -> None:
    try:
        with open(path, mode, newline="") as f:
            csv.writer(f).writerows(rows)
    except OSError as e:
        fail(f"could not write {path}: {e.strerror or e} (is the disk full or read-only?)")


def agent_state(state, s: int, shared: tuple[str, ...] = ()):
    """Agent s's part of a stacked state dict (optimiser states included), shaped as a one-agent state: every tensor
    with an agent dimension, i.e. all but the 0-dim ones such as Adam's step count, is sliced at s; the `shared`
    entries, which all agents use alike, are kept whole."""
    if isinstance(state, dict):
        return {k: v if k in shared else agent_state(v, s) for k, v in state.items()}
    if isinstance(state, list):
        return [agent_state(v, s) for v in state]
    return state[s:s + 1].clone() if isinstance(state, torch.Tensor) and state.dim() > 0 else state


def stack_agent_states(states: list, shared: tuple[str, ...] = ()):
    """The inverse of agent_state: one-agent states concatenated along the agent dimension."""
    first = states[0]
    if isinstance(first, dict):
        return {k: first[k] if k in shared else stack_agent_states([st[k] for st in states]) for k in first}
    if isinstance(first, list):
        return [stack_agent_states(list(v)) for v in zip(*states)]
    return torch.cat(states) if isinstance(first, torch.Tensor) and first.dim() > 0 else first


def make_agents(build: Callable[[int], IQL], seeds: list[int]) -> IQL:
    """`build(len(seeds))` agents in one stack, agent s starting from exactly the parameters that a one-seed run of
    seeds[s] starts from: each is initialised alone after torch.manual_seed(seeds[s]), then they are stacked."""
    agent = build(len(seeds))
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        states.append(build(1).state_dict())
    agent.load_state_dict(stack_agent_states(states, agent.SHARED_STATE))
    return agent


def save_checkpoints(run_dirs: list[Path], run_names: list[str], agent, step: int, args: Args) -> None:
    """One checkpoint per seed, the one a one-seed run of that seed would write (its args have that seed and
    --num-seeds 1), plus the group it trains in, so that --resume of any of them continues the whole group."""
    state, rng = agent.state_dict(), rng_state()
    for s, (run_dir, run_name) in enumerate(zip(run_dirs, run_names)):
        group = {"seed": args.seed, "num_seeds": args.num_seeds, "run_names": run_names, "index": s}
        blob = {"agent": agent_state(state, s, agent.SHARED_STATE), "step": step, "args": asdict(replace(args, seed=args.seed + s, num_seeds=1)),
                "run_name": run_name, "rng": rng, "group": group}
        path = run_dir / "checkpoint.pt"
        tmp = Path(str(path) + ".tmp")
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path)  # atomic: an interruption or a full disk never leaves a half-written checkpoint
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            tmp.unlink(missing_ok=True)
            kept = f"the previous checkpoint {path} is kept" if path.exists() else "no checkpoint was written"
            fail(f"could not write the checkpoint {path} at step {step}: {e} (is the disk full?); {kept}")


def load_checkpoints(path: str) -> tuple[Args, list[dict], list[Path]]:
    """--resume: the run's args and the checkpoints of every seed it trains (a many-seed run resumes all its seeds
    together, from the sibling run directories its checkpoints name), with their run directories."""
    def load(file: Path) -> dict:
        if not file.is_file():
            fail(f"--resume {path}: no such checkpoint file {file}")
        try:
            return torch.load(file, map_location="cpu", weights_only=False)
        except Exception as e:
            fail(f"--resume {file}: not a checkpoint of this script ({type(e).__name__}: {e})")

    blob = load(Path(path))
    try:
        args, group = Args(**blob["args"]), blob["group"]  # checkpoints from before --num-seeds have no group
    except Exception as e:
        fail(f"--resume {path}: not a checkpoint of this script ({type(e).__name__}: {e})")
    args.seed, args.num_seeds = group["seed"], group["num_seeds"]
    run_dirs = [Path(path).parent.parent / name for name in group["run_names"]]
    blobs = [blob if i == group["index"] else load(d / "checkpoint.pt") for i, d in enumerate(run_dirs)]
    if len({b["step"] for b in blobs}) != 1:
        fail(f"--resume {path}: the checkpoints of this {len(blobs)}-seed run stopped at different steps "
             f"({', '.join(str(b['step']) for b in blobs)}); start these runs afresh with --overwrite")
    return args, blobs, run_dirs


# ----------------------------------------------------------------------------------------------------------------------
stop_taken = False  # set by the code that handles a stop, first thing (take_the_stop)
last_stop_raised = float("-inf")


def stop_once(signum, frame):
    # A Ctrl-C or SIGTERM stops the run by raising KeyboardInterrupt. Once the code that handles it has taken it, later
    # ones do nothing, so that nothing interrupts the checkpoint being written (benchmark.py passes a stop on to its
    # runs, which a terminal's Ctrl-C may already have reached); nor do those in the second after one is raised, while
    # it travels to that code. A stop raised where Python swallows exceptions (a weakref callback or a __del__, which
    # print "Exception ignored") is thus not the last: the next Ctrl-C stops the run. Not SIG_IGN: Python raises an
    # error for a signal that arrives just before such a switch.
    global last_stop_raised
    if not stop_taken and time.monotonic() - last_stop_raised > 1.0:
        last_stop_raised = time.monotonic()
        raise KeyboardInterrupt


def take_the_stop() -> None:
    global stop_taken
    stop_taken = True


def main(args: Args) -> None:
    # CPU: denormal floats (below 1.2e-38) count as zero. exp of a very negative number, such as a logsumexp's softmax
    # weight, is one, and matrix products run many times slower on them: without this a CQL run on 2 cores slowed from
    # 8.8 to 3.8 updates/s by step 14k. Set first: the thread pool that the first parallel op starts inherits it.
    torch.set_flush_denormal(True)
    signal.signal(signal.SIGTERM, stop_once)  # a kill or a cluster preemption checkpoints like Ctrl-C
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a job started with Ctrl-C ignored keeps ignoring it
        signal.signal(signal.SIGINT, stop_once)
    resume_blobs = None
    if args.resume is not None:
        saved, resume_blobs, run_dirs = load_checkpoints(args.resume)
        for flag in ("total_timesteps", "save_model", "track", "cuda", "resume"):
            setattr(saved, flag, getattr(args, flag))
        args = saved
    presets = apply_dataset_presets(args) if resume_blobs is None else []  # a checkpoint's args hold them
    validate_args(args)
    seeds = [args.seed + s for s in range(args.num_seeds)]
    if args.track and args.num_seeds > 1:
        fail("--track logs one W&B run per process: use it with --num-seeds 1")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    if args.cuda_graphs == "on" and device.type != "cuda":
        fail("--cuda-graphs on needs a CUDA device (none is available, or --no-cuda was given); "
             "use --cuda-graphs auto or off")

    if resume_blobs is not None:
        run_names = [blob["run_name"] for blob in resume_blobs]
    else:
        template = args.run_name or f"{args.env_id.replace('/', '-')}__{args.exp_name}__{{seed}}__{int(time.time())}"
        if args.num_seeds > 1 and "{seed}" not in template:
            fail(f"--run-name {template!r} must contain {{seed}} with --num-seeds > 1, which names one run per seed")
        run_names = [template.replace("{seed}", str(seed)) for seed in seeds]
        run_dirs = [Path("runs") / name for name in run_names]
    for run_dir in run_dirs:
        prepare_run_dir(run_dir, resuming=resume_blobs is not None, overwrite=args.overwrite)
    checkpoint_paths = [run_dir / "checkpoint.pt" for run_dir in run_dirs]

    dataset, data = read_transitions(args.env_id, args.action_clip)
    reward_mode = "raw"
    if args.normalize_reward:
        scale = reward_range_scale(dataset)
        data["rewards"] = data["rewards"] * scale
        reward_mode = f"x{scale:.4g} (1000 / episode-return range)"
    if args.reward_scale != 1.0 or args.reward_bias != 0.0:
        data["rewards"] = args.reward_scale * data["rewards"] + args.reward_bias
        reward_mode += f", then {args.reward_scale:g} * r + {args.reward_bias:g}"
    if args.normalize_states:
        obs_mean, obs_std = data["obs"].mean(0), data["obs"].std(0) + 1e-3
        data["obs"], data["next_obs"] = (data["obs"] - obs_mean) / obs_std, (data["next_obs"] - obs_mean) / obs_std
    else:
        obs_mean, obs_std = np.zeros(data["obs"].shape[1], np.float32), np.ones(data["obs"].shape[1], np.float32)
    num_transitions = len(data["rewards"])
    if num_transitions < args.batch_size:
        fail(f"dataset {args.env_id} has {num_transitions} transitions, fewer than --batch-size {args.batch_size}")
    sample_batch = make_minibatch_sampler(data, args.num_seeds, args.batch_size, device)  # the dataset lives on the device
    obs_dim, act_dim = data["obs"].shape[1], data["actions"].shape[1]
    ref_min, ref_max, ref_source = reference_scores(dataset)
    eval_envs = make_eval_envs(dataset, args.env_id, args.num_seeds * args.eval_episodes,
                               asynchronous=(os.cpu_count() or 1) >= 4)
    if eval_envs.single_observation_space.shape != (obs_dim,) or eval_envs.single_action_space.shape != (act_dim,):
        fail(f"dataset {args.env_id} does not match its env: data obs/act dims {obs_dim}/{act_dim}, env "
             f"{eval_envs.single_observation_space.shape}/{eval_envs.single_action_space.shape}")
    action_low, action_high = dataset.action_space.low, dataset.action_space.high

    agent = make_agents(lambda num_agents: IQL(args, obs_dim, act_dim, device, obs_mean, obs_std, num_agents), seeds)
    step = 0
    if resume_blobs is not None:
        agent.load_state_dict(stack_agent_states([blob["agent"] for blob in resume_blobs], agent.SHARED_STATE))
        step = resume_blobs[0]["step"]
        set_rng_state(resume_blobs[0]["rng"])

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    if args.track:
        try:
            import wandb
        except ImportError:
            fail("--track needs Weights & Biases: pip install wandb")
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_names[0], save_code=True, resume="allow", id=run_names[0])
    writers, eval_csvs = [], [run_dir / "evaluations.csv" for run_dir in run_dirs]
    for seed, run_dir, eval_csv in zip(seeds, run_dirs, eval_csvs):
        writers.append(SummaryWriter(str(run_dir), purge_step=step if step else None))
        hparams = vars(replace(args, seed=seed, num_seeds=1)) | {"trained_with_seeds": f"{seeds[0]}..{seeds[-1]}"}
        writers[-1].add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hparams.items()))
        rows = []
        if step and eval_csv.exists():  # keep the rows up to the checkpoint: later ones are about to be redone
            with open(eval_csv) as f:
                rows = [list(r.values()) for r in csv.DictReader(f) if int(r["step"]) <= step]
        write_csv(eval_csv, [["step", "mean_return", "std_return", "normalized_score", "episodes", "final"], *rows], "w")

    print(f"run{'s' * (len(seeds) > 1)} {', '.join(run_names)} on {device}: {num_transitions} transitions from "
          f"{dataset.spec.dataset_id}, rewards: {reward_mode}, normalised score from {ref_source}"
          + (f"; dataset presets applied: {', '.join(presets)}" if presets else ""))
    last_score = "-"  # the progress bar's score: the mean over seeds of the last evaluation, none yet
    watch = NonFiniteWatch(IQL.LOSS_NAMES, args.num_seeds, step, device)

    def check_finite() -> None:
        if watch.first_bad_step.item() >= 0:
            bad = watch.bad_losses.tolist()
            names = [f"{n} of seed {seed}" for n, row in zip(IQL.LOSS_NAMES, bad) for seed, b in zip(seeds, row) if b]
            kept = "the last good checkpoints are kept" if checkpoint_paths[0].exists() else "no checkpoint was written"
            print(f"error: non-finite {', '.join(names)} at step {watch.first_bad_step.item()}; stopping ({kept})",
                  file=sys.stderr)
            sys.exit(1)

    bar = tqdm(total=args.total_timesteps, initial=step, desc=ALGO, unit="step", dynamic_ncols=True, mininterval=1.0)

    train_step = make_train_step(agent, args, device, sample_batch, watch)
    start_time, start_step, eval_seconds = time.time(), step, 0.0
    try:
        while step < args.total_timesteps:
            # --steps-per-replay steps per call, never past the next log, evaluation or the last step
            n = min(args.log_freq - step % args.log_freq, args.eval_freq - step % args.eval_freq, args.total_timesteps - step)
            n = args.steps_per_replay if n >= args.steps_per_replay else 1
            metrics = train_step(*[()] * n)  # n steps, none with a phase argument
            step += n
            bar.update(n)

            if step % args.log_freq == 0 or step == args.total_timesteps:
                check_finite()
                sps = (step - start_step) / max(time.time() - start_time, 1e-9)
                values = torch.stack(list(metrics.values())).tolist()  # one read back for every (metric, seed)
                for key, per_seed in zip(metrics, values):
                    for writer, value in zip(writers, per_seed):
                        writer.add_scalar(key, value, step)
                for writer in writers:
                    writer.add_scalar("charts/SPS", sps, step)
                bar.set_postfix(SPS=f"{sps:.1f}", score=last_score)
            if step % args.eval_freq == 0 or step == args.total_timesteps:
                check_finite()
                eval_start = time.time()
                final = step == args.total_timesteps  # the last evaluation is the long one that tables report
                num_episodes = args.final_eval_episodes if final else args.eval_episodes
                returns = evaluate(agent.act, eval_envs, args.num_seeds, num_episodes, [seed + step for seed in seeds],
                                   action_low, action_high, device)  # (S, episodes)
                mean_returns = returns.mean(1)
                scores = 100 * (mean_returns - ref_min) / (ref_max - ref_min) if ref_min is not None else mean_returns
                for s, writer in enumerate(writers):
                    writer.add_scalar("eval/return", mean_returns[s], step)
                    if ref_min is not None:
                        writer.add_scalar("eval/normalized_score", scores[s], step)
                    write_csv(eval_csvs[s], [[step, f"{mean_returns[s]:.4f}", f"{returns[s].std():.4f}",
                                              "" if ref_min is None else f"{scores[s]:.4f}", num_episodes, int(final)]], "a")
                last_score = f"{float(scores.mean()):.1f}"
                if len(seeds) == 1:
                    tqdm.write(f"step {step}: return {mean_returns[0]:.1f} +- {returns[0].std():.1f} over {num_episodes} "
                               f"episodes" + (f", normalised score {scores[0]:.1f}" if ref_min is not None else ""))
                else:
                    tqdm.write(f"step {step}: {'normalised score' if ref_min is not None else 'return'} of seeds "
                               f"{seeds[0]}..{seeds[-1]}: {', '.join(f'{v:.1f}' for v in scores)} over {num_episodes} episodes")
                if args.save_model:
                    save_checkpoints(run_dirs, run_names, agent, step, args)
                eval_seconds += time.time() - eval_start
    except KeyboardInterrupt:
        take_the_stop()
        bar.close()
        end_eval_envs(eval_envs)  # first: a non-finite loss found below exits at once
        check_finite()
        save_checkpoints(run_dirs, run_names, agent, step, args)
        print(f"\ninterrupted at step {step}; saved {', '.join(map(str, checkpoint_paths))}; "
              f"continue with --resume {checkpoint_paths[0]}")
        sys.exit(130)
    take_the_stop()  # training is over: a stop while the logs and envs close would change nothing
    bar.close()
    for writer in writers:
        writer.close()
    eval_envs.close()
    wall = time.time() - start_time
    print(f"done: {step} steps in {', '.join(map(str, run_dirs))}" + ("; checkpoints saved" if args.save_model else "")
          + f"; evaluation took {100 * eval_seconds / max(wall, 1e-9):.0f}% of the {wall:.0f} s")


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except KeyboardInterrupt:  # a stop in the training loop saves a checkpoint there; this one came before the loop
        take_the_stop()
        print("interrupted before training began; nothing was trained", file=sys.stderr)
        sys.exit(130)
