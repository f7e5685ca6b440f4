"""--compile: one compiled update and one eager update from the same state and batch agree (CPU).

Compilation takes a minute or two per algorithm on 2 cores; these are the slowest tests of the suite."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from conftest import ROOT, load_script

CASES = {
    "misa_continuous": ("misa_continuous.py", "MISA", dict(num_mc_samples=4, mcmc_burnin=2)),
    "td3_bc_continuous": ("baselines/td3_bc_continuous.py", "TD3BC", dict(policy_freq=1)),
    "iql_continuous": ("baselines/iql_continuous.py", "IQL", {}),
    "cql_continuous": ("baselines/cql_continuous.py", "CQL", dict(cql_n_actions=3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_update_matches_eager(name, monkeypatch):
    monkeypatch.setattr(inductor_config, "fallback_random", True)  # compiled code draws the same random numbers
    path, cls_name, overrides = CASES[name]
    module = load_script(ROOT / path)
    args = module.Args(hidden_dim=32, batch_size=16, **overrides)

    def make_agent():
        torch.manual_seed(0)
        if cls_name == "MISA":
            return module.MISA(args, 3, 1, torch.device("cpu"))
        return getattr(module, cls_name)(args, 3, 1, torch.device("cpu"), np.zeros(3, np.float32),
                                         np.ones(3, np.float32))

    torch.manual_seed(5)
    batch = (torch.randn(16, 3), torch.rand(16, 1) * 1.9 - 0.95, torch.randn(16), torch.randn(16, 3), torch.zeros(16))
    eager, compiled = make_agent(), make_agent()
    torch.manual_seed(1)
    eager_metrics = eager.update(*batch)
    torch.manual_seed(1)
    compiled_metrics = torch.compile(compiled.update)(*batch)
    for key, value in eager_metrics.items():
        if torch.isfinite(value):
            assert torch.allclose(value, compiled_metrics[key], rtol=1e-4, atol=1e-5), key
    for module_name in ("actor", "critic"):
        for (pname, p), q in zip(getattr(eager, module_name).named_parameters(),
                                 getattr(compiled, module_name).parameters()):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), (module_name, pname, (p - q).abs().max().item())
