"""--compile: one compiled update and one eager update from the same state and batch agree (CPU); and the
--cuda-graphs wrapper's bookkeeping, with CUDA faked.

Compilation takes a minute or two per algorithm on 2 cores; these are the slowest tests of the suite."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
import torch._inductor.config as inductor_config
from conftest import ROOT, load_script

throughput = load_script(ROOT / "benchmarks" / "throughput.py")  # its make_agent knows each script's constructor

CASES = {
    "misa_continuous": ("misa_continuous.py", "MISA", dict(num_mc_samples=4, mcmc_burnin=2)),
    "td3_bc_continuous": ("baselines/td3_bc_continuous.py", "TD3BC", dict(policy_freq=1)),
    "iql_continuous": ("baselines/iql_continuous.py", "IQL", {}),
    "cql_continuous": ("baselines/cql_continuous.py", "CQL", dict(cql_n_actions=3)),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each case compiles as a fresh process would: the cases' optimisers would otherwise add up to dynamo's recompile
    limit for Adam's step, and the later cases would run it eagerly."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_update_matches_eager(name):
    # compiled code draws the same random numbers as eager. torch's own config.patch, not monkeypatch: on pytest 9
    # monkeypatch's undo deletes the attribute from the inductor config module and breaks every later case.
    with inductor_config.patch(fallback_random=True):
        check_compiled_update_matches_eager(name)


def check_compiled_update_matches_eager(name):
    path, cls_name, overrides = CASES[name]
    module = load_script(ROOT / path)
    args = module.Args(hidden_dim=32, batch_size=16, **overrides)

    def make_agent(compile: bool):  # MISA's agent compiles its HMC transition itself under --compile
        torch.manual_seed(0)
        return throughput.make_agent(module, cls_name, replace(args, compile=compile), 3, 1, torch.device("cpu"),
                                     num_agents=2)

    torch.manual_seed(5)  # two agents: the compiled step is the many-seed step
    batch = (torch.randn(2, 16, 3), torch.rand(2, 16, 1) * 1.9 - 0.95, torch.randn(2, 16), torch.randn(2, 16, 3),
             torch.zeros(2, 16))
    eager, compiled = make_agent(False), make_agent(True)
    torch.manual_seed(1)
    eager_metrics = eager.update(*batch)
    torch.manual_seed(1)
    compiled_metrics = torch.compile(compiled.update)(*batch)
    for key, value in eager_metrics.items():
        if torch.isfinite(value).all():
            assert torch.allclose(value, compiled_metrics[key], rtol=1e-4, atol=1e-5), key
    for module_name in ("actor", "critic"):
        for (pname, p), q in zip(getattr(eager, module_name).named_parameters(),
                                 getattr(compiled, module_name).parameters()):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), (module_name, pname, (p - q).abs().max().item())


class FakeStream:
    def wait_stream(self, other):
        pass


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: counts replays."""

    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def test_cuda_graph_step_dispatch(monkeypatch):
    """CUDAGraphStep's bookkeeping, with the CUDA calls faked (CI has no GPU; benchmarks/check_cuda_graphs.py checks
    the real capture): each distinct Python argument tuple gets its own warm-up calls, then one capture, then only
    replays that return the captured outputs."""
    module = load_script(ROOT / "baselines/td3_bc_continuous.py")
    captures = []

    @contextlib.contextmanager
    def fake_capture(graph):
        captures.append(graph)
        yield

    monkeypatch.setattr(module.torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(module.torch.cuda, "current_stream", FakeStream)
    monkeypatch.setattr(module.torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(module.torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(module.torch.cuda, "graph", fake_capture)
    calls = []

    def step_fn(update_actor):
        calls.append(update_actor)
        return {"n": len(calls)}

    step = module.CUDAGraphStep(step_fn, warmup=2)
    outs = [step(i % 2 == 1) for i in range(10)]
    # per key: 2 eager warm-ups, 1 capture (which runs the Python once), then replays only
    assert calls == [False, True, False, True, False, True]
    assert len(captures) == 2 and set(step.graphs) == {(False,), (True,)}
    assert step.graphs[(False,)].replays == 3 and step.graphs[(True,)].replays == 3  # 1 right after capture + 2
    assert outs[4] is outs[6] is outs[8] and outs[5] is outs[7] is outs[9] and outs[4] is not outs[5]
