"""Tests of misa_continuous.py: the math pieces in-process, the script end to end in subprocesses."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, run_script

import misa_continuous as misa

TINY = ["--batch-size", "32", "--hidden-dim", "32", "--num-mc-samples", "4", "--mcmc-burnin", "2",
        "--eval-episodes", "2", "--final-eval-episodes", "2", "--log-freq", "5"]


# ---------------------------------------------------------------------------------------------------------- math
def test_tanh_gaussian_log_prob_matches_reference_and_integrates_to_one():
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 3, dtype=torch.float64), torch.rand(64, 3, dtype=torch.float64) - 1
    u = mean + log_std.exp() * torch.randn(64, 3, dtype=torch.float64)
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()]
    ).log_prob(torch.tanh(u)).sum(-1)
    assert torch.allclose(misa.tanh_gaussian_log_prob(u, mean, log_std), reference, atol=1e-8)
    # a 1-D density over (-1, 1) integrates to 1 (trapezoid rule on a fine grid)
    a = torch.linspace(-1 + 1e-7, 1 - 1e-7, 400_001, dtype=torch.float64)[:, None]
    density = misa.action_log_prob(a, torch.tensor([[0.4]], dtype=torch.float64),
                                   torch.tensor([[-0.5]], dtype=torch.float64)).exp()
    assert abs(torch.trapezoid(density, a[:, 0]).item() - 1.0) < 1e-3


def test_closed_form_action_gradient_matches_autograd():
    torch.manual_seed(1)
    mean, log_std = torch.randn(16, 4, dtype=torch.float64), torch.rand(16, 4, dtype=torch.float64) - 1
    a = (torch.rand(16, 4, dtype=torch.float64) * 2 - 1) * 0.99
    a.requires_grad_(True)
    log_pi = misa.action_log_prob(a, mean, log_std)
    (auto,) = torch.autograd.grad(log_pi.sum(), a)
    log_norm = -log_std.sum(-1) - 0.5 * 4 * math.log(2 * math.pi)
    shared_log_pi, grad = misa.action_log_prob_and_grad(a.detach(), mean, torch.exp(-log_std), log_norm)
    assert torch.allclose(shared_log_pi, log_pi.detach(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad, auto, rtol=1e-9, atol=1e-9)


def test_hand_written_critic_action_gradient_matches_autograd():
    torch.manual_seed(2)
    critic = misa.TwinCritic(5, 3, hidden=16, layers=2, num_agents=2).double()  # two agents' critics at once
    obs = torch.randn(2, 64, 5, dtype=torch.float64)
    a = (torch.rand(2, 64, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    q_min = critic(obs, a).min(0).values
    (auto,) = torch.autograd.grad(q_min.sum(), a)
    with torch.no_grad():
        q_hand, grad_hand = critic.min_q_and_action_grad(critic.state_part(obs), a.detach())
    assert torch.allclose(q_hand, q_min.detach(), rtol=0, atol=1e-12)
    assert torch.allclose(grad_hand, auto, rtol=1e-9, atol=1e-12)
    # both critics are the min for some rows, so both backward paths were exercised
    assert 0 < (critic(obs, a)[0] < critic(obs, a)[1]).float().mean() < 1


def gaussian_target(mu: float, sigma: float):
    def f(x):
        return -0.5 * ((x - mu) / sigma).pow(2).sum(-1), -(x - mu) / sigma**2
    return f


def test_hmc_reproduces_gaussian_moments():
    torch.manual_seed(0)
    init = torch.zeros(1, 4000, 2)
    samples, accept_rate, _ = misa.hmc_sample(gaussian_target(0.3, 0.2), init, num_samples=30, burnin=20,
                                              leapfrog_steps=2, step_size=0.15)
    flat = samples.reshape(-1, 2)
    assert torch.allclose(flat.mean(0), torch.tensor([0.3, 0.3]), atol=0.02)
    assert torch.allclose(flat.std(0), torch.tensor([0.2, 0.2]), atol=0.02)
    assert 0.5 < accept_rate.item() <= 1.0


def test_hmc_step_size_adaptation_follows_the_spec():
    torch.manual_seed(0)
    init = torch.zeros(1, 512, 2)
    # tiny steps on a wide target: acceptance ~1 > 0.75, so eps grows by 1.01 on each of int(0.8 * 5) = 4 transitions
    _, accept, eps = misa.hmc_sample(gaussian_target(0.0, 1.0), init, 10, 5, 2, 0.01)
    assert math.isclose(eps.item(), 0.01 * 1.01**4, rel_tol=1e-6) and accept.item() > 0.99
    # huge steps on a narrow target: acceptance ~0, so eps shrinks on the 8 adaptation transitions of burn-in 10
    _, accept, eps = misa.hmc_sample(gaussian_target(0.0, 0.01), init, 10, 10, 2, 1.0)
    assert math.isclose(eps.item(), 1.01**-8, rel_tol=1e-6) and accept.item() < 0.05
    # no burn-in: no adaptation
    _, _, eps = misa.hmc_sample(gaussian_target(0.0, 1.0), init, 5, 0, 2, 0.5)
    assert eps.item() == 0.5


def test_hmc_step_size_adapts_per_agent():
    """Two agents' chains in one call: the wide target's step size grows and the narrow one's shrinks, each on its own
    agent's acceptance only."""
    torch.manual_seed(0)
    sigma = torch.tensor([1.0, 0.01])[:, None, None]  # agent 0: wide target, agent 1: narrow
    _, accept, eps = misa.hmc_sample(gaussian_target(0.0, sigma), torch.zeros(2, 512, 2), 10, 10, 2, 0.01)
    assert eps.shape == accept.shape == (2,)
    assert math.isclose(eps[0].item(), 0.01 * 1.01**8, rel_tol=1e-6) and accept[0].item() > 0.99
    assert eps[1].item() < 0.01 * 1.01**8


def test_hmc_rejects_proposals_outside_the_action_box_without_nans():
    torch.manual_seed(0)
    mean, log_std = torch.zeros(1, 256, 3), torch.zeros(1, 256, 3)
    init = torch.rand(1, 256, 3) * 1.6 - 0.8

    def f(a):
        return misa.action_log_prob_and_grad(a, mean, torch.exp(-log_std), -log_std.sum(-1) - 1.5 * math.log(2 * math.pi))

    samples, accept, _ = misa.hmc_sample(f, init, num_samples=20, burnin=5, leapfrog_steps=2, step_size=1.0)
    assert torch.isfinite(samples).all() and (samples.abs() < 1).all()
    assert 0.0 <= accept.item() < 1.0


def test_bound_ordering_misa_ge_dv_ge_f():
    torch.manual_seed(0)
    for _ in range(20):
        q_data, q_pi = torch.randn(2, 64) * 2, torch.randn(2, 50, 64) * 2 + torch.randn(2, 1, 64) * 3
        pen = {b: misa.mi_penalty(q_data, q_pi, b, f_cap=10.0) for b in ("misa", "dv", "f")}
        # the bound is -penalty (+ a term common to all three), so MISA >= DV >= f means pen_misa <= pen_dv <= pen_f
        assert (pen["misa"] <= pen["dv"] + 1e-5).all() and (pen["dv"] <= pen["f"] + 1e-5).all()


def test_partition_weights():
    q = torch.randn(50, 8)
    assert torch.allclose(misa.partition_state_weights(q, "misa", 10.0), torch.full((8,), 1 / 8))
    w = misa.partition_state_weights(q, "dv", 10.0)
    assert math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)
    assert torch.argmax(w) == torch.argmax(torch.logsumexp(q, 0))
    assert torch.isfinite(misa.partition_state_weights(q * 1000, "f", 10.0)).all()


def test_capped_exp_is_finite_and_increasing():
    x = torch.tensor([0.0, 5.0, 10.0, 11.0, 1e6])
    y = misa.capped_exp(x, 10.0)
    assert torch.isfinite(y).all() and (y.diff() > 0).all()
    assert torch.allclose(y[:3], x[:3].exp())


def make_agent(**overrides):
    args = misa.Args(batch_size=64, hidden_dim=64, num_mc_samples=8, mcmc_burnin=2, **overrides)
    return args, misa.MISA(args, obs_dim=3, act_dim=1, device=torch.device("cpu"), num_agents=1)


def load_energy_batch(datasets_root):
    ds = misa.load_dataset("test/pendulum/energy-v0")
    data = misa.dataset_to_transitions(ds, "energy", 0.999)
    return {k: torch.as_tensor(v) for k, v in data.items()}


@pytest.mark.parametrize("bound", ["misa", "dv", "f"])
def test_update_is_finite_and_moves_towards_the_data(datasets_root, bound):
    """Deterministic: 50 updates raise the dataset actions' log-likelihood and the TD error stays finite."""
    torch.manual_seed(0)
    data = load_energy_batch(datasets_root)
    args, agent = make_agent(mi_bound=bound)
    fixed = torch.arange(0, len(data["rewards"]), 7)
    def log_lik():
        with torch.no_grad():
            mean, log_std = agent.actor(data["obs"][fixed][None])
            return misa.action_log_prob(data["actions"][fixed][None], mean, log_std).mean().item()
    before = log_lik()
    for _ in range(50):
        idx = torch.randint(len(data["rewards"]), (1, args.batch_size))  # one agent
        metrics = agent.update(*(data[k][idx] for k in ("obs", "actions", "rewards", "next_obs", "dones")))
    assert all(torch.isfinite(v) for k, v in metrics.items() if "mcmc" not in k)
    assert 0.0 <= metrics["misa/mcmc_accept_rate"].item() <= 1.0
    assert log_lik() > before + 0.3


def test_td_error_falls_when_penalty_is_off(datasets_root):
    torch.manual_seed(0)
    data = load_energy_batch(datasets_root)
    args, agent = make_agent(min_q_weight=0.0, mcmc=False)
    td = []
    for _ in range(300):
        idx = torch.randint(len(data["rewards"]), (1, args.batch_size))
        td.append(agent.update(*(data[k][idx] for k in ("obs", "actions", "rewards", "next_obs", "dones")))
                  ["losses/td_loss"].item())
    assert np.mean(td[-30:]) < 0.5 * np.mean(td[:30])


def test_losses_use_pre_update_parameters():
    """Stepping the critic first must not change the actor's gradient: all gradients are taken before any step."""
    torch.manual_seed(0)
    args, agent = make_agent(mcmc=False)
    batch = (torch.randn(1, 64, 3), torch.rand(1, 64, 1) * 1.8 - 0.9, torch.randn(1, 64), torch.randn(1, 64, 3),
             torch.zeros(1, 64))
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    torch.manual_seed(1)
    agent.update(*batch)
    after_a = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    # replay the same update with a fresh agent whose critic optimiser has a zero learning rate: the actor must end
    # at the same place, because the actor's loss never sees the critic's new parameters
    torch.manual_seed(0)
    args2, agent2 = make_agent(mcmc=False)
    for g in agent2.critic_opt.param_groups:
        g["lr"] = 0.0
    torch.manual_seed(1)
    agent2.update(*batch)
    for k in before:
        assert torch.allclose(after_a[k], agent2.actor.state_dict()[k], atol=1e-7), k


def test_dataset_transitions(datasets_root):
    ds = misa.load_dataset("test/pendulum/energy-v0")
    data = misa.dataset_to_transitions(ds, "energy", 0.999)
    assert data["obs"].shape == (20 * 200, 3) and data["actions"].shape == (20 * 200, 1)
    assert data["obs"].dtype == np.float32
    episode = next(iter(ds.iterate_episodes()))
    assert np.allclose(data["next_obs"][:199], data["obs"][1:200])  # within an episode, s' is the next s
    assert np.allclose(data["next_obs"][199], episode.observations[200])  # the last s' is the final observation
    assert data["dones"].sum() == 0  # time-limit truncations are not terminal
    assert np.abs(data["actions"]).max() <= 0.999  # mapped from [-2, 2] to [-1, 1], then clipped


# ---------------------------------------------------------------------------------------------------------- script
@pytest.mark.parametrize("bound", ["misa", "dv", "f"])
def test_script_runs_end_to_end(datasets_root, tmp_path, bound):
    r = run_script("misa_continuous.py", "--env-id", "test/pendulum/energy-v0", "--mi-bound", bound,
                   "--total-timesteps", "10", "--eval-freq", "5", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    with open(run_dir / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10]
    assert all(math.isfinite(float(r["normalized_score"])) for r in rows)
    assert list(run_dir.glob("events.out.tfevents.*"))


def final_state(path):
    return torch.load(path, weights_only=False)["agent"]


def test_checkpoint_round_trip_and_resume_matches_uninterrupted_run(datasets_root, tmp_path):
    common = ["--env-id", "test/pendulum/energy-v0", "--eval-freq", "6", "--save-model", *TINY]
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    r = run_script("misa_continuous.py", *common, "--total-timesteps", "12", cwd=full)
    assert r.returncode == 0, r.stderr
    r = run_script("misa_continuous.py", *common, "--total-timesteps", "6", cwd=part)
    assert r.returncode == 0, r.stderr
    (ckpt,) = (part / "runs").glob("*/checkpoint.pt")
    blob = torch.load(ckpt, weights_only=False)
    assert blob["step"] == 6 and set(blob["agent"]) >= {"actor", "critic", "critic_target", "actor_opt", "log_alpha"}
    assert blob["args"]["num_mc_samples"] == 4 and "torch" in blob["rng"]
    # round trip: loading into a fresh agent restores every tensor
    args = misa.Args(**blob["args"])
    agent = misa.MISA(args, 3, 1, torch.device("cpu"), num_agents=1)
    agent.load_state_dict(blob["agent"])
    for k, v in agent.actor.state_dict().items():
        assert torch.equal(v, blob["agent"]["actor"][k])
    shutil.copy(ckpt, part / "step6.pt")
    r = run_script("misa_continuous.py", "--resume", str(ckpt), "--total-timesteps", "12", "--save-model", cwd=part)
    assert r.returncode == 0, r.stderr
    (full_ckpt,) = (full / "runs").glob("*/checkpoint.pt")
    a, b = final_state(full_ckpt), final_state(ckpt)
    for module in ("actor", "critic", "critic_target"):
        for k in a[module]:
            assert torch.equal(a[module][k], b[module][k]), (module, k)
    with open(ckpt.parent / "evaluations.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [6, 12]


@pytest.mark.parametrize("argv, needles", [
    (["--env-id", "walker2d-mediocre"], ["walker2d-mediocre", "walker2d-medium-replay"]),
    (["--env-id", "test/pendulum/absent-v0"], ["test/pendulum/absent-v0", "cannot be reached"]),
    (["--env-id", "test/pendulum/nan-v0"], ["test/pendulum/nan-v0", "rewards", "non-finite"]),
    (["--env-id", "test/cartpole/discrete-v0"], ["test/cartpole/discrete-v0", "Discrete"]),
    (["--num-mc-samples", "0"], ["--num-mc-samples", ">= 1"]),
    (["--mcmc-burnin", "-1"], ["--mcmc-burnin"]),
    (["--tau", "2"], ["--tau", "(0, 1]"]),
    (["--batch-size", "100000", "--env-id", "test/pendulum/random-v0"], ["--batch-size"]),
    (["--resume", "nowhere/checkpoint.pt"], ["nowhere/checkpoint.pt"]),
    (["--cuda-graphs", "on", "--no-cuda", "--env-id", "test/pendulum/random-v0"], ["--cuda-graphs on", "CUDA"]),
])
def test_bad_input_gives_a_clear_error(datasets_root, tmp_path, argv, needles):
    r = run_script("misa_continuous.py", *argv, "--total-timesteps", "2", cwd=tmp_path, timeout=60)
    assert_clean_error(r, *needles)


def test_bad_choice_is_rejected_by_the_cli(datasets_root, tmp_path):
    r = run_script("misa_continuous.py", "--mi-bound", "nwj", cwd=tmp_path, timeout=60)
    assert r.returncode != 0 and "--mi-bound" in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_non_finite_loss_stops_the_run(datasets_root, tmp_path):
    r = run_script("misa_continuous.py", "--env-id", "test/pendulum/huge-v0", "--total-timesteps", "20",
                   "--eval-freq", "10", *TINY, cwd=tmp_path)
    assert r.returncode == 1
    assert "non-finite critic_loss of seed 1 at step 1" in r.stderr and "Traceback" not in r.stderr


def test_help_documents_every_flag(tmp_path):
    r = run_script("misa_continuous.py", "--help", cwd=tmp_path, timeout=60)
    assert r.returncode == 0
    for flag in ("--num-mc-samples", "--mcmc-burnin", "--mi-bound", "--resume", "--no-mcmc", "--min-q-weight"):
        assert flag in r.stdout


def test_sigterm_saves_a_checkpoint_that_resumes(datasets_root, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "misa_continuous.py"), "--env-id", "test/pendulum/energy-v0",
                             "--total-timesteps", "100000", *TINY], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # inside the training loop by now
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (ckpt,) = tmp_path.glob("runs/*/checkpoint.pt")
    assert "--resume" in out and torch.load(ckpt, weights_only=False)["step"] > 0
