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
With --fused-hmc it first compares one HMC sampling call through the Triton kernel with the torch chain, from the
same state and noise, in float64 and float32 (`compare_fused_chain`): over 200 training steps a rare accept/reject
flipped by float32 rounding lets the two runs part ways, so the parameter difference alone cannot tell a wrong
kernel from rounding.
CUDA only (tests/test_compile.py is the CPU counterpart for --compile).
"""

from __future__ import annotations

import math
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
    ("also torch.compile the graph-captured step (with inductor's fallback_random, so that it draws the same random "
     "numbers as eager code)")
    num_seeds: int = 1
    """agents trained together in each step (the scripts' --num-seeds)"""
    steps_per_replay: int = 1
    ("steps per call of the graph-captured step (the scripts' --steps-per-replay; --steps must be a multiple); the "
     "eager run takes one step per call")
    fused_hmc: bool = False
    ("MISA: first one HMC sampling call through the Triton chain kernel against the torch chain (float64 and float32), "
     "then the graph-captured run also uses --fused-hmc, so that it is checked against the eager torch reference")
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


def random_chain_target(misa, num_agents: int, batch: int, obs_dim: int, act_dim: int, hidden: int,
                        device: torch.device, dtype: torch.dtype) -> tuple[tuple, torch.Tensor, torch.Tensor]:
    """MISA's chain target (twin critic, its state part, the actor's mean, 1/std and log-normaliser) at random states,
    with the chains' start actions and the states: (target, init, obs). The critic's weights are sharpened so that Q
    varies enough for both critics to be the min somewhere and for the chains to accept and reject. Draws from
    torch's global generator (critic, states, actions, mean, log std, in that order); the caller seeds it."""
    with torch.no_grad():
        critic = misa.TwinCritic(obs_dim, act_dim, hidden, 2, num_agents).to(device, dtype)
        for w in critic.net.weights:
            w.mul_(3.0)
        obs = torch.randn(num_agents, batch, obs_dim, device=device, dtype=dtype)
        init = torch.rand(num_agents, batch, act_dim, device=device, dtype=dtype) * 1.8 - 0.9
        mean = 0.5 * torch.randn(num_agents, batch, act_dim, device=device, dtype=dtype)
        log_std = 0.3 * torch.randn(num_agents, batch, act_dim, device=device, dtype=dtype) - 1.0
        log_norm = -log_std.sum(-1) - 0.5 * act_dim * math.log(2 * math.pi)
        return (critic, critic.state_part(obs), mean, torch.exp(-log_std), log_norm), init, obs


def compare_fused_chain(misa, device: torch.device, dtype: torch.dtype, num_agents: int = 2, batch: int = 256,
                        obs_dim: int = 17, act_dim: int = 6, hidden: int = 256, step_size: float = 0.15,
                        chain_args=None) -> dict:
    """One HMC sampling call at the script's chain length (--num-mc-samples, --mcmc-burnin, --mcmc-leapfrog-steps)
    with initial step size `step_size` (on this random target the script's 1.0 rejects every proposal, which would
    compare nothing; 0.15 accepts about 56% at the script's sizes, measured on the CPU), through the torch
    transitions and through the Triton kernel (--fused-hmc), from the same state and noise (random_chain_target).
    In float64 the two chains should agree to rounding; in float32 a
    rounding difference can flip an accept/reject now and then, and that chain parts ways from there on. The sizes
    and `chain_args` (the script's Args by default) are smaller in the CPU test."""
    chain_args = chain_args or misa.Args()
    torch.manual_seed(0)
    target, init, _ = random_chain_target(misa, num_agents, batch, obs_dim, act_dim, hidden, device, dtype)
    with torch.no_grad():
        chains = {}
        for name, chain in (("torch", None), ("fused", misa.fused_hmc_chain)):
            torch.manual_seed(1)  # the same noise for both
            chains[name] = misa.hmc_sample(misa.misa_log_density_and_grad, init, chain_args.num_mc_samples,
                                           chain_args.mcmc_burnin, chain_args.mcmc_leapfrog_steps,
                                           step_size, target, fixed_step_chain=chain)
    (torch_samples, torch_accept, _), (fused_samples, fused_accept, _) = chains["torch"], chains["fused"]
    diff = (fused_samples - torch_samples).abs().amax(-1)  # per kept sample of each chain
    return {"dtype": str(dtype).replace("torch.", ""), "chains": num_agents * batch,
            "kept_samples": tuple(torch_samples.shape[1:3]), "max_abs_diff": diff.max().item(),
            "share_within_1e-4": (diff <= 1e-4).double().mean().item(),
            "accept_torch": torch_accept.double().mean().item(), "accept_fused": fused_accept.double().mean().item()}


def check_fused_chain(misa, device: torch.device, **sizes) -> bool:
    """compare_fused_chain in float64 (agreement to 1e-8) and float32 (99% of the samples within 1e-4, acceptance
    rates within 0.01), each with chains that both accept and reject (acceptance between 0.05 and 0.95); prints
    both, and a failure to compile or run as a failure."""
    ok = True
    mixed = lambda r: 0.05 < r["accept_torch"] < 0.95  # noqa: E731
    for dtype, passes in ((torch.float64, lambda r: mixed(r) and r["max_abs_diff"] <= 1e-8),
                          (torch.float32, lambda r: mixed(r) and r["share_within_1e-4"] >= 0.99
                           and abs(r["accept_torch"] - r["accept_fused"]) <= 0.01)):
        try:
            result = compare_fused_chain(misa, device, dtype, **sizes)
        except Exception as e:  # noqa: BLE001 - reported, and the other checks still run
            print(f"fused chain, {dtype}: failed to run: {type(e).__name__}: {e}", flush=True)
            ok = False
            continue
        ok = ok and passes(result)
        print(f"fused chain, {result['dtype']}: {'ok' if passes(result) else 'MISMATCH'} {result}", flush=True)
    return ok


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
    chain_ok = check_fused_chain(load(SCRIPTS["misa"][0]), device) if args.fused_hmc else True
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
    if not chain_ok:
        sys.exit("error: the fused chain does not match the torch chain (see above)")
    if worst_overall > args.atol:
        sys.exit(f"error: graph-captured and eager steps differ by {worst_overall:.2e} > --atol {args.atol}")
    print("ok: graph-captured steps match eager")


if __name__ == "__main__":
    main(tyro.cli(Args))
