"""On a GPU: does the CUDA-graph-captured training step compute what the eager step computes?

    python benchmarks/check_cuda_graphs.py                 # all four scripts, 20 steps each
    python benchmarks/check_cuda_graphs.py --compile       # torch.compile + CUDA graphs against eager
    python benchmarks/check_cuda_graphs.py --steps-per-replay 5   # five steps per graph replay against eager
    python benchmarks/check_cuda_graphs.py --algos misa --fused-hmc --steps 200   # MISA's Triton chain against torch

For each script, two agents start from the same initialisation and the same random state and take the same number
of steps on the same synthetic device-resident dataset: one eager (`--cuda-graphs off`), one through the script's
`make_train_step` with `--cuda-graphs on` (its first steps run eagerly, then the step is captured and replayed).
The minibatch indices and the policy noise come from the same CUDA generator in both, so the two runs should agree to
float rounding. Prints the largest parameter difference per script and exits non-zero if one exceeds --atol.
CUDA only (tests/test_compile.py is the CPU counterpart for --compile).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import SCRIPTS, load, make_step, synthetic_dataset  # noqa: E402


@dataclass
class Args:
    algos: list[Literal["misa", "cql", "td3_bc", "iql"]] = field(default_factory=lambda: list(SCRIPTS))
    """which scripts to check"""
    steps: int = 20
    """training steps per run (the graph run captures after its first few)"""
    compile: bool = False
    """also torch.compile the graph-captured step (with inductor's fallback_random, so that it draws the same random
    numbers as eager code)"""
    num_seeds: int = 1
    """agents trained together in each step (the scripts' --num-seeds)"""
    steps_per_replay: int = 1
    """steps per call of the graph-captured step (the scripts' --steps-per-replay; --steps must be a multiple); the
    eager run takes one step per call"""
    fused_hmc: bool = False
    """MISA: the graph-captured run also uses --fused-hmc (the Triton chain kernel), so that it is checked against
    the eager torch reference"""
    atol: float = 1e-3
    """largest allowed absolute parameter difference after --steps steps"""


def run(module, cls_name: str, algo: str, graphs: bool, compile: bool, steps: int, data, device,
        num_seeds: int, steps_per_replay: int = 1, fused_hmc: bool = False) -> tuple[dict, dict]:
    extra = dict(fused_hmc=fused_hmc) if algo == "misa" else {}
    script_args = module.Args(cuda_graphs="on" if graphs else "off", compile=compile, num_seeds=num_seeds,
                              steps_per_replay=steps_per_replay, **extra)
    torch.manual_seed(0)
    agent, run_steps = make_step(module, cls_name, algo, script_args, data, device)
    torch.manual_seed(1)
    metrics = {}
    for i in range(0, steps, steps_per_replay):
        metrics = run_steps(i)
    torch.cuda.synchronize()
    params = {f"{name}.{k}": v.detach().clone() for name in ("actor", "critic")
              for k, v in getattr(agent, name).state_dict().items()}
    return params, {k: v.mean().item() for k, v in metrics.items()}


def main(args: Args) -> None:
    if not torch.cuda.is_available():
        sys.exit("error: CUDA graphs need a GPU; torch.cuda.is_available() is False here")
    if args.steps % args.steps_per_replay:
        sys.exit(f"error: --steps {args.steps} must be a multiple of --steps-per-replay {args.steps_per_replay}")
    device = torch.device("cuda")
    if args.compile:  # compiled kernels draw the same random numbers as eager ones
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
    torch.manual_seed(0)
    data = synthetic_dataset(10_000, 17, 6, device)
    worst_overall = 0.0
    for algo in args.algos:
        path, cls_name = SCRIPTS[algo]
        module = load(path)
        eager_params, eager_metrics = run(module, cls_name, algo, False, False, args.steps, data, device, args.num_seeds)
        graph_params, graph_metrics = run(module, cls_name, algo, True, args.compile, args.steps, data, device,
                                          args.num_seeds, args.steps_per_replay, args.fused_hmc)
        worst = max((eager_params[k] - graph_params[k]).abs().max().item() for k in eager_params)
        worst_overall = max(worst_overall, worst)
        moved = max((eager_params[k] - v).abs().max().item() for k, v in
                    run(module, cls_name, algo, False, False, 0, data, device, args.num_seeds)[0].items())
        print(f"{algo:7s} max |eager - graph| over parameters: {worst:.2e} (the {args.steps} steps moved them by up "
              f"to {moved:.2e}); critic_loss eager {eager_metrics['losses/critic_loss']:.6f} "
              f"graph {graph_metrics['losses/critic_loss']:.6f}", flush=True)
    if worst_overall > args.atol:
        sys.exit(f"error: graph-captured and eager steps differ by {worst_overall:.2e} > --atol {args.atol}")
    print("ok: graph-captured steps match eager")


if __name__ == "__main__":
    main(tyro.cli(Args))
