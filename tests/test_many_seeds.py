"""--num-seeds: S agents trained in one process and one batched step. In-process, for all four algorithms: each agent
starts where a one-seed run of its seed starts, agents do not interact, and agent s of an S-agent step computes what a
one-agent step computes from the same state, minibatch and random draws. End to end: a two-seed run writes two
complete runs that differ, and resumes exactly."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error, load_script, read_csv_rows, run_script

CASES = {
    "misa_continuous": ("misa_continuous.py", "MISA", dict(num_mc_samples=4, mcmc_burnin=3)),
    "td3_bc_continuous": ("baselines/td3_bc_continuous.py", "TD3BC", dict(policy_freq=1)),
    "iql_continuous": ("baselines/iql_continuous.py", "IQL", {}),
    "cql_continuous": ("baselines/cql_continuous.py", "CQL", dict(cql_n_actions=3, cql_lagrange=True)),
}
MODULES = {name: load_script(ROOT / path) for name, (path, _, _) in CASES.items()}
throughput = load_script(ROOT / "benchmarks" / "throughput.py")  # its make_agent knows each script's constructor
OBS_DIM, ACT_DIM, BATCH = 3, 2, 16


def builder(name: str):
    """num_agents -> a fresh stack of agents of the named script, at a tiny size."""
    _, cls_name, overrides = CASES[name]
    module = MODULES[name]
    args = module.Args(hidden_dim=16, batch_size=BATCH, **overrides)
    return lambda n: throughput.make_agent(module, cls_name, args, OBS_DIM, ACT_DIM, torch.device("cpu"), n)


def minibatches(num_agents: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dtype = torch.get_default_dtype()
    return [torch.randn(num_agents, BATCH, OBS_DIM, generator=g, dtype=dtype),
            torch.rand(num_agents, BATCH, ACT_DIM, generator=g, dtype=dtype) * 1.8 - 0.9,
            torch.randn(num_agents, BATCH, generator=g, dtype=dtype),
            torch.randn(num_agents, BATCH, OBS_DIM, generator=g, dtype=dtype),
            (torch.rand(num_agents, BATCH, generator=g) < 0.1).to(dtype)]


def tensors(state, prefix=""):
    """Every tensor of a (nested) state dict, by path."""
    if isinstance(state, dict):
        return {k2: v2 for k, v in state.items() for k2, v2 in tensors(v, f"{prefix}{k}.").items()}
    if isinstance(state, list):
        return {k2: v2 for i, v in enumerate(state) for k2, v2 in tensors(v, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): state} if isinstance(state, torch.Tensor) else {}


class SharedDraws:
    """Within `with`, torch's random draws give every agent the same numbers: each draw's first dimension is the
    agent (as in the scripts), and every agent's slice is one draw from a generator seeded here. So an S-agent step and
    a one-agent step see the same random numbers, and their results can be compared."""

    NAMES = ("randn", "rand", "randn_like", "rand_like")

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.saved = {n: getattr(torch, n) for n in self.NAMES}
        gen = torch.Generator().manual_seed(self.seed)

        def shared(draw):
            def fake(*size, dtype=None, device=None, **_):
                shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
                one = draw(shape[1:], generator=gen, dtype=dtype or torch.get_default_dtype())
                return one.expand(shape).clone()
            return fake

        randn, rand = shared(self.saved["randn"]), shared(self.saved["rand"])
        torch.randn, torch.rand = randn, rand
        torch.randn_like = lambda x, **_: randn(x.shape, dtype=x.dtype)
        torch.rand_like = lambda x, **_: rand(x.shape, dtype=x.dtype)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch, n, f)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("name", list(CASES))
def test_each_agent_starts_from_its_one_seed_parameters(name):
    module, build = MODULES[name], builder(name)
    shared = getattr(module, CASES[name][1]).SHARED_STATE
    many = module.make_agents(build, [3, 4, 5]).state_dict()
    one = tensors(module.make_agents(build, [4]).state_dict())
    second = tensors(module.agent_state(many, 1, shared))
    assert second.keys() == one.keys()
    for key, value in one.items():
        assert torch.equal(second[key], value), key
    assert not torch.equal(tensors(module.agent_state(many, 0, shared))["actor.net.weights.0"],
                           second["actor.net.weights.0"])


@pytest.mark.parametrize("name", list(CASES))
def test_agents_do_not_interact(name):
    """Changing agent 1's minibatch changes agent 1's update and no other agent's."""
    module, build = MODULES[name], builder(name)
    shared = getattr(module, CASES[name][1]).SHARED_STATE
    start = copy.deepcopy(module.make_agents(build, [1, 2, 3]).state_dict())
    batch = minibatches(3, seed=0)
    other = [x.clone() for x in batch]
    for x, y in zip(other, minibatches(3, seed=1)):
        x[1] = y[1]
    after = []
    for data in (batch, other):
        agent = build(3)
        agent.load_state_dict(copy.deepcopy(start))
        torch.manual_seed(7)
        for _ in range(2):
            agent.update(*data)
        after.append(agent.state_dict())
    for s in (0, 2):
        a, b = tensors(module.agent_state(after[0], s, shared)), tensors(module.agent_state(after[1], s, shared))
        for key in a:
            assert torch.equal(a[key], b[key]), (s, key)
    a, b = tensors(module.agent_state(after[0], 1, shared)), tensors(module.agent_state(after[1], 1, shared))
    assert not torch.equal(a["critic.net.weights.0"], b["critic.net.weights.0"])


@pytest.mark.parametrize("name", list(CASES))
def test_agent_s_of_a_many_agent_step_is_a_one_agent_step(name, float64):
    """With the random draws held equal (SharedDraws), two steps of a 3-agent stack give agent s exactly what two
    one-agent steps from agent s's state and minibatches give: same parameters, optimiser states and metrics, to
    float64 rounding. MISA's HMC chain (step size adaptation, accept/reject) is part of the step."""
    module, build = MODULES[name], builder(name)
    shared = getattr(module, CASES[name][1]).SHARED_STATE
    many = module.make_agents(build, [1, 2, 3])
    start = copy.deepcopy(many.state_dict())
    batches = [minibatches(3, seed=0), minibatches(3, seed=1)]
    with SharedDraws(11):
        metrics = [many.update(*b) for b in batches][-1]
    for s in range(3):
        one = build(1)
        one.load_state_dict(copy.deepcopy(module.agent_state(start, s, shared)))
        with SharedDraws(11):
            one_metrics = [one.update(*(x[s:s + 1] for x in b)) for b in batches][-1]
        expected, got = tensors(one.state_dict()), tensors(module.agent_state(many.state_dict(), s, shared))
        for key, value in expected.items():
            assert torch.allclose(got[key], value, rtol=1e-9, atol=1e-10), (s, key, (got[key] - value).abs().max())
        for key, value in one_metrics.items():
            assert torch.allclose(metrics[key][s], value[0], rtol=1e-9, atol=1e-10, equal_nan=True), (s, key)
    if name == "misa_continuous":  # the chain ran (its per-agent step size: test_misa.py)
        assert torch.isfinite(metrics["misa/mcmc_step_size"]).all()


TINY = ["--env-id", "test/pendulum/energy-v0", "--batch-size", "32", "--hidden-dim", "32", "--num-mc-samples", "4",
        "--mcmc-burnin", "2", "--eval-episodes", "2", "--final-eval-episodes", "2", "--log-freq", "3",
        "--eval-freq", "6", "--save-model", "--num-seeds", "2", "--run-name", "pend__misa__{seed}"]


def test_two_seed_run_writes_two_runs_and_resumes_exactly(datasets_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    r = run_script("misa_continuous.py", *TINY, "--total-timesteps", "12", cwd=full)
    assert r.returncode == 0, r.stderr
    runs = sorted(p.name for p in (full / "runs").iterdir())
    assert runs == ["pend__misa__1", "pend__misa__2"]
    rows = {name: read_csv_rows(full / "runs" / name / "evaluations.csv") for name in runs}
    for name in runs:
        assert [int(r["step"]) for r in rows[name]] == [6, 12] and rows[name][-1]["final"] == "1"
        assert list((full / "runs" / name).glob("events.out.tfevents.*"))
    assert rows[runs[0]] != rows[runs[1]]  # two seeds, two results
    # each seed's checkpoint is a one-seed run's checkpoint of that seed, and knows its group
    blob = torch.load(full / "runs" / "pend__misa__2" / "checkpoint.pt", weights_only=False)
    assert blob["args"]["seed"] == 2 and blob["args"]["num_seeds"] == 1 and blob["run_name"] == "pend__misa__2"
    assert blob["group"]["run_names"] == runs and blob["agent"]["actor"]["net.weights.0"].shape[0] == 1

    r = run_script("misa_continuous.py", *TINY, "--total-timesteps", "6", cwd=part)
    assert r.returncode == 0, r.stderr
    # resuming from either seed's checkpoint continues both
    r = run_script("misa_continuous.py", "--resume", str(part / "runs" / "pend__misa__2" / "checkpoint.pt"),
                   "--total-timesteps", "12", "--save-model", cwd=part)
    assert r.returncode == 0, r.stderr
    for name in runs:
        a = tensors(torch.load(full / "runs" / name / "checkpoint.pt", weights_only=False)["agent"])
        b = tensors(torch.load(part / "runs" / name / "checkpoint.pt", weights_only=False)["agent"])
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        resumed = read_csv_rows(part / "runs" / name / "evaluations.csv")
        assert [r["mean_return"] for r in resumed] == [r["mean_return"] for r in rows[name]]


def test_many_seed_errors_are_one_line(datasets_root, tmp_path):
    assert_clean_error(run_script("baselines/td3_bc_continuous.py", "--env-id", "test/pendulum/energy-v0",
                                  "--num-seeds", "2", "--run-name", "fixed", cwd=tmp_path, timeout=60), "{seed}")
    assert_clean_error(run_script("baselines/iql_continuous.py", "--num-seeds", "0", cwd=tmp_path, timeout=60),
                       "--num-seeds")
    # the non-finite-loss guard names the seeds as well as the step and the loss
    r = run_script("baselines/td3_bc_continuous.py", "--env-id", "test/pendulum/huge-v0", "--num-seeds", "2",
                   "--total-timesteps", "20", "--eval-freq", "10", "--batch-size", "16", "--hidden-dim", "16",
                   cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "non-finite critic_loss of seed 1, critic_loss of seed 2 at step 1" in r.stderr, r.stderr


def test_evaluation_of_an_agent_does_not_depend_on_the_others(datasets_root):
    """`evaluate` with two agents gives agent 1 the returns that evaluating agent 1 alone gives (episode k of an agent
    is reset with its seed + k), stepping the envs in worker processes or in this one."""
    module = MODULES["td3_bc_continuous"]
    dataset = module.load_dataset("test/pendulum/energy-v0")
    low, high = dataset.action_space.low, dataset.action_space.high
    gains = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -0.5, -0.2]])  # two linear "agents"

    def policy(obs):  # (S, E, 3) -> (S, E, 1)
        return torch.tanh((obs * gains[:obs.shape[0]].unsqueeze(1)).sum(-1, keepdim=True))

    def policy_of_agent_1(obs):
        return torch.tanh((obs * gains[1]).sum(-1, keepdim=True))

    both_envs = module.make_eval_envs(dataset, "test/pendulum/energy-v0", 2 * 2, asynchronous=True)
    both = module.evaluate(policy, both_envs, 2, 3, [10, 20], low, high, torch.device("cpu"))
    both_envs.close()
    alone_envs = module.make_eval_envs(dataset, "test/pendulum/energy-v0", 2, asynchronous=False)
    alone = module.evaluate(policy_of_agent_1, alone_envs, 1, 3, [20], low, high, torch.device("cpu"))
    alone_envs.close()
    assert both.shape == (2, 3) and alone.shape == (1, 3)
    assert np.allclose(both[1], alone[0], rtol=1e-6)
    assert not np.allclose(both[0], both[1])
    assert len(set(np.round(both[1], 3))) == 3 and all(math.isfinite(x) for x in both.ravel())  # 3 distinct episodes
