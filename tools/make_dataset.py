"""Build D4RL-protocol offline datasets on the Gymnasium MuJoCo v5 envs as Minari datasets (no network, no jax).

    python tools/make_dataset.py walker2d-medium            # 1M steps, into $MINARI_DATASETS_PATH
    python tools/make_dataset.py hopper-random --num-steps 5000 --dataset-id test/hopper/random-v0
    python tools/make_dataset.py --list                     # what can be built, what is built, sizes

NAME is ENV-KIND with ENV in halfcheetah, hopper, walker2d and KIND one of
- random:        1M steps of a randomly initialised policy;
- medium:        1M steps of the shipped SAC policy stopped at D4RL's medium level (tools/behavior_policies);
- medium-replay: every transition of that SAC run up to the medium point (shipped, compressed);
- expert:        1M steps of the shipped expert SAC policy (docs/datasets.md says how far each was trained);
- medium-expert: the medium and expert datasets concatenated (built first if missing).
Actions are sampled from the stochastic policy, as D4RL did, in arithmetic that every CPU rounds alike, so a name
and seed give the same data on every machine (for one MuJoCo version). A fall (Hopper, Walker2d) is a termination, the
1000-step limit a truncation, and the episodes still running when the step budget is reached are cut as truncations.
Each dataset carries D4RL's reference returns, so normalised scores read on the papers' scale.
These are D4RL-protocol datasets on v5 envs, not D4RL itself: docs/datasets.md lists the differences.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

try:
    import fcntl  # the build lock (POSIX only)
except ImportError:
    fcntl = None

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_behavior import (DEFAULT_OUT_DIR, ENVS, Actor, load_actor, stop_on_the_first_signal,  # noqa: E402
                            take_the_stop)

TOOL_VERSION = "2.0"  # 2.0: the machine-independent sampler; 1.0 builds differ from machine to machine
NAMESPACE = "misa-pytorch"  # project-owned; never Farama's mujoco/ or D4RL/
KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
NAMES = tuple(f"{env}-{kind}" for env in ENVS for kind in KINDS)


@dataclass
class Args:
    name: tyro.conf.Positional[Optional[str]] = None
    """the dataset to build, ENV-KIND (e.g. walker2d-medium); see --list"""
    num_steps: Optional[int] = None
    ("environment steps to collect (default 1M, D4RL's size; medium-replay: the whole shipped buffer; medium-expert: "
     "this many for each part)")
    dataset_id: Optional[str] = None
    """Minari id to write (default misa-pytorch/ENV/KIND-v0)"""
    seed: int = 0
    """seed of the policy's action noise and of the env resets"""
    num_envs: int = 16
    """envs stepped in lockstep so the policy runs on one batch per step"""
    workers: Optional[int] = None
    ("processes that step the envs, each a group of them (gymnasium's AsyncVectorEnv); 1 steps them all in this "
     "process; default: the CPU cores this process may use where there are 4 or more, else 1 (on 2 cores the messages "
     "cost more than the second core gains: docs/datasets.md). The data are the same for any number")
    policies_dir: str = str(DEFAULT_OUT_DIR)
    """where the behaviour policies and medium-replay buffers are read from"""
    overwrite: bool = False
    """replace the dataset if it already exists"""
    list: bool = False
    """list every dataset name, whether it can be built here, and whether (and how big) it is built"""


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def available_workers(requested: Optional[int]) -> int:
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores >= 4 else 1


def default_id(name: str) -> str:
    env, kind = name.split("-", 1)
    return f"{NAMESPACE}/{env}/{kind}-v0"


def datasets_root() -> Path:
    from minari.storage.datasets_root_dir import get_dataset_path

    return get_dataset_path()


@contextlib.contextmanager
def build_lock(dataset_id: str):
    """Hold an exclusive lock on building `dataset_id` (a hidden file beside it, which Minari's listing skips).

    Several runs of one dataset started together (benchmark.py --workers N) each build it on first use; unlocked, the
    later builder deleted the first one's files while that run was opening them. Whoever comes second waits here and
    then finds the dataset built. Yields whether it had to wait."""
    namespace, _, leaf = dataset_id.rpartition("/")
    lock_path = datasets_root() / namespace / f".{leaf}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    with open(lock_path, "a") as lock_file:
        if fcntl is not None:  # POSIX; elsewhere concurrent builds of one dataset stay the user's to avoid
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"another process is building {dataset_id}; waiting for it to finish", flush=True)
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                waited = True
            except OSError:  # a filesystem without locks (some network mounts): build unlocked rather than not at all
                pass
        yield waited  # closing the file releases the lock, also when the build fails or is interrupted


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def source_file(name: str, policies_dir: Path) -> Optional[Path]:
    """The shipped file a dataset is made from (None for random, which needs nothing)."""
    env, kind = name.split("-", 1)
    return {"random": None, "medium": policies_dir / f"{env}-medium.pt",
            "medium-replay": policies_dir / f"{env}-medium-replay.npz", "expert": policies_dir / f"{env}-expert.pt",
            "medium-expert": policies_dir / f"{env}-expert.pt"}[kind]


def policy_scores(name: str, manifest: dict) -> str:
    """The normalised evaluation score of the behaviour policies a dataset is collected with, from the manifest."""
    env, kind = name.split("-", 1)
    parts = {"medium": ["medium"], "expert": ["expert"], "medium-expert": ["medium", "expert"]}.get(kind, [])
    scores = [manifest.get(f"{env}-{part}", {}).get("eval_normalized_score") for part in parts]
    return " & ".join("?" if score is None else f"{score:.1f}" for score in scores) or "-"


def builder_version(metadata: dict) -> str:
    """The make_dataset.py version named in a built dataset's description ("?" if another tool wrote it)."""
    match = re.search(r"Built by tools/make_dataset\.py (\S+) \(misa-pytorch\)", metadata.get("description", ""))
    return match.group(1) if match else "?"


def list_datasets(policies_dir: Path) -> None:
    root = datasets_root()
    manifest_path = policies_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    print(f"datasets root: {root}  (set MINARI_DATASETS_PATH to change it)")
    print(f"{'name':26s} {'minari id':43s} {'buildable':38s} {'policy eval':>11s} {'built':>14s} {'size':>10s} "
          f"{'builder':>7s}")
    for name in NAMES:
        src = source_file(name, policies_dir)
        buildable = "yes" if src is None or src.exists() else f"no ({src.name} missing)"
        path = root / default_id(name)
        if (path / "data" / "metadata.json").exists():
            metadata = json.loads((path / "data" / "metadata.json").read_text())
            built, size = f"{metadata.get('total_steps', '?')} steps", f"{dir_size(path) / 2**20:.1f} MiB"
            version = builder_version(metadata)
        else:
            built, size, version = "-", "-", "-"
        print(f"{name:26s} {default_id(name):43s} {buildable:38s} {policy_scores(name, manifest):>11s} {built:>14s} "
              f"{size:>10s} {version:>7s}")
    print("policy eval: normalised score (D4RL scale) of the deterministic behaviour policy in its 10-episode evaluation"
          " (tools/behavior_policies/manifest.json); the data, sampled from it, scores lower")
    print(f"builder: the make_dataset.py version that built it; builds older than 2.0 differ from machine to machine, "
          f"so rebuild them with --overwrite to get the data every machine gets")


class EnvGroup(gym.Env):
    """Envs `first .. first + size - 1` of the build, stepped one after another, seen from outside as one env with
    stacked spaces: the unit that gymnasium's AsyncVectorEnv runs in each worker process, so that one message per
    worker steps a whole group (one process per env costs more in messages than it gains on a few cores).
    step() carries the per-env rewards and flags in its info; reset() takes the per-env seeds and the build-wide mask
    of envs to reset."""

    def __init__(self, env_id: str, first: int, size: int, builder_pid: int):
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        if os.getpid() != builder_pid:  # a worker process: Ctrl-C is the builder's to handle, and it ends the workers
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the builder's handler, inherited through fork
        self.envs = SyncVectorEnv([lambda: gym.make(env_id)] * size, autoreset_mode=AutoresetMode.DISABLED)
        self.observation_space, self.action_space = self.envs.observation_space, self.envs.action_space
        self.first, self.size = first, size

    def reset(self, *, seed: Optional[list] = None, options: Optional[dict] = None):
        mask = options["reset_mask_all"][self.first:self.first + self.size] if options else np.ones(self.size, bool)
        if mask.any():
            self.obs, _ = self.envs.reset(seed=seed, options={"reset_mask": mask})
        return self.obs, {}

    def step(self, actions: np.ndarray):
        self.obs, rewards, terminations, truncations, _ = self.envs.step(actions)
        return self.obs, 0.0, False, False, {"rewards": rewards, "terminations": terminations,
                                              "truncations": truncations}

    def close(self):
        self.envs.close()


def group_count(num_envs: int, workers: int) -> int:
    """The most equal-sized groups of envs, one per worker process, that `workers` processes can take."""
    return max(g for g in range(1, min(num_envs, workers) + 1) if num_envs % g == 0)


def random_actor(obs_dim: int, act_dim: int, hidden: int, seed: int) -> Actor:
    """An actor initialised as torch initialises nn.Linear (weights and biases uniform in +-1/sqrt(fan_in)), but
    drawn by numpy's PCG64: torch's own initialisers draw different numbers on different CPUs."""
    actor, rng = Actor(obs_dim, act_dim, hidden), np.random.Generator(np.random.PCG64(seed))
    with torch.no_grad():
        for layer in (m for m in actor.modules() if isinstance(m, torch.nn.Linear)):
            bound = 1.0 / math.sqrt(layer.in_features)
            for param in (layer.weight, layer.bias):
                param.copy_(torch.from_numpy(rng.uniform(-bound, bound, tuple(param.shape))))
    return actor


class MachineIndependentSampler:
    """The actor's `sample` (tanh of a Gaussian around the MLP's mean, log-std clamped to [-5, 2]) in float64 numpy
    arithmetic that gives the same bits on every CPU. torch's float32 products and vector kernels choose their
    summation order and approximations by CPU (AVX2 or AVX-512), and falls amplify one last-bit difference into
    different episodes: the torch sampler built walker2d-medium with 1,323 episodes on an AMD EPYC and 1,365 on an Intel
    Xeon (docs/datasets.md). Here each layer's inputs and weights are rounded to integers times a power of two (about
    float32's precision), so every product and partial sum of a matrix product is an integer below 2**53, which float64
    holds exactly: the order in which BLAS sums them cannot change the result. exp and tanh come from the C library one
    value at a time, and the noise from numpy's PCG64 generator. The actions are rounded to float32, as stored."""

    def __init__(self, actor: Actor, seed: int):
        w = {k: v.detach().double().numpy() for k, v in actor.state_dict().items()}
        self.hidden = [self.layer(w[f"net.{i}.weight"], w[f"net.{i}.bias"]) for i in (0, 2)]
        self.head = self.layer(np.concatenate([w["mean.weight"], w["log_std.weight"]]),
                               np.concatenate([w["mean.bias"], w["log_std.bias"]]))
        self.act_dim = w["mean.bias"].shape[0]
        self.rng = np.random.Generator(np.random.PCG64(seed))

    @staticmethod
    def to_integers(rows: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(q, shift) with rows ~= q * 2**-shift row by row, q integers (held in float64) of at most `bits` bits."""
        _, exponent = np.frexp(np.abs(rows).max(axis=1))  # every entry of a row is below 2**exponent in size
        shift = bits - exponent
        return np.rint(np.ldexp(rows, shift[:, None])), shift

    @classmethod
    def layer(cls, weight: np.ndarray, bias: np.ndarray) -> tuple:
        # two `bits`-bit integers multiply to 2 * bits bits; summing `inputs` of them adds log2(inputs) bits
        bits = (52 - math.ceil(math.log2(weight.shape[1]))) // 2
        return (*cls.to_integers(weight, bits), bias, bits)

    @classmethod
    def linear(cls, x: np.ndarray, layer: tuple) -> np.ndarray:
        weight, weight_shift, bias, bits = layer
        x, x_shift = cls.to_integers(x, bits)
        return np.ldexp(x @ weight.T, -(x_shift[:, None] + weight_shift[None, :])) + bias

    def sample(self, obs: np.ndarray) -> np.ndarray:
        h = np.asarray(obs, dtype=np.float64)
        for layer in self.hidden:
            h = np.maximum(self.linear(h, layer), 0.0)
        out = self.linear(h, self.head)
        mean, log_std = out[:, :self.act_dim], np.clip(out[:, self.act_dim:], -5.0, 2.0)
        std = np.array([math.exp(v) for v in log_std.ravel()]).reshape(log_std.shape)
        u = mean + std * self.rng.standard_normal(mean.shape)
        return np.array([math.tanh(v) for v in u.ravel()]).reshape(u.shape).astype(np.float32)


def collect(env_id: str, policy: Actor, num_steps: int, seed: int, num_envs: int, workers: int, desc: str):
    """Step `num_envs` envs in lockstep with stochastic policy actions until `num_steps` transitions exist.
    The envs are split into equal groups, one per worker process (gymnasium's AsyncVectorEnv), or form one group
    stepped in this process (SyncVectorEnv) with workers = 1; the data are the same either way. Returns EpisodeBuffers
    in the order the episodes finished (env index order within a step); episodes still running at the end are
    truncated."""
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
    from minari.data_collector import EpisodeBuffer

    def new_episode(first_obs):
        return {"obs": [first_obs], "act": [], "rew": [], "term": [], "trunc": []}

    def close(ep):
        episodes.append(EpisodeBuffer(observations=np.array(ep["obs"]), actions=np.array(ep["act"], np.float32),
                                      rewards=np.array(ep["rew"]), terminations=np.array(ep["term"]),
                                      truncations=np.array(ep["trunc"])))

    sampler = MachineIndependentSampler(policy, seed)
    groups = group_count(num_envs, workers)
    size = num_envs // groups
    make = [functools.partial(EnvGroup, env_id, g * size, size, os.getpid()) for g in range(groups)]
    # One group steps in this process; several step in worker processes. Either way the batch is (groups, size, ...).
    envs = (AsyncVectorEnv if groups > 1 else SyncVectorEnv)(make, autoreset_mode=AutoresetMode.DISABLED)

    def reset(seeds: list, mask: np.ndarray) -> np.ndarray:
        """Resets the envs in `mask` with their `seeds`; returns every env's current observation."""
        per_group = [seeds[g * size:(g + 1) * size] for g in range(groups)]
        return envs.reset(seed=per_group, options={"reset_mask_all": mask})[0].reshape(num_envs, -1)

    def step(actions: np.ndarray):
        obs, _, _, _, info = envs.step(actions.reshape(groups, size, -1))
        return (obs.reshape(num_envs, -1), *(info[k].reshape(num_envs) for k in ("rewards", "terminations",
                                                                                "truncations")))

    try:
        obs = reset([seed * 1_000_000 + i for i in range(num_envs)], np.ones(num_envs, dtype=bool))
        next_episode = num_envs
        current = [new_episode(o) for o in obs]
        episodes, steps = [], 0
        bar = tqdm(total=num_steps, desc=desc, unit="step", mininterval=2.0, smoothing=0.1)
        while steps < num_steps:
            actions = sampler.sample(obs)
            next_obs, rewards, terms, truncs = step(actions)
            finished, reset_seeds = np.zeros(num_envs, dtype=bool), [None] * num_envs
            for i in range(num_envs):
                if steps >= num_steps:  # the budget ends mid-step: the remaining envs' transitions are not kept
                    break
                ep = current[i]
                ep["obs"].append(next_obs[i])
                ep["act"].append(actions[i])
                ep["rew"].append(float(rewards[i]))
                ep["term"].append(bool(terms[i]))
                ep["trunc"].append(bool(truncs[i]))
                steps += 1
                if terms[i] or truncs[i]:
                    close(ep)
                    finished[i], reset_seeds[i] = True, seed * 1_000_000 + next_episode  # each episode its own seed
                    next_episode += 1
            if finished.any():
                next_obs = reset(reset_seeds, finished)
                for i in np.flatnonzero(finished):
                    current[i] = new_episode(next_obs[i])
            obs = next_obs
            bar.update(min(num_envs, bar.total - bar.n))
        bar.close()
    except BaseException:  # interrupted, perhaps mid-step: end the workers at once, without waiting on them
        take_the_stop()  # a stop now would cut the ending of the workers short
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                envs.close(terminate=True)
            except Exception:  # the stop cut a worker's reply in half, and close() failed to read the rest of it
                for process in getattr(envs, "processes", []):
                    process.terminate()
                    process.join()
                for pipe in getattr(envs, "parent_pipes", []):
                    pipe.close()
                envs.closed = True  # as close() would have set it; else gymnasium tries again, and fails again, at exit
        raise
    envs.close()
    for ep in current:  # cut at the budget, like D4RL's timeouts at 1M
        if ep["act"]:
            ep["trunc"][-1] = True
            close(ep)
    return episodes


def replay_episodes(path: Path, num_steps: Optional[int]):
    """Episodes of a shipped SAC replay buffer (see Replay.episodes_npz in train_behavior.py)."""
    from minari.data_collector import EpisodeBuffer

    d = np.load(path)
    episodes, step, row = [], 0, 0
    for full_length in d["episode_lengths"].astype(int):
        length = full_length if num_steps is None else min(full_length, num_steps - step)
        if length <= 0:
            break
        trunc = d["truncations"][step:step + length].copy()
        term = d["terminations"][step:step + length]
        if not (term[-1] or trunc[-1]):
            trunc[-1] = True  # cut short by --num-steps
        episodes.append(EpisodeBuffer(observations=d["observations"][row:row + length + 1].astype(np.float64),
                                      actions=d["actions"][step:step + length], rewards=d["rewards"][step:step + length],
                                      terminations=term, truncations=trunc))
        row += full_length + 1  # each episode holds T + 1 observations
        step += length
    return episodes


def load_episodes(dataset_id: str):
    import minari
    from minari.data_collector import EpisodeBuffer

    ds = minari.load_dataset(dataset_id)
    return [EpisodeBuffer(observations=ep.observations, actions=ep.actions, rewards=ep.rewards,
                          terminations=ep.terminations, truncations=ep.truncations) for ep in ds.iterate_episodes()]


def build(name: str, args: Args, dataset_id: str) -> None:
    import minari

    env, kind = name.split("-", 1)
    env_id, ref_min, ref_max = ENVS[env]
    policies_dir = Path(args.policies_dir)
    num_steps = args.num_steps if args.num_steps is not None else (None if kind == "medium-replay" else 1_000_000)
    start = time.time()
    if kind == "random":
        probe = gym.make(env_id)
        policy = random_actor(probe.observation_space.shape[0], probe.action_space.shape[0], 256, args.seed)
        how = f"a randomly initialised tanh-Gaussian policy (numpy PCG64 seed {args.seed})"
        print(f"building {dataset_id}: {num_steps} steps of {how} on {env_id}; a 1M-step build takes a few minutes")
        episodes = collect(env_id, policy, num_steps, args.seed, args.num_envs, available_workers(args.workers), name)
    elif kind in ("medium", "expert"):
        path = source_file(name, policies_dir)
        if not path.exists():
            fail(f"{name} needs the behaviour policy {path}, which is missing; train it with "
                 f"`python tools/train_behavior.py {env} --role {kind}`")
        policy, meta = load_actor(path)
        how = (f"the SAC policy {path.name} (SAC step {meta['sac_steps']}, seed {meta['seed']}, evaluation return "
               f"{meta['eval_return_mean']:.1f} +- {meta['eval_return_std']:.1f})")
        print(f"building {dataset_id}: {num_steps} steps of {how} on {env_id}; a 1M-step build takes a few minutes")
        episodes = collect(env_id, policy, num_steps, args.seed, args.num_envs, available_workers(args.workers), name)
    elif kind == "medium-replay":
        path = source_file(name, policies_dir)
        if not path.exists():
            fail(f"{name} needs the replay buffer {path}, which is missing; it is written by "
                 f"`python tools/train_behavior.py {env} --role medium`")
        how = f"the replay buffer of the SAC run that produced {env}-medium.pt ({path.name})"
        print(f"building {dataset_id} from {how}")
        episodes = replay_episodes(path, num_steps)
    else:  # medium-expert: the two parts, concatenated
        parts = []
        for part in ("medium", "expert"):
            part_id = dataset_id.replace("medium-expert", part) if "medium-expert" in dataset_id else default_id(f"{env}-{part}")
            meta_path = datasets_root() / part_id / "data" / "metadata.json"
            with build_lock(part_id):  # another process may be building this part on its own
                if not meta_path.exists():
                    print(f"{name} needs {part_id}: building it first")
                    build(f"{env}-{part}", Args(**{**vars(args), "dataset_id": part_id, "overwrite": False}), part_id)
            if (version := builder_version(json.loads(meta_path.read_text()))) != TOOL_VERSION:
                fail(f"{part_id} was built by make_dataset.py {version}, whose data differ from machine to machine; "
                     f"rebuild it first: python tools/make_dataset.py {env}-{part} --overwrite")
            parts.append(part_id)
        episodes = load_episodes(parts[0]) + load_episodes(parts[1])
        how = f"the concatenation of {parts[0]} and {parts[1]}"
        print(f"building {dataset_id} from {how}")
    steps = sum(len(ep.rewards) for ep in episodes)
    returns = np.array([float(np.sum(ep.rewards)) for ep in episodes])
    sampling = {"medium-replay": "Actions and resets as that SAC run took them.",
                "medium-expert": "Actions and resets as in its two parts."}.get(
        kind, f"Actions sampled from the stochastic policy (numpy PCG64 noise, seed {args.seed}; float64 arithmetic "
              f"that every CPU rounds alike); env reset seeds {args.seed}*1e6 + episode index.")
    description = (f"D4RL-protocol {kind} dataset on {env_id} (not D4RL itself): {how}. {steps} steps, "
                   f"{len(episodes)} episodes, mean episode return {returns.mean():.1f}. {sampling} "
                   f"Built by tools/make_dataset.py {TOOL_VERSION} (misa-pytorch).")
    # Minari writes to $MINARI_DATASETS_PATH/<id>/. Pointed at a hidden staging root beside the real one (its listing
    # skips hidden folders), it writes there, and one rename moves the finished dataset into place: a run starting
    # meanwhile never finds a half-written dataset, and a failed or interrupted write leaves nothing behind.
    root, root_setting = datasets_root(), os.environ.get("MINARI_DATASETS_PATH")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.environ["MINARI_DATASETS_PATH"] = str(staging)
            try:
                minari.create_dataset_from_buffers(
                    dataset_id, buffer=episodes, env=gym.spec(env_id), eval_env=gym.spec(env_id),
                    algorithm_name=f"SAC behaviour policy ({kind})" if kind != "random" else "random policy",
                    author="misa-pytorch", author_email="none", code_permalink="tools/make_dataset.py",
                    ref_min_score=ref_min, ref_max_score=ref_max, description=description,
                    requirements=[f"gymnasium=={gym.__version__}"],
                )
            finally:
                if root_setting is None:
                    del os.environ["MINARI_DATASETS_PATH"]
                else:
                    os.environ["MINARI_DATASETS_PATH"] = root_setting
        shutil.rmtree(root / dataset_id, ignore_errors=True)  # --overwrite: the old one goes only now
        (root / dataset_id).parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / dataset_id, root / dataset_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    normalized = 100 * (returns.mean() - ref_min) / (ref_max - ref_min)
    print(f"wrote {dataset_id}: {steps} steps, {len(episodes)} episodes, mean return {returns.mean():.1f} "
          f"(normalised {normalized:.1f}), {time.time() - start:.1f} s")


def main(args: Args) -> None:
    if args.list:
        list_datasets(Path(args.policies_dir))
        return
    if args.name is None:
        fail("give a dataset NAME (see --list)")
    if args.name not in NAMES:
        fail(f"unknown dataset name {args.name!r}; valid names: {', '.join(NAMES)}")
    if args.num_steps is not None and args.num_steps < 1:
        fail(f"--num-steps must be an integer >= 1, got {args.num_steps}")
    if args.num_envs < 1:
        fail(f"--num-envs must be an integer >= 1, got {args.num_envs}")
    if args.workers is not None and args.workers < 1:
        fail(f"--workers must be an integer >= 1, got {args.workers}")
    dataset_id = args.dataset_id or default_id(args.name)
    if dataset_id.split("/")[0] in ("mujoco", "D4RL"):
        fail(f"--dataset-id {dataset_id}: the mujoco/ and D4RL/ namespaces are Farama's; use your own")
    path = datasets_root() / dataset_id
    torch.set_num_threads(1)
    stop_on_the_first_signal()  # a kill stops the build as Ctrl-C does
    try:
        with build_lock(dataset_id) as waited:
            if (path / "data").exists() and not args.overwrite:
                print(f"{dataset_id} was built by that process at {path}" if waited else
                      f"{dataset_id} already exists at {path} (use --overwrite to rebuild)")
                return
            build(args.name, args, dataset_id)
    except KeyboardInterrupt:
        take_the_stop()
        print(f"\ninterrupted: {dataset_id} was not built, and nothing half-built was kept; run the same command "
              f"again to build it", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main(tyro.cli(Args))
