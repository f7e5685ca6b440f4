"""Evaluate shipped behaviour policies on fresh episodes, away from the evaluation seeds they were picked on.

    python tools/evaluate_policy.py hopper-expert walker2d-medium --episodes 20

train_behavior.py evaluates every snapshot on reset seeds 10000+step, and the shipped snapshot was picked by that
evaluation; re-running the policy on other seeds shows how much of its score was the luck of those episodes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_behavior import DEFAULT_OUT_DIR, ENVS, evaluate, load_actor, normalized  # noqa: E402


@dataclass
class Args:
    names: tyro.conf.Positional[list[str]]
    """shipped policies to evaluate, ENV-ROLE (e.g. hopper-expert); see tools/behavior_policies/manifest.json"""
    episodes: int = 20
    """deterministic evaluation episodes per policy"""
    seed: int = 50_000
    """reset seed of the first episode (episode i uses seed + i)"""
    policies_dir: str = str(DEFAULT_OUT_DIR)
    """where the behaviour policies are read from"""


def main(args: Args) -> None:
    torch.set_num_threads(1)
    if not args.names:
        sys.exit("error: name at least one policy, e.g. hopper-expert")
    if args.episodes < 1:
        sys.exit(f"error: --episodes must be >= 1, got {args.episodes}")
    for name in args.names:
        path = Path(args.policies_dir) / f"{name}.pt"
        env = name.split("-", 1)[0]
        if env not in ENVS or not path.is_file():
            shipped = sorted(p.stem for p in Path(args.policies_dir).glob("*.pt"))
            sys.exit(f"error: no shipped policy named {name} in {args.policies_dir} (this tool takes names, not paths); "
                     f"shipped policies: {', '.join(shipped)}")
        actor, meta = load_actor(path)
        returns = evaluate(lambda obs: actor.act(obs, True, torch.device("cpu")), ENVS[env][0], args.episodes,
                           args.seed)
        print(f"{name}: {returns.mean():.1f} +- {returns.std():.1f} (normalised {normalized(env, returns.mean()):.1f},"
              f" worst episode {returns.min():.1f}) over {args.episodes} episodes from seed {args.seed}; the manifest's"
              f" evaluation: {meta['eval_return_mean']:.1f} (normalised {normalized(env, meta['eval_return_mean']):.1f})")


if __name__ == "__main__":
    main(tyro.cli(Args))
