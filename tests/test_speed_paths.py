"""The fast paths of the speed round beside their references, on the CPU: --steps-per-replay (several training steps
per call of the step, one CUDA-graph replay on a GPU) takes exactly the steps that one step per call takes, the
device-side watch of non-finite losses names the right step, no training step reads back from the device, a run
computes with denormal floats flushed to zero in all its threads, and benchmarks/compare_runs.py reports two runs side
by side. benchmarks/check_cuda_graphs.py is the GPU counterpart."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, load_script, read_csv_rows, run_script

CASES = {
    "misa_continuous": ("misa_continuous.py", "MISA", "misa", dict(num_mc_samples=4, mcmc_burnin=2)),
    "td3_bc_continuous": ("baselines/td3_bc_continuous.py", "TD3BC", "td3_bc", {}),
    "iql_continuous": ("baselines/iql_continuous.py", "IQL", "iql", {}),
    "cql_continuous": ("baselines/cql_continuous.py", "CQL", "cql", dict(cql_n_actions=3)),
}
MODULES = {name: load_script(ROOT / path) for name, (path, *_) in CASES.items()}
throughput = load_script(ROOT / "benchmarks" / "throughput.py")  # builds the step as the scripts' loops do


def train(name: str, steps_per_replay: int, steps: int) -> tuple[dict, dict, int]:
    path, cls_name, algo, overrides = CASES[name]
    module = MODULES[name]
    args = module.Args(hidden_dim=16, batch_size=8, num_seeds=2, steps_per_replay=steps_per_replay, **overrides)
    torch.manual_seed(0)
    data = throughput.synthetic_dataset(64, 3, 2, torch.device("cpu"))
    agent, run_steps = throughput.make_step(module, cls_name, algo, args, data, torch.device("cpu"))
    torch.manual_seed(1)
    calls = 0
    for first in range(0, steps, steps_per_replay):
        metrics = run_steps(first)
        calls += 1
    params = {f"{m}.{k}": v.clone() for m in ("actor", "critic") for k, v in getattr(agent, m).state_dict().items()}
    return params, metrics, calls


@pytest.mark.parametrize("name", list(CASES))
def test_several_steps_per_call_take_the_same_steps(name):
    """Six steps as two calls of three equal six calls of one, bit for bit (TD3+BC's delayed actor steps included)."""
    one_params, one_metrics, one_calls = train(name, 1, 6)
    three_params, three_metrics, three_calls = train(name, 3, 6)
    assert (one_calls, three_calls) == (6, 2)
    for key, value in one_params.items():
        assert torch.equal(value, three_params[key]), key
    for key, value in one_metrics.items():  # the call returns the metrics of its last step
        assert torch.equal(value, three_metrics[key]) or not torch.isfinite(value).all(), key


def test_non_finite_watch_names_the_first_bad_step_and_loss():
    module = MODULES["td3_bc_continuous"]
    watch = module.NonFiniteWatch(("critic_loss", "actor_loss"), 3, 100, torch.device("cpu"))
    good = {"losses/critic_loss": torch.zeros(3), "losses/actor_loss": torch.zeros(3)}
    bad = {"losses/critic_loss": torch.tensor([0.0, float("nan"), 0.0]), "losses/actor_loss": torch.zeros(3)}
    worse = {"losses/critic_loss": torch.full((3,), float("inf")), "losses/actor_loss": torch.full((3,), float("nan"))}
    for metrics in (good, good, bad, worse, good):
        watch.record(metrics)
    assert watch.step.item() == 105
    assert watch.first_bad_step.item() == 103  # the third step after step 100; later ones do not overwrite it
    assert watch.bad_losses.tolist() == [[False, True, False], [False, False, False]]


def test_steps_per_replay_run_matches_one_step_per_call(datasets_root, tmp_path):
    """End to end: --steps-per-replay 4 with logs every 5 steps and evaluations every 10 (calls of 4 and 1 steps)
    writes the same evaluations and the same checkpoint as one step per call."""
    common = ("--env-id", "test/pendulum/energy-v0", "--total-timesteps", "23", "--eval-freq", "10", "--log-freq", "5",
              "--eval-episodes", "1", "--final-eval-episodes", "1", "--batch-size", "16", "--hidden-dim", "16",
              "--save-model", "--no-cuda")
    for k in (1, 4):
        r = run_script("baselines/td3_bc_continuous.py", *common, "--steps-per-replay", str(k), "--run-name", f"k{k}",
                       cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
    one, four = (tmp_path / "runs" / "k1", tmp_path / "runs" / "k4")
    assert [r["step"] for r in read_csv_rows(four / "evaluations.csv")] == ["10", "20", "23"]
    assert read_csv_rows(one / "evaluations.csv") == read_csv_rows(four / "evaluations.csv")
    a = torch.load(one / "checkpoint.pt", weights_only=False)["agent"]
    b = torch.load(four / "checkpoint.pt", weights_only=False)["agent"]
    for part in ("actor", "critic"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)


def test_non_finite_loss_is_reported_at_its_step_with_several_steps_per_call(datasets_root, tmp_path):
    r = run_script("misa_continuous.py", "--env-id", "test/pendulum/huge-v0", "--total-timesteps", "20",
                   "--eval-freq", "10", "--log-freq", "10", "--steps-per-replay", "4", "--num-mc-samples", "2",
                   "--mcmc-burnin", "1", "--batch-size", "8", "--hidden-dim", "8", "--eval-episodes", "1",
                   "--final-eval-episodes", "1", "--no-cuda", cwd=tmp_path, timeout=300)
    assert r.returncode == 1
    assert "non-finite critic_loss of seed 1 at step 1" in r.stderr and "Traceback" not in r.stderr


def test_compare_runs_reports_scalars_and_evaluations(tmp_path):
    """benchmarks/compare_runs.py (the TF32 ablation's report): the last-values means and relative differences."""
    from torch.utils.tensorboard import SummaryWriter

    for name, scale in (("a", 1.0), ("b", 1.1)):
        writer = SummaryWriter(str(tmp_path / name))
        for step in (10, 20, 30):
            writer.add_scalar("losses/critic_loss", scale * step, step)
        writer.close()
        (tmp_path / name / "evaluations.csv").write_text(
            "step,mean_return,std_return,normalized_score,episodes,final\n30,1.0,0.0,%.1f,10,1\n" % (50 * scale))
    r = run_script("benchmarks/compare_runs.py", str(tmp_path / "a"), str(tmp_path / "b"), "--last", "2",
                   cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| losses/critic_loss | 30 / 30 | 25 | 27.5 | +10.00% |" in r.stdout
    assert "| 30 | 50.0 | 55.0 | 10 / 10 |" in r.stdout
    (tmp_path / "empty").mkdir()
    r = run_script("benchmarks/compare_runs.py", str(tmp_path / "empty"), str(tmp_path / "empty"), cwd=tmp_path,
                   timeout=120)
    assert r.returncode != 0 and "error:" in r.stderr and "Traceback" not in r.stderr
    # one real run against a folder that is not one (a typo'd path, its parent): refused, not a column of dashes
    r = run_script("benchmarks/compare_runs.py", str(tmp_path / "a"), str(tmp_path / "empty"), cwd=tmp_path,
                   timeout=120)
    assert r.returncode != 0 and f"error: {tmp_path / 'empty'} is not a run directory" in r.stderr, r.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_training_step_reads_nothing_back_from_the_device(name):
    """No host-device sync in the hot loop: one training step (minibatch, update, non-finite watch) makes no .item()
    read outside the optimisers (counted by benchmarks/throughput.py --count-ops, which also counts its operations)."""
    path, cls_name, algo, overrides = CASES[name]
    module = MODULES[name]
    args = module.Args(hidden_dim=16, batch_size=8, num_seeds=2, **overrides)
    data = throughput.synthetic_dataset(64, 3, 2, torch.device("cpu"))
    _, run_steps = throughput.make_step(module, cls_name, algo, args, data, torch.device("cpu"))
    run_steps(0)
    counts = throughput.count_ops(run_steps, 1)
    assert counts["host_reads_per_step"] == 0, counts
    assert counts["ops_per_step"] > 10


def test_throughput_compiles_each_configuration_afresh():
    """benchmarks/throughput.py times several configurations in one process. Each must compile as a run of the script
    does, not recompile the previous configuration's graphs with a dynamic seed dimension (timed as if it were the
    script's step)."""
    import torch._dynamo.utils

    module = MODULES["iql_continuous"]
    data = throughput.synthetic_dataset(64, 3, 2, torch.device("cpu"))
    for seeds in (1, 2):
        args = module.Args(hidden_dim=16, batch_size=8, num_seeds=seeds, compile=True)
        _, run_steps = throughput.make_step(module, "IQL", "iql", args, data, torch.device("cpu"))
        run_steps(0)  # compiles
    reasons = [str(r) for failures in torch._dynamo.utils.guard_failures.values() for r in failures]
    assert not any("size mismatch" in r for r in reasons), reasons


def test_throughput_records_a_failing_configuration_and_times_the_rest(tmp_path, monkeypatch):
    """A configuration that fails (on a GPU: a kernel that does not compile there, memory) is recorded with its error
    and the next one is still timed; the JSON holds both, and the exit status says that one failed."""
    make_step = throughput.make_step

    def failing_for_td3_bc(module, cls_name, algo, *args):
        if algo == "td3_bc":
            raise RuntimeError("out of resources: shared memory\n(second line of the message)")
        return make_step(module, cls_name, algo, *args)

    monkeypatch.setattr(throughput, "make_step", failing_for_td3_bc)
    monkeypatch.setattr(throughput, "load", lambda path: MODULES[path.stem])  # the modules this file already loaded
    out = tmp_path / "throughput.json"
    status = throughput.main(throughput.Args(algos=["td3_bc", "iql"], seconds=0.05, warmup=4, dataset_size=512,
                                             cuda=False, out=str(out)))
    failed, timed = throughput.json.loads(out.read_text())["results"]
    assert status == 1
    assert failed["algo"] == "td3_bc" and failed["error"] == "RuntimeError: out of resources: shared memory"
    assert "steps_per_s" not in failed
    assert timed["algo"] == "iql" and "error" not in timed and timed["steps_per_s"] > 0 and timed["steps_timed"] >= 5


@pytest.mark.parametrize("name", list(CASES))
def test_a_run_flushes_denormal_floats_in_every_thread(datasets_root, tmp_path, name):
    """main() switches the CPU to flush denormal floats to zero before torch starts its thread pool, which inherits the
    switch: after a short run, 1e-39 * 1 is 0 in both threads' halves of a two-thread op. Without the switch every
    element stays 1e-39; with it set after the pool had started, the other thread's half would."""
    path, *_ = CASES[name]
    check = tmp_path / "run_then_check.py"  # the script's run, then a two-thread op in the same process
    check.write_text("import runpy, sys, torch\n"
                     "sys.argv = sys.argv[1:]\n"
                     "runpy.run_path(sys.argv[0], run_name='__main__')\n"
                     "left = int((torch.full((1 << 20,), 1e-39) * 1.0).count_nonzero())\n"
                     "print('denormals left', left, torch.get_num_threads())\n")
    r = run_script(str(check), str(ROOT / path), "--env-id", "test/pendulum/energy-v0", "--total-timesteps", "2",
                   "--eval-freq", "2", "--eval-episodes", "1", "--final-eval-episodes", "1", "--hidden-dim", "16",
                   "--no-cuda", "--run-name", "r", cwd=tmp_path, extra_env={"OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "denormals left 0 2", r.stdout
