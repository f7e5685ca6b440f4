"""--fused-hmc: MISA's Triton chain kernel computes what the torch reference computes. On the CPU the kernel runs in
Triton's interpreter (TRITON_INTERPRET=1, numpy underneath), at small sizes; benchmarks/check_cuda_graphs.py
--fused-hmc compares the compiled kernel with the reference on a GPU."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import replace

import pytest
import torch
from conftest import ROOT, assert_clean_error, load_script, run_script

if sys.platform == "linux" and platform.machine() == "x86_64":
    import triton  # requirements.txt installs it here: a missing Triton is an install error, not a skip
else:
    triton = pytest.importorskip("triton")

# the interpreter's numpy warns when a chain proposes an action outside (-1, 1): atanh is NaN there, and the transition
# rejects it, as the reference does
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in log:RuntimeWarning")


CHECK = load_script(ROOT / "benchmarks" / "check_cuda_graphs.py")  # its random chain target and chain comparison


@pytest.fixture(scope="module")
def misa():
    assert os.environ["TRITON_INTERPRET"] == "1"  # set by conftest.py: the kernels run in Triton's interpreter
    return load_script(ROOT / "misa_continuous.py")


def chain_target(misa, num_agents: int, batch: int, obs_dim: int, act_dim: int, hidden: int):
    """The GPU check's random target (benchmarks/check_cuda_graphs.py), in float64 so that the two paths can be
    compared tightly: in float32 a rounding difference can flip one accept/reject and the chains part ways. Also
    both critics' Q at the start actions."""
    target, actions, obs = CHECK.random_chain_target(misa, num_agents, batch, obs_dim, act_dim, hidden,
                                                     torch.device("cpu"), torch.float64)
    with torch.no_grad():
        q = target[0](obs, actions)
    return target, actions, q


@pytest.mark.parametrize("leapfrog_steps, burnin", [(2, 5), (1, 0), (3, 7)])
def test_fused_chain_matches_the_reference_chain(misa, leapfrog_steps, burnin):
    # 2 agents; 20 chains (a full block of 16 and a partial one); 3 action dims (padded to 16 in the kernel); the
    # second hidden layer walked in two blocks of 16 units. Burn-in 5: 4 adapting transitions in torch, then the 11
    # others in the kernel, the last 10 kept; burn-in 0: the whole chain in the kernel; burn-in 7: 5 in torch, then
    # the kernel discards 2
    torch.manual_seed(0)
    target, init, q = chain_target(misa, num_agents=2, batch=20, obs_dim=5, act_dim=3, hidden=32)
    assert 0 < (q[1] < q[0]).double().mean() < 1  # both critics are the min for some chains
    kernel = lambda *a: misa.fused_hmc_chain(*a, block_units=16)  # noqa: E731
    results = {}
    for name, chain in (("reference", None), ("fused", kernel)):
        torch.manual_seed(1)  # the same noise for both
        results[name] = misa.hmc_sample(misa.misa_log_density_and_grad, init, 10, burnin, leapfrog_steps, 0.3,
                                        target, fixed_step_chain=chain)
    (ref_samples, ref_accept, ref_eps), (samples, accept, eps) = results["reference"], results["fused"]
    assert samples.shape == ref_samples.shape == (2, 10, 20, 3)
    assert torch.equal(eps, ref_eps)
    assert torch.allclose(samples, ref_samples, rtol=0, atol=1e-10), (samples - ref_samples).abs().max()
    assert torch.allclose(accept, ref_accept.double(), rtol=0, atol=1e-6)
    assert ((0.05 < accept) & (accept < 0.95)).all()  # accepted and rejected proposals both occurred
    assert (samples.abs() < 1).all()  # proposals outside the action box were rejected


def test_fused_update_matches_the_reference_update(misa):
    """One MISA update of two agents with --fused-hmc and without, from the same parameters, batch and noise: the same
    losses and the same parameters after the optimiser steps (float32, where the chains agree here)."""
    args = misa.Args(hidden_dim=32, batch_size=16, num_mc_samples=6, mcmc_burnin=5, mcmc_step_size=0.2)
    batch = (torch.randn(2, 16, 3), torch.rand(2, 16, 2) * 1.9 - 0.95, torch.randn(2, 16), torch.randn(2, 16, 3),
             torch.zeros(2, 16))
    agents, metrics = {}, {}
    for fused in (False, True):
        torch.manual_seed(0)
        agents[fused] = misa.MISA(replace(args, fused_hmc=fused), 3, 2, torch.device("cpu"), num_agents=2)
        torch.manual_seed(1)
        metrics[fused] = agents[fused].update(*batch)
    assert agents[True].fixed_step_chain is not None and agents[False].fixed_step_chain is None
    for key, value in metrics[False].items():
        if torch.isfinite(value).all():
            assert torch.allclose(value, metrics[True][key], rtol=1e-5, atol=1e-6), (key, value, metrics[True][key])
    assert 0 < metrics[True]["misa/mcmc_accept_rate"].min() and metrics[True]["misa/mcmc_accept_rate"].max() < 1
    for module_name in ("actor", "critic"):
        for (name, p), p_fused in zip(getattr(agents[False], module_name).named_parameters(),
                                      getattr(agents[True], module_name).parameters()):
            assert torch.allclose(p, p_fused, rtol=1e-5, atol=1e-6), (module_name, name)


@pytest.mark.parametrize("flags, needle", [
    ([], "--fused-hmc needs a CUDA device"),
    (["--num-layers", "3"], "--num-layers 2 and a power-of-two --hidden-dim"),
    (["--hidden-dim", "48"], "--num-layers 2 and a power-of-two --hidden-dim"),
])
def test_fused_hmc_refuses_what_its_kernel_cannot_run(tmp_path, flags, needle):
    # run_script's subprocess runs without TRITON_INTERPRET, as a user's run would
    result = run_script("misa_continuous.py", "--env-id", "test/pendulum/energy-v0", "--fused-hmc", "--no-cuda",
                        *flags, cwd=tmp_path)
    assert_clean_error(result, needle)
    assert not (tmp_path / "runs").exists()


def test_fused_kernel_compiles_for_hopper(tmp_path):
    """The interpreter runs the kernel's arithmetic; this compiles it, as a GPU would at its first launch, for the H100
    and H200 (sm_90) with the script's launch configuration, on this GPU-less machine (Triton's wheel ships ptxas)."""
    result = run_script("benchmarks/compile_fused_hmc.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["triton"] == triton.__version__ and report["registers"] > 0 and report["cubin_bytes"] > 0
    # spilling registers to memory inside the chain's innermost loop would cost far more than the kernel saves
    assert report["spill_store_bytes"] == 0, report


def test_the_gpu_check_of_the_fused_chain_runs_and_passes_here(misa, capsys):
    """benchmarks/check_cuda_graphs.py --fused-hmc first compares one sampling call through the kernel with the torch
    chain (float64: to rounding; float32: 99% of the samples within 1e-4). Its code runs here in the interpreter, at
    small sizes, so that a GPU session does not find its bugs."""
    sizes = dict(num_agents=2, batch=20, obs_dim=5, act_dim=3, hidden=32,
                 chain_args=misa.Args(num_mc_samples=8, mcmc_burnin=5))
    result = CHECK.compare_fused_chain(misa, torch.device("cpu"), torch.float64, **sizes)
    assert result["kept_samples"] == (8, 20) and result["chains"] == 40
    assert result["max_abs_diff"] <= 1e-10 and result["share_within_1e-4"] == 1.0
    assert result["accept_torch"] == pytest.approx(result["accept_fused"]) and 0.05 < result["accept_torch"] < 0.95
    assert CHECK.check_fused_chain(misa, torch.device("cpu"), **sizes)
    printed = capsys.readouterr().out
    assert "fused chain, float64: ok" in printed and "fused chain, float32: ok" in printed
