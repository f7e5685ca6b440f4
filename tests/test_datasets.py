"""Tests of the dataset tools: tiny builds into the session's temporary MINARI_DATASETS_PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import minari
import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error, run_script

sys.path.insert(0, str(ROOT / "tools"))
import make_dataset  # noqa: E402
import train_behavior  # noqa: E402

SHIPPED = ROOT / "tools" / "behavior_policies"


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> Path:
    """A policies dir: the shipped hopper medium policy and replay buffer, plus an 'expert' stand-in (a randomly
    initialised actor) so that medium-expert can be built and checked without a trained expert."""
    d = tmp_path_factory.mktemp("policies")
    for f in ("hopper-medium.pt", "hopper-medium-replay.npz"):
        shutil.copy(SHIPPED / f, d / f)
    torch.manual_seed(0)
    actor = train_behavior.Actor(11, 3, 256)
    torch.save({"state_dict": actor.state_dict(), "obs_dim": 11, "act_dim": 3, "hidden_dim": 256, "env_id": "Hopper-v5",
                "sac_steps": 0, "seed": 0, "eval_return_mean": 0.0, "eval_return_std": 0.0}, d / "hopper-expert.pt")
    return d


def make(name, *extra, cwd, policies):
    return run_script("tools/make_dataset.py", name, "--policies-dir", str(policies), *extra, cwd=cwd, timeout=300)


def test_build_metadata_and_flags(datasets_root, tmp_path, policies):
    r = make("hopper-medium", "--num-steps", "3000", "--dataset-id", "t1/hopper/medium-v0", cwd=tmp_path,
             policies=policies)
    assert r.returncode == 0, r.stderr
    ds = minari.load_dataset("t1/hopper/medium-v0")
    meta = ds.storage.metadata
    assert meta["ref_min_score"] == pytest.approx(-20.272305) and meta["ref_max_score"] == pytest.approx(3234.3)
    assert ds.total_steps == 3000 and ds.spec.env_spec.id == "Hopper-v5"
    assert "hopper-medium.pt" in meta["description"] and "not D4RL itself" in meta["description"]
    assert minari.get_normalized_score(ds, np.array([3234.3]))[0] == pytest.approx(1.0)
    episodes = list(ds.iterate_episodes())
    for ep in episodes:
        assert len(ep.observations) == len(ep.actions) + 1
        assert ep.terminations[:-1].sum() == 0 and ep.truncations[:-1].sum() == 0  # flags only at episode ends
        assert ep.terminations[-1] != ep.truncations[-1]
        if ep.terminations[-1]:  # a Hopper termination is a fall: the env's healthy check fails on the last state
            z, angle = ep.observations[-1][0], ep.observations[-1][1]
            assert not (0.7 < z and abs(angle) < 0.2 and np.all(np.abs(ep.observations[-1][1:]) < 100))
    assert any(ep.terminations[-1] for ep in episodes)
    recovered = ds.recover_environment(eval_env=True)
    assert recovered.spec.max_episode_steps == 1000


def test_builds_are_identical_for_any_number_of_workers(datasets_root, tmp_path, policies):
    """Stepping groups of envs in worker processes changes nothing in the data, also when the budget ends mid-step."""
    episodes = {}
    for workers in ("1", "3"):  # 6 envs: all in this process, or 3 worker processes of 2
        r = make("hopper-medium", "--num-steps", "2501", "--num-envs", "6", "--workers", workers, "--dataset-id",
                 f"t5/hopper/medium-w{workers}-v0", cwd=tmp_path, policies=policies)
        assert r.returncode == 0, r.stderr
        episodes[workers] = list(minari.load_dataset(f"t5/hopper/medium-w{workers}-v0").iterate_episodes())
    assert len(episodes["1"]) == len(episodes["3"]) > 6  # some envs finished episodes and were reset
    assert sum(len(ep.actions) for ep in episodes["3"]) == 2501
    for a, b in zip(episodes["1"], episodes["3"]):
        for field in ("observations", "actions", "rewards", "terminations", "truncations"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field


# What a CPU without AVX2 or AVX-512 runs: torch's scalar kernels, MKL's SSE4.2 code, numpy at its baseline.
OLDER_CPU = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OPENBLAS_CORETYPE": "Nehalem",
             "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"}


def test_builds_are_the_same_on_any_cpu(datasets_root, tmp_path, policies):
    """The sampler uses only operations that IEEE 754 rounds the same everywhere, so a build held to the scalar and
    SSE code paths equals one on this CPU's widest vector units, bit for bit. The torch sampler it replaced failed
    this within 3,000 steps of hopper-medium (the same 10 episodes, other observations)."""
    for name in ("hopper-medium", "hopper-random"):
        episodes = {}
        for cpu, extra_env in (("this", {}), ("older", OLDER_CPU)):
            dataset_id = f"t6/{name}/{cpu}-v0"
            r = run_script("tools/make_dataset.py", name, "--num-steps", "3000", "--num-envs", "4", "--dataset-id",
                           dataset_id, "--policies-dir", str(policies), cwd=tmp_path, timeout=300, extra_env=extra_env)
            assert r.returncode == 0, r.stderr
            episodes[cpu] = list(minari.load_dataset(dataset_id).iterate_episodes())
        assert len(episodes["this"]) == len(episodes["older"]) > 4, name
        for a, b in zip(episodes["this"], episodes["older"]):
            for field in ("observations", "actions", "rewards", "terminations", "truncations"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), (name, field)


def test_sampler_is_the_actors_sample(policies):
    """The machine-independent sampler computes the torch actor's tanh-Gaussian sample: same noise, same actions up
    to float32 rounding."""
    actor, _ = train_behavior.load_actor(policies / "hopper-medium.pt")
    sampler = make_dataset.MachineIndependentSampler(actor, seed=3)
    obs = np.random.default_rng(0).normal(size=(64, 11))
    actions = sampler.sample(obs)
    noise = np.random.Generator(np.random.PCG64(3)).standard_normal((64, 3))
    with torch.no_grad():
        mean, log_std = actor.dist(torch.as_tensor(obs, dtype=torch.float32))
        expected = torch.tanh(mean + log_std.exp() * torch.as_tensor(noise, dtype=torch.float32)).numpy()
    assert actions.dtype == np.float32 and actions.shape == (64, 3)
    np.testing.assert_allclose(actions, expected, atol=1e-4)
    assert not np.allclose(actions, np.tanh(mean.numpy()), atol=1e-3)  # stochastic, not the mean action


def test_sampler_products_do_not_depend_on_the_summation_order(policies):
    """Each layer's product is a sum of integers below 2**53, exact in float64: it equals the exact sum (Python
    integers) and does not change when BLAS sums in another order (here: the inputs permuted), where a plain float64
    product does change, so the check can fail."""
    actor, _ = train_behavior.load_actor(policies / "hopper-medium.pt")
    sampler = make_dataset.MachineIndependentSampler(actor, seed=0)
    weight_q, weight_shift, bias, bits = layer = sampler.hidden[1]  # 256 inputs
    x = np.abs(np.random.default_rng(1).normal(size=(4, 256))) * 10.0
    out = sampler.linear(x, layer)
    x_q, x_shift = sampler.to_integers(x, bits)
    exact = np.array([[float(sum(int(a) * int(b) for a, b in zip(row, w))) for w in weight_q] for row in x_q])
    assert np.array_equal(out, np.ldexp(exact, -(x_shift[:, None] + weight_shift[None, :])) + bias)
    perm = np.random.default_rng(2).permutation(256)
    permuted = (weight_q[:, perm], weight_shift, bias, bits)
    assert np.array_equal(sampler.linear(x[:, perm], permuted), out)
    weight = np.ldexp(weight_q, -weight_shift[:, None])
    assert not np.array_equal(x[:, perm] @ weight[:, perm].T, x @ weight.T)  # plain float64: the order shows


def test_time_limit_is_a_truncation(datasets_root, tmp_path):
    """A policy that stands still in HalfCheetah never falls: every episode ends by the 1000-step truncation."""
    r = run_script("tools/make_dataset.py", "halfcheetah-random", "--num-steps", "2000", "--num-envs", "2",
                   "--dataset-id", "t2/halfcheetah/random-v0", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    episodes = list(minari.load_dataset("t2/halfcheetah/random-v0").iterate_episodes())
    assert [len(ep.actions) for ep in episodes] == [1000, 1000]
    assert all(ep.truncations[-1] and not ep.terminations.any() for ep in episodes)


def test_medium_expert_is_the_union_of_its_parts(datasets_root, tmp_path, policies):
    r = make("hopper-medium-expert", "--num-steps", "1500", "--dataset-id", "t3/hopper/medium-expert-v0",
             cwd=tmp_path, policies=policies)
    assert r.returncode == 0, r.stderr
    union = list(minari.load_dataset("t3/hopper/medium-expert-v0").iterate_episodes())
    parts = [list(minari.load_dataset(f"t3/hopper/{p}-v0").iterate_episodes()) for p in ("medium", "expert")]
    assert len(union) == len(parts[0]) + len(parts[1])
    for a, b in zip(union, parts[0] + parts[1]):
        assert np.array_equal(a.observations, b.observations) and np.array_equal(a.actions, b.actions)
        assert np.array_equal(a.rewards, b.rewards) and np.array_equal(a.terminations, b.terminations)
    # a part built by make_dataset.py 1.0 (data that depend on the CPU) is not mixed into a 2.0 union
    metadata_path = datasets_root / "t3" / "hopper" / "expert-v0" / "data" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["description"] = metadata["description"].replace("make_dataset.py 2.0 ", "make_dataset.py 1.0 ")
    metadata_path.write_text(json.dumps(metadata))
    r = make("hopper-medium-expert", "--num-steps", "1500", "--dataset-id", "t3/hopper/medium-expert-v0",
             "--overwrite", cwd=tmp_path, policies=policies)
    assert_clean_error(r, "t3/hopper/expert-v0 was built by make_dataset.py 1.0", "--overwrite")


def test_medium_replay_comes_from_the_shipped_buffer(datasets_root, tmp_path, policies):
    r = make("hopper-medium-replay", "--num-steps", "5000", "--dataset-id", "t4/hopper/medium-replay-v0",
             cwd=tmp_path, policies=policies)
    assert r.returncode == 0, r.stderr
    ds = minari.load_dataset("t4/hopper/medium-replay-v0")
    buf = np.load(policies / "hopper-medium-replay.npz")
    assert ds.total_steps == 5000
    first = next(iter(ds.iterate_episodes()))
    n = len(first.actions)
    assert np.allclose(first.actions, buf["actions"][:n]) and np.allclose(first.observations, buf["observations"][:n + 1])


def test_shipped_policies_beat_random_and_expert_beats_medium(datasets_root):
    policy, meta = train_behavior.load_actor(SHIPPED / "hopper-medium.pt")
    medium = train_behavior.evaluate(lambda o: policy.act(o, True, torch.device("cpu")), "Hopper-v5", 3, 123)
    random_actor = train_behavior.Actor(11, 3, 256)
    random = train_behavior.evaluate(lambda o: random_actor.act(o, True, torch.device("cpu")), "Hopper-v5", 3, 123)
    assert medium.mean() > random.mean() + 500
    expert_policy, _ = train_behavior.load_actor(SHIPPED / "hopper-expert.pt")
    expert = train_behavior.evaluate(lambda o: expert_policy.act(o, True, torch.device("cpu")), "Hopper-v5", 3, 123)
    assert expert.mean() > medium.mean() + 1000  # manifest: 3178 against 1496


def test_manifest_matches_shipped_files():
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert {f"{env}-{role}" for env in ("halfcheetah", "hopper", "walker2d") for role in ("medium", "expert")} <= set(manifest)
    for entry in manifest.values():
        assert (SHIPPED / entry["file"]).exists()
        assert entry["role"] == "expert" or (SHIPPED / entry["replay_file"]).exists()
        assert entry["eval_episodes"] >= 10 and entry["command"].startswith("python tools/train_behavior.py")
        blob = torch.load(SHIPPED / entry["file"], weights_only=False)
        assert blob["eval_return_mean"] == pytest.approx(entry["eval_return_mean"], abs=0.1)


def test_builders_of_one_dataset_take_turns(datasets_root, tmp_path, policies):
    """Runs of one dataset started together (benchmark.py --workers 2) each build it on first use. Unlocked, the later
    builder deleted the data while the first run opened it ('unable to lock file'); now the builders wait for whoever
    holds the build, and one builds while the other finds it built."""
    dataset_id = "t7/hopper/medium-v0"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET")
    command = [sys.executable, str(ROOT / "tools" / "make_dataset.py"), "hopper-medium", "--num-steps", "1500",
               "--dataset-id", dataset_id, "--policies-dir", str(policies)]
    with make_dataset.build_lock(dataset_id):  # this test holds the build until both builders are waiting for it
        builders = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True) for _ in range(2)]
        for builder in builders:
            for line in builder.stdout:  # ends early (and the test fails) if a builder runs without waiting
                if "waiting" in line:
                    break
            assert builder.poll() is None and "another process is building t7/hopper/medium-v0" in line, line
    outputs = [builder.communicate(timeout=300)[0] for builder in builders]
    assert all(builder.returncode == 0 for builder in builders), outputs
    assert sorted("was built by that process" in out for out in outputs) == [False, True], outputs
    assert sum("wrote t7/hopper/medium-v0" in out for out in outputs) == 1, outputs
    assert minari.load_dataset(dataset_id).total_steps == 1500
    assert not list(datasets_root.glob(".staging-*"))  # the builds' staging roots are gone


def test_a_write_that_fails_leaves_nothing_behind(datasets_root, monkeypatch):
    """Minari writes into a hidden staging root and the finished dataset is renamed into place, so no run ever opens a
    half-written dataset; a write that fails midway leaves neither the dataset nor the staging root, and Minari's root
    is the user's again."""
    def write_half_then_fail(dataset_id, **kwargs):
        from minari.storage.datasets_root_dir import get_dataset_path

        data = get_dataset_path(dataset_id) / "data"
        assert ".staging-" in str(data)  # never written where a run looks
        data.mkdir(parents=True)
        (data / "main_data.hdf5").write_bytes(b"half a dataset")
        raise OSError("No space left on device")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", write_half_then_fail)
    args = make_dataset.Args(name="hopper-random", num_steps=300, num_envs=2, workers=1, dataset_id="t8/hopper/random-v0")
    with pytest.raises(OSError, match="No space left"):
        make_dataset.build("hopper-random", args, "t8/hopper/random-v0")
    assert os.environ["MINARI_DATASETS_PATH"] == str(datasets_root)
    assert not (datasets_root / "t8" / "hopper" / "random-v0").exists()
    assert not list(datasets_root.glob(".staging-*"))


def test_a_stop_that_cuts_a_workers_reply_in_half_still_ends_the_workers(monkeypatch):
    """A Ctrl-C can land while the builder reads a worker's reply from its pipe; gymnasium's close() then reads the
    rest of that reply, fails to parse it (EOFError) and never ends the workers. The stop must still end the build as
    a KeyboardInterrupt, its one line, with every worker process ended."""
    import gymnasium.vector

    made, calls = [], []

    class StoppedInAReply(gymnasium.vector.AsyncVectorEnv):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def step_wait(self, timeout=None):  # the stop lands in the first read; close() then finds half a reply
            calls.append(timeout)
            raise KeyboardInterrupt if len(calls) == 1 else EOFError("Ran out of input")

    monkeypatch.setattr(gymnasium.vector, "AsyncVectorEnv", StoppedInAReply)
    env_id = make_dataset.ENVS["hopper"][0]
    with pytest.raises(KeyboardInterrupt):
        make_dataset.collect(env_id, make_dataset.random_actor(11, 3, 32, 0), 100, 0, 2, 2, "test")
    assert len(made) == 1 and calls == [None, 0]  # the step, then close(terminate=True)'s zero-timeout wait
    assert made[0].processes and not any(p.is_alive() for p in made[0].processes)
    assert made[0].closed  # so that gymnasium does not close it again when it is collected, and print that failure


def test_list_and_bad_names(datasets_root, tmp_path):
    r = run_script("tools/make_dataset.py", "--list", cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "walker2d-medium-replay" in r.stdout and "misa-pytorch/hopper/random-v0" in r.stdout
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    medium, expert = (f"{manifest[f'hopper-{k}']['eval_normalized_score']:.1f}" for k in ("medium", "expert"))
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("hopper-")}
    assert f" {medium} " in lines["hopper-medium"] and f" {medium} & {expert} " in lines["hopper-medium-expert"]
    r = run_script("tools/make_dataset.py", "hopper-mediun", cwd=tmp_path, timeout=60)
    assert_clean_error(r, "hopper-mediun", "hopper-medium-replay", "walker2d-expert")
    r = run_script("tools/make_dataset.py", "hopper-random", "--dataset-id", "mujoco/hopper/random-v0", cwd=tmp_path,
                   timeout=60)
    assert_clean_error(r, "Farama")


def test_sac_resumes_from_its_checkpoint(tmp_path):
    common = ["hopper", "--total-steps", "600", "--learning-starts", "200", "--eval-every", "300",
              "--eval-episodes", "2", "--checkpoint-every", "100", "--batch-size", "32", "--hidden-dim", "32",
              "--run-dir", str(tmp_path / "run"), "--out-dir", str(tmp_path / "out"), "--target-score", "99"]
    first = run_script("tools/train_behavior.py", *common[:2], "300", *common[3:], cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 300 and ckpt["replay"]["rewards"].shape == (300,)
    second = run_script("tools/train_behavior.py", *common, "--resume", cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 600 and len(ckpt["replay"]["rewards"]) == 600
    assert [h["step"] for h in ckpt["history"]] == [300, 600]


def test_replay_device_mirror_holds_the_transitions():
    """The packed mirror that GPU runs sample from (here on the CPU) holds exactly the stored transitions, also after
    a checkpoint reload, and device-side minibatches are rows of it."""
    rng = np.random.default_rng(0)
    replay = train_behavior.Replay(50, obs_dim=3, act_dim=2, mirror_device=torch.device("cpu"))
    for i in range(20):
        replay.add(rng.normal(size=3), rng.uniform(-1, 1, 2), float(i), rng.normal(size=3), i % 7 == 6, False)
    reloaded = train_behavior.Replay(50, obs_dim=3, act_dim=2, mirror_device=torch.device("cpu"))
    reloaded.load(replay.state())
    for r in (replay, reloaded):
        assert float(r.size_on_device) == 20
        np.testing.assert_array_equal(r.mirror[:20].numpy(), r.packed_rows(0, 20))
        assert not r.mirror[20:].any()
    torch.manual_seed(0)
    obs, act, rew, next_obs, term = replay.sample_on_device(4000)
    assert obs.shape == (4000, 3) and act.shape == (4000, 2) and rew.shape == term.shape == (4000,)
    idx = rew.long()  # rewards were the insertion index
    assert set(idx.tolist()) == set(range(20))  # uniform over the 20 stored rows, never an empty one
    np.testing.assert_array_equal(obs.numpy(), replay.obs[idx.numpy()])
    np.testing.assert_array_equal(next_obs.numpy(), replay.next_obs[idx.numpy()])
    np.testing.assert_array_equal(term.numpy(), replay.terminations[idx.numpy()].astype(np.float32))


def test_evaluate_policy_reevaluates_and_rejects_unknown_names(tmp_path):
    r = run_script("tools/evaluate_policy.py", "hopper-medium", "--episodes", "2", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    mean = float(r.stdout.split("hopper-medium: ")[1].split()[0])
    assert mean > 500  # the medium policy hops (random policies score about 20)
    assert_clean_error(run_script("tools/evaluate_policy.py", "hopper-mediun", cwd=tmp_path, timeout=60),
                       "no shipped policy named hopper-mediun", "hopper-medium", "walker2d-expert")
    assert_clean_error(run_script("tools/evaluate_policy.py", "runs/x/checkpoint.pt", cwd=tmp_path, timeout=60),
                       "no shipped policy named runs/x/checkpoint.pt", "names, not paths")
