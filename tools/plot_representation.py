"""The MISA paper's representation picture: a t-SNE of the critic's last hidden layer on dataset state-action pairs,
coloured by reward, one panel per checkpoint (e.g. a MISA and a CQL run on the same dataset, side by side).

    python tools/plot_representation.py runs/A/checkpoint.pt runs/B/checkpoint.pt --out docs/results/representation.png

Each checkpoint is loaded into the script that wrote it (misa_continuous.py or baselines/cql_continuous.py, read from
the checkpoint's args), its dataset is read as that script reads it (states normalised where the run normalised
them), and the first critic's last hidden layer is embedded by scikit-learn's t-SNE.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import throughput  # noqa: E402  (its script loader and agent builder)

# checkpoint args' exp_name -> (script path, agent class), for the two algorithms the paper's picture compares
SCRIPTS = {path.stem: (path, cls) for path, cls in throughput.SCRIPTS.values() if cls in ("MISA", "CQL")}


@dataclass
class Args:
    checkpoints: tyro.conf.Positional[list[str]]
    """checkpoint.pt files of misa_continuous.py or baselines/cql_continuous.py runs (one panel each)"""
    out: str = "representation.png"
    """the PNG to write"""
    num_samples: int = 2000
    """dataset state-action pairs embedded per checkpoint (drawn with --seed)"""
    perplexity: float = 30.0
    """t-SNE perplexity"""
    seed: int = 0
    """seed of the sample and of t-SNE"""


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def critic_features(checkpoint: str, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(features (N, hidden) of the first critic's last hidden layer, rewards (N,), panel title)."""
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
        saved = blob["args"]
    except Exception as e:
        fail(f"{checkpoint}: not a checkpoint of one of the scripts ({type(e).__name__}: {e})")
    name = saved.get("exp_name")
    if name not in SCRIPTS:
        fail(f"{checkpoint}: written by {name!r}; this tool reads {', '.join(SCRIPTS)} checkpoints")
    path, cls_name = SCRIPTS[name]
    module = throughput.load(path)
    args = module.Args(**saved)
    dataset, data = module.read_transitions(args.env_id, args.action_clip)
    obs_dim, act_dim = data["obs"].shape[1], data["actions"].shape[1]
    agent = throughput.make_agent(module, cls_name, args, obs_dim, act_dim, torch.device("cpu"))
    agent.load_state_dict(blob["agent"])  # CQL's holds the run's state statistics, which its critic saw
    obs = data["obs"] if cls_name == "MISA" else (data["obs"] - agent.obs_mean.numpy()) / agent.obs_std.numpy()
    idx = np.random.default_rng(seed).choice(len(obs), size=min(num_samples, len(obs)), replace=False)
    x = torch.as_tensor(np.concatenate([obs[idx], data["actions"][idx]], -1), dtype=torch.float32)
    net = agent.critic.net
    activation = getattr(net, "activation", F.relu)  # MISA's critics are ELU, CQL's ReLU
    with torch.no_grad():
        for w, b in zip(list(net.weights)[:-1], list(net.biases)[:-1]):
            x = activation(x @ w[0, 0] + b[0, 0])  # the checkpoint's one agent, its first critic
    algo = "MISA" if cls_name == "MISA" else "CQL"
    return x.numpy(), data["rewards"][idx], f"{algo} on {args.env_id}, step {blob['step']}"


def main(args: Args) -> None:
    if args.num_samples < 10:
        fail(f"--num-samples must be at least 10, got {args.num_samples}")
    for path in args.checkpoints:
        if not Path(path).is_file():
            fail(f"no such checkpoint file: {path}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    panels = [critic_features(path, args.num_samples, args.seed) for path in args.checkpoints]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False)
    for ax, (features, rewards, title) in zip(axes[0], panels):
        perplexity = min(args.perplexity, (len(features) - 1) / 3)
        embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=args.seed).fit_transform(features)
        points = ax.scatter(embedding[:, 0], embedding[:, 1], c=rewards, s=4, cmap="viridis")
        fig.colorbar(points, ax=ax, label="reward")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("t-SNE of the critic's last hidden layer on dataset (s, a) pairs")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
