"""Train the behaviour policies that the D4RL-protocol datasets are collected with (online SAC).

    python tools/train_behavior.py hopper --role medium      # stops once eval reaches the medium level
    python tools/train_behavior.py walker2d --role expert    # trains for --total-steps (1M by default)
    python tools/train_behavior.py hopper --role medium --resume   # continue an interrupted run

SAC (Haarnoja et al. 2018, with automatic entropy tuning) on the Gymnasium MuJoCo ``*-v5`` envs. Twin critics are
stacked in one module and evaluated in one batched call. Every ``--eval-every`` steps the deterministic policy is
evaluated on ``--eval-episodes`` episodes and the actor snapshot is kept under the run directory with its return.

The outputs that datasets are built from go to ``--out-dir`` (``tools/behavior_policies`` by default):
- ``<env>-<role>.pt``: the actor weights and how they were made;
- ``<env>-medium-replay.npz`` (medium role only): every transition the run collected up to the medium point, which is
  exactly D4RL's medium-replay recipe;
- ``manifest.json``: env, SAC steps, measured evaluation return +- std, seed and the command that reproduces it.

The whole run (networks, optimisers, replay buffer, RNG states) is checkpointed at episode ends every
``--checkpoint-every`` steps and on Ctrl-C, and ``--resume`` continues it.

On CUDA, minibatches are drawn from a copy of the replay buffer on the GPU and each update is replayed from a CUDA
graph (``--cuda-graphs``): about 580 env steps/s on an H100, against about 50 on one CPU core (docs/datasets.md).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

# Gymnasium env ids and the D4RL reference returns (random, expert) used for normalised scores.
ENVS = {
    "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
    "hopper": ("Hopper-v5", -20.272305, 3234.3),
    "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
}
# Normalised evaluation score at which a medium run stops: D4RL's medium level (about a third of expert).
MEDIUM_TARGET = {"halfcheetah": 40.0, "hopper": 50.0, "walker2d": 65.0}
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "behavior_policies"


@dataclass
class Args:
    env: tyro.conf.Positional[Literal["halfcheetah", "hopper", "walker2d"]]
    """which locomotion env to train on (HalfCheetah-v5, Hopper-v5 or Walker2d-v5)"""
    role: Literal["medium", "expert"] = "medium"
    """medium: stop at the first evaluation whose normalised score reaches --target-score; expert: train to --total-steps"""
    seed: int = 0
    """seed of torch, numpy, python and the envs"""
    total_steps: int = 1_000_000
    """maximum number of environment steps (one gradient update per step after --learning-starts)"""
    target_score: Optional[float] = None
    """medium role: normalised score that ends the run (default: halfcheetah 40, hopper 50, walker2d 65)"""
    learning_starts: int = 5_000
    """steps of uniformly random actions before learning starts"""
    batch_size: int = 256
    """minibatch size of each SAC update"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    policy_lr: float = 3e-4
    """actor learning rate"""
    q_lr: float = 1e-3
    """critic learning rate"""
    alpha_lr: float = 3e-4
    """entropy temperature learning rate (target entropy is -dim(A))"""
    hidden_dim: int = 256
    """width of the two hidden layers of the actor and critics"""
    eval_every: int = 5_000
    """evaluate (and keep an actor snapshot) every this many steps"""
    eval_episodes: int = 10
    """deterministic evaluation episodes per evaluation"""
    checkpoint_every: int = 25_000
    """checkpoint the whole run at the first episode end after every this many steps"""
    run_dir: Optional[str] = None
    """where checkpoints, snapshots and evals.csv go (default runs/behavior/<env>-<role>-s<seed>)"""
    out_dir: str = str(DEFAULT_OUT_DIR)
    """where the final actor, the medium-replay buffer and manifest.json are written"""
    resume: bool = False
    """continue from <run-dir>/checkpoint.pt"""
    ship_step: Optional[int] = None
    ("train nothing: ship the actor snapshot evaluated at this step of the finished run in --run-dir (and, for the "
     "medium role, the replay buffer up to that step), e.g. when the run's stopping evaluation overshot the level")
    threads: int = 1
    """torch CPU threads (1 is fastest for these small networks and lets two runs share 2 cores)"""
    cuda: bool = True
    """use CUDA when it is available"""
    cuda_graphs: bool = True
    ("on CUDA: keep a copy of the replay buffer on the GPU, draw minibatches there and replay each SAC update from a "
     "CUDA graph (fused, capturable Adam), which removes the per-update launch overhead; ignored on CPU")


# ----------------------------------------------------------------------------------------------------------------------
# Networks
class TwinCritic(nn.Module):
    """Two Q-networks stored as stacked weights and evaluated with batched matmuls: returns (2, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, num_q: int = 2):
        super().__init__()
        dims = [obs_dim + act_dim, hidden, hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            w = torch.empty(num_q, fan_in, fan_out)
            for q in range(num_q):  # the same init nn.Linear uses, per member
                nn.init.kaiming_uniform_(w[q].T, a=math.sqrt(5))
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(num_q, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(len(self.weights[0]), -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = F.relu(x)
        return x.squeeze(-1)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy. make_dataset.py loads these weights, so keep the layout stable."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, act_dim)
        self.log_std = nn.Linear(hidden, act_dim)

    def dist(self, obs: torch.Tensor):
        h = self.net(obs)
        return self.mean(h), self.log_std(h).clamp(-5.0, 2.0)

    def sample(self, obs: torch.Tensor):
        mean, log_std = self.dist(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        # log N(u) - log|d tanh(u)/du|, with the stable form log(1-tanh^2 u) = 2(log2 - u - softplus(-2u)).
        log_prob = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), log_prob

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool, device: torch.device) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=device)
        a = torch.tanh(self.dist(o)[0]) if deterministic else self.sample(o)[0]
        return a.cpu().numpy()


def load_actor(path: str | Path, device: str = "cpu") -> tuple[Actor, dict]:
    """Load an actor written by this tool; returns the module and its metadata."""
    blob = torch.load(path, map_location=device, weights_only=False)
    actor = Actor(blob["obs_dim"], blob["act_dim"], blob["hidden_dim"]).to(device)
    actor.load_state_dict(blob["state_dict"])
    return actor.eval(), blob


def normalized(env: str, ret: float) -> float:
    _, lo, hi = ENVS[env]
    return 100.0 * (ret - lo) / (hi - lo)


def evaluate(policy, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Run `episodes` episodes in lockstep so the policy sees one batch per step; returns the episode returns."""
    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    returns = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    while alive.any():
        actions = policy(obs)
        for i in np.flatnonzero(alive):
            obs[i], r, term, trunc, _ = envs[i].step(actions[i])
            returns[i] += r
            alive[i] = not (term or trunc)
    for e in envs:
        e.close()
    return returns


# ----------------------------------------------------------------------------------------------------------------------
class Replay:
    """Flat transition store. It also records the episode stream (with the obs that ends each episode), which is
    what the medium-replay dataset is rebuilt from. With `mirror_device`, every transition is also written as one
    packed row to a tensor on that device, so that minibatches are drawn there (`sample_on_device`) without a copy."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, mirror_device: Optional[torch.device] = None):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminations = np.zeros(capacity, bool)
        self.truncations = np.zeros(capacity, bool)
        self.size = 0
        self.row_split = [obs_dim, act_dim, 1, obs_dim, 1]  # obs | action | reward | next obs | termination
        self.mirror = None
        if mirror_device is not None:
            self.mirror = torch.zeros(capacity, sum(self.row_split), device=mirror_device)
            self.size_on_device = torch.zeros((), device=mirror_device)  # read by captured graphs, so kept in place

    def add(self, obs, act, rew, next_obs, term, trunc):
        i = self.size
        self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i] = obs, act, rew, next_obs
        self.terminations[i], self.truncations[i] = term, trunc
        self.size += 1
        if self.mirror is not None:
            self.mirror[i].copy_(torch.from_numpy(self.packed_rows(i, i + 1)[0]))
            self.size_on_device.fill_(self.size)

    def packed_rows(self, start: int, stop: int) -> np.ndarray:
        sl = slice(start, stop)
        return np.concatenate([self.obs[sl], self.actions[sl], self.rewards[sl, None], self.next_obs[sl],
                               self.terminations[sl, None]], axis=1, dtype=np.float32)

    def sample_on_device(self, n: int):
        """Uniform minibatch drawn on the mirror's device with no host sync (capturable in a CUDA graph)."""
        idx = (torch.rand(n, device=self.mirror.device) * self.size_on_device).long()
        obs, act, rew, next_obs, term = self.mirror[idx].split(self.row_split, dim=1)
        return obs, act, rew.squeeze(1), next_obs, term.squeeze(1)

    def sample(self, n: int, device: torch.device):
        idx = np.random.randint(0, self.size, n)
        to = lambda x: torch.as_tensor(x[idx], device=device)  # noqa: E731
        return to(self.obs), to(self.actions), to(self.rewards), to(self.next_obs), to(self.terminations).float()

    def state(self) -> dict:
        n = self.size
        return {k: getattr(self, k)[:n].copy() for k in ("obs", "next_obs", "actions", "rewards", "terminations", "truncations")}

    def load(self, state: dict):
        n = len(state["rewards"])
        for k, v in state.items():
            getattr(self, k)[:n] = v
        self.size = n
        if self.mirror is not None:
            self.mirror[:n] = torch.from_numpy(self.packed_rows(0, n))
            self.size_on_device.fill_(n)

    def episodes_npz(self, path: Path):
        """Write the transitions as whole episodes; an episode still running at the end is closed as truncated."""
        n = self.size
        ends = self.terminations[:n] | self.truncations[:n]
        truncs = self.truncations[:n].copy()
        if n and not ends[-1]:
            truncs[-1] = True
            ends = ends.copy()
            ends[-1] = True
        end_idx = np.flatnonzero(ends)
        lengths = np.diff(np.concatenate([[-1], end_idx]))
        # observations per episode: obs[start..end] plus the next_obs of its last step (T+1 rows per episode)
        obs_rows = np.concatenate([self.obs[:n], self.next_obs[end_idx]])
        order = np.argsort(np.concatenate([np.arange(n), end_idx + 0.5]), kind="stable")
        np.savez_compressed(
            path, observations=obs_rows[order], actions=self.actions[:n], rewards=self.rewards[:n],
            terminations=self.terminations[:n], truncations=truncs, episode_lengths=lengths,
        )


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(s: dict):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def match_device_flags(opt: torch.optim.Optimizer, on_cuda: bool) -> None:
    """A loaded optimiser state carries the saving run's `capturable` and `fused` flags; set this device's. On CUDA
    the optimisers are fused (one kernel per step) and capturable (the step counters stay on the GPU, so a CUDA graph
    can advance them): the same arithmetic as the default implementation."""
    for group in opt.param_groups:
        group["capturable"], group["fused"] = on_cuda, (True if on_cuda else None)
        for p in group["params"]:
            state = opt.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(p.device if on_cuda else "cpu", torch.float32)


class CUDAGraphStep:
    """Replays `step_fn()` from a CUDA graph. The first `warmup` calls run eagerly on a side stream (real updates,
    which let autograd, cuBLAS and the optimisers allocate their state); the next call captures the graph. A replay
    reads and writes the very tensors the eager step used, so none of them may be reallocated."""

    def __init__(self, step_fn, warmup: int = 3):
        self.step_fn, self.warmup, self.graph, self.eager_calls = step_fn, warmup, None, 0
        self.side_stream = torch.cuda.Stream()

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.eager_calls < self.warmup:
            self.eager_calls += 1
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                self.step_fn()
            torch.cuda.current_stream().wait_stream(self.side_stream)
        else:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records the kernels without running them
                self.step_fn()
            self.graph.replay()


stop_taken = False  # set by the code that handles a stop, first thing (take_the_stop)
last_stop_raised = float("-inf")


def stop_once(signum, frame):
    # A Ctrl-C or SIGTERM stops the work by raising KeyboardInterrupt. Once the code that handles it has taken it, later
    # ones do nothing, so that none interrupts the cleanup (this trainer's checkpoint save, the dataset builder's ending
    # of its workers): a terminal's Ctrl-C and the SIGTERM that a parent passes on often both arrive. Nor do those in the
    # second after one is raised, while it travels to that code. A stop raised where Python swallows exceptions (a
    # weakref callback or a __del__, which print "Exception ignored") is thus not the last: the next Ctrl-C stops the
    # work. Not SIG_IGN: Python raises an error for a signal that arrives just before such a switch.
    global last_stop_raised
    if not stop_taken and time.monotonic() - last_stop_raised > 1.0:
        last_stop_raised = time.monotonic()
        raise KeyboardInterrupt


def take_the_stop() -> None:
    """Called first by the code that handles a stop (here and in make_dataset.py): later stops then do nothing."""
    global stop_taken
    stop_taken = True


def stop_on_the_first_signal() -> None:
    """Ctrl-C or SIGTERM (a kill, a preemption) raises KeyboardInterrupt (stop_once); also used by make_dataset.py."""
    signal.signal(signal.SIGTERM, stop_once)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a job started with Ctrl-C ignored keeps ignoring it
        signal.signal(signal.SIGINT, stop_once)


def main(args: Args):
    stop_on_the_first_signal()  # a kill or a preemption checkpoints like Ctrl-C
    if args.total_steps <= args.learning_starts:
        sys.exit(f"error: --total-steps ({args.total_steps}) must exceed --learning-starts ({args.learning_starts})")
    for flag in ("eval_every", "eval_episodes", "checkpoint_every", "batch_size", "hidden_dim", "threads"):
        if getattr(args, flag) < 1:
            sys.exit(f"error: --{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    env_id, _, _ = ENVS[args.env]
    target = args.target_score if args.target_score is not None else MEDIUM_TARGET[args.env]
    run_dir = Path(args.run_dir or f"runs/behavior/{args.env}-{args.role}-s{args.seed}")
    (run_dir / "actors").mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    env = gym.make(env_id)
    env.action_space.seed(args.seed)  # the random warm-up actions must be reproducible too
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor = Actor(obs_dim, act_dim, args.hidden_dim).to(device)
    critic = TwinCritic(obs_dim, act_dim, args.hidden_dim).to(device)
    critic_target = TwinCritic(obs_dim, act_dim, args.hidden_dim).to(device)
    critic_target.load_state_dict(critic.state_dict())
    log_alpha = torch.zeros((), device=device, requires_grad=True)
    on_cuda = device.type == "cuda"
    cuda_flags = dict(capturable=on_cuda, fused=on_cuda or None)  # see match_device_flags
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, **cuda_flags)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.q_lr, **cuda_flags)
    alpha_opt = torch.optim.Adam([log_alpha], lr=args.alpha_lr, **cuda_flags)
    target_entropy = -float(act_dim)
    replay = Replay(args.total_steps, obs_dim, act_dim, mirror_device=device if on_cuda else None)

    step, episode, history = 0, 0, []
    ckpt_path = run_dir / "checkpoint.pt"
    if args.resume:
        if not ckpt_path.exists():
            sys.exit(f"error: --resume given but {ckpt_path} does not exist")
        # on the CPU: the RNG states must stay there, and load_state_dict moves the rest to each module's device
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        for module, key in ((actor, "actor"), (critic, "critic"), (critic_target, "critic_target")):
            module.load_state_dict(ck[key])
        for opt, key in ((actor_opt, "actor_opt"), (critic_opt, "critic_opt"), (alpha_opt, "alpha_opt")):
            opt.load_state_dict(ck[key])
            match_device_flags(opt, on_cuda)
        with torch.no_grad():
            log_alpha.copy_(ck["log_alpha"])
        replay.load(ck["replay"])
        step, episode, history = ck["step"], ck["episode"], ck["history"]
        set_rng_state(ck["rng"])
        print(f"resumed {run_dir} at step {step} ({len(history)} evaluations so far)")

    def save_checkpoint():
        blob = {
            "actor": actor.state_dict(), "critic": critic.state_dict(), "critic_target": critic_target.state_dict(),
            "actor_opt": actor_opt.state_dict(), "critic_opt": critic_opt.state_dict(),
            "alpha_opt": alpha_opt.state_dict(), "log_alpha": log_alpha.detach().cpu(), "replay": replay.state(),
            "step": step, "episode": episode, "history": history, "rng": rng_state(), "args": asdict(args),
            "command": "python tools/train_behavior.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        }
        torch.save(blob, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)  # atomic: an interruption never leaves a broken checkpoint

    def update(o, a, r, o2, d):
        alpha = log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = actor.sample(o2)
            q_next = critic_target(o2, a2).min(0).values - alpha * logp2
            y = r + args.gamma * (1 - d) * q_next
        q_loss = F.mse_loss(critic(o, a), y.expand(2, -1)) * 2  # sum of the two critics' MSEs
        critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        critic_opt.step()
        a_pi, logp = actor.sample(o)
        pi_loss = (alpha * logp - critic(o, a_pi).min(0).values).mean()
        actor_opt.zero_grad(set_to_none=True)
        pi_loss.backward()
        actor_opt.step()
        alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
        alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        alpha_opt.step()
        with torch.no_grad():
            for p, tp in zip(critic.parameters(), critic_target.parameters()):
                tp.lerp_(p, args.tau)

    if not on_cuda:  # minibatches drawn with numpy's RNG: the CPU runs that made the shipped policies
        def train_step():
            update(*replay.sample(args.batch_size, device))
    else:
        def train_step():
            update(*replay.sample_on_device(args.batch_size))
        if args.cuda_graphs:
            train_step = CUDAGraphStep(train_step)

    def finish(kind: str, snapshot_step: int, returns: np.ndarray, cmd: Optional[str] = None):
        """Write the final actor, (medium) the replay buffer, and the manifest entry."""
        name = f"{args.env}-{args.role}"
        cmd = cmd or "python tools/train_behavior.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        blob = {
            "state_dict": {k: v.cpu() for k, v in actor.state_dict().items()}, "obs_dim": obs_dim,
            "act_dim": act_dim, "hidden_dim": args.hidden_dim, "env_id": env_id, "sac_steps": snapshot_step,
            "seed": args.seed, "eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std()),
        }
        torch.save(blob, out_dir / f"{name}.pt")
        entry = {
            "env_id": env_id, "role": args.role, "sac_steps": snapshot_step, "seed": args.seed,
            "eval_episodes": len(returns), "eval_return_mean": round(float(returns.mean()), 1),
            "eval_return_std": round(float(returns.std()), 1),
            "eval_normalized_score": round(normalized(args.env, float(returns.mean())), 1),
            "stopped_because": kind, "command": cmd, "file": f"{name}.pt",
        }
        if args.role == "medium":
            replay.episodes_npz(out_dir / f"{args.env}-medium-replay.npz")
            entry["replay_file"] = f"{args.env}-medium-replay.npz"
            entry["replay_steps"] = replay.size
        manifest_path = out_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        manifest[name] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out_dir / (name + '.pt')}: {entry}")

    if args.ship_step is not None:
        snapshot = run_dir / "actors" / f"step_{args.ship_step}.pt"
        if not args.resume or not snapshot.exists() or args.ship_step > replay.size:
            sys.exit(f"error: --ship-step needs --resume and a snapshot {snapshot} within the checkpoint's steps")
        snap = torch.load(snapshot, map_location=device, weights_only=False)
        actor.load_state_dict(snap["state_dict"])
        replay.size = args.ship_step  # the transitions collected up to the snapshot: the run's first ship_step
        train_cmd = ck.get("command", "python tools/train_behavior.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" if k != "env" else str(v) for k, v in ck["args"].items()
            if k in ("env", "role", "seed", "eval_every", "target_score", "total_steps") and v != getattr(Args, k, None)))
        ship_cmd = "python tools/train_behavior.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        finish(f"evaluated snapshot at step {args.ship_step}, picked after the run", args.ship_step,
               np.asarray(snap["returns"]), cmd=f"{train_cmd} && {ship_cmd}")
        return

    obs, _ = env.reset(seed=args.seed + 1000 * episode)
    ep_return, ep_len, checkpoint_due = 0.0, 0, False
    bar = tqdm(total=args.total_steps, initial=step, desc=f"SAC {args.env} {args.role}", unit="step", smoothing=0.05,
               mininterval=5)
    best = max((h["return_mean"] for h in history), default=float("-inf"))
    try:
        while step < args.total_steps:
            if step < args.learning_starts:
                action = env.action_space.sample()
            else:
                action = actor.act(obs[None], deterministic=False, device=device)[0]
            next_obs, reward, term, trunc, _ = env.step(action)
            replay.add(obs, action, reward, next_obs, term, trunc)
            obs, ep_return, ep_len, step = next_obs, ep_return + reward, ep_len + 1, step + 1
            if step >= args.learning_starts:
                train_step()
            if term or trunc:
                episode += 1
                bar.set_postfix(ep_return=f"{ep_return:.0f}", best_eval=f"{best:.0f}")
                obs, _ = env.reset(seed=args.seed + 1000 * episode)
                ep_return, ep_len = 0.0, 0
                if checkpoint_due:
                    save_checkpoint()
                    checkpoint_due = False
            if step % args.checkpoint_every == 0:
                checkpoint_due = True
            bar.update(1)
            if step % args.eval_every == 0 and step >= args.learning_starts:
                returns = evaluate(lambda o: actor.act(o, True, device), env_id, args.eval_episodes, 10_000 + step)
                score = normalized(args.env, returns.mean())
                history.append({"step": step, "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                                "normalized": score})
                best = max(best, returns.mean())
                torch.save({"state_dict": actor.state_dict(), "returns": returns}, run_dir / "actors" / f"step_{step}.pt")
                with open(run_dir / "evals.csv", "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(history[0]))
                    w.writeheader()
                    w.writerows(history)
                tqdm.write(f"step {step}: eval return {returns.mean():.1f} +- {returns.std():.1f} (normalised {score:.1f})")
                if args.role == "medium" and score >= target:
                    finish(f"normalised score {score:.1f} >= target {target}", step, returns)
                    save_checkpoint()
                    return
        returns = evaluate(lambda o: actor.act(o, True, device), env_id, args.eval_episodes, 10_000 + step)
        finish(f"reached --total-steps {args.total_steps}", step, returns)
        save_checkpoint()
    except KeyboardInterrupt:
        take_the_stop()
        # The episode in progress is cut: mark it truncated so the recorded stream stays a set of whole episodes.
        if replay.size and not (replay.terminations[replay.size - 1] or replay.truncations[replay.size - 1]):
            replay.truncations[replay.size - 1] = True
            episode += 1
        save_checkpoint()
        print(f"\ninterrupted at step {step}; checkpoint saved to {ckpt_path}; continue with --resume")
        sys.exit(130)
    finally:
        bar.close()


if __name__ == "__main__":
    main(tyro.cli(Args))
