"""The D4RL/ domains (AntMaze, PointMaze, Adroit, Kitchen) without a network: tiny datasets built here from the real
gymnasium-robotics envs with random actions, with the structure of Farama's (dictionary observations for the mazes,
reference scores, the env spec), trained on for a few steps and evaluated by every script."""

from __future__ import annotations

import csv
import sys
import tempfile
import warnings
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from conftest import ROOT, load_script

import make_tiny_dataset as tiny

SCRIPTS = {"misa": "misa_continuous.py", "cql": "baselines/cql_continuous.py",
           "td3_bc": "baselines/td3_bc_continuous.py", "iql": "baselines/iql_continuous.py"}
MODULES = {name: load_script(ROOT / path) for name, path in SCRIPTS.items()}
DOMAINS = {"antmaze": ("AntMaze_UMaze-v5", "test/antmaze/umaze-v1"),
           "pointmaze": ("PointMaze_UMaze-v3", "test/pointmaze/umaze-v2"),
           "adroit": ("AdroitHandDoor-v1", "test/door/human-v2"),
           "kitchen": ("FrankaKitchen-v1", "test/kitchen/mixed-v2")}


@pytest.fixture(scope="module", autouse=True)
def maze_xml_stays_in_pytest_tmp(tmp_path_factory):
    """gymnasium-robotics 1.4.2 writes each maze it builds as an XML file straight into the system temp folder and
    never deletes it (38 files per suite run); this module's temp folder is pytest's own, which pytest prunes."""
    scratch = tmp_path_factory.mktemp("tempdir")
    with pytest.MonkeyPatch.context() as patch:  # undone when the module's tests end
        patch.setattr(tempfile, "tempdir", str(scratch))
        patch.setenv("TMPDIR", str(scratch))
        yield scratch


@pytest.fixture(scope="module")
def domain_datasets(datasets_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for env_id, dataset_id in DOMAINS.values():
            spec, episodes = tiny.robotics_episodes(env_id, num_episodes=3, seed=0, max_steps=30)
            tiny.build(dataset_id, episodes, env=spec, ref_min=0.0, ref_max=1.0)
    return datasets_root


def test_flattening_order_on_a_hand_built_example():
    space = gym.spaces.Dict({
        "desired_goal": gym.spaces.Dict({"kettle": gym.spaces.Box(-1, 1, (2,)), "burner": gym.spaces.Box(-1, 1, (1,))}),
        "observation": gym.spaces.Box(-1, 1, (3,)),
        "achieved_goal": gym.spaces.Box(-1, 1, (2,)),
    })
    obs = {"observation": np.array([1.0, 2.0, 3.0]), "achieved_goal": np.array([4.0, 5.0]),
           "desired_goal": {"kettle": np.array([7.0, 8.0]), "burner": np.array([6.0])}}
    expected = [1, 2, 3, 4, 5, 6, 7, 8]  # observation, achieved_goal, desired_goal (its keys sorted: burner, kettle)
    for module in MODULES.values():
        assert module.flatten_observations(space, obs).tolist() == expected
        episode = {"observation": np.stack([obs["observation"]] * 4), "achieved_goal": np.stack([obs["achieved_goal"]] * 4),
                   "desired_goal": {k: np.stack([v] * 4) for k, v in obs["desired_goal"].items()}}
        assert module.flatten_observations(space, episode).tolist() == [expected] * 4  # a time axis is kept
        assert module.flatten_observations(gym.spaces.Box(-1, 1, (3,)), obs["observation"]).tolist() == [1, 2, 3]


def test_antmaze_observation_holds_no_position_so_achieved_goal_is_kept(domain_datasets):
    """Why achieved_goal is flattened in: AntMaze's `observation` starts at the torso height, not at x-y."""
    import minari

    episode = next(minari.load_dataset(DOMAINS["antmaze"][1]).iterate_episodes())
    obs, goal = episode.observations["observation"], episode.observations["achieved_goal"]
    assert obs.shape[1] == 105 and goal.shape[1] == 2
    assert not any(np.allclose(obs[:, i:i + 2], goal) for i in range(obs.shape[1] - 1))


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("algo", list(SCRIPTS))
def test_each_script_trains_and_evaluates_on_each_domain(algo, domain, domain_datasets, tmp_path, monkeypatch):
    module = MODULES[algo]
    env_id, dataset_id = DOMAINS[domain]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["script", "--eval-episodes", "2"])  # as typed: a flag wins over presets
    extra = dict(num_mc_samples=2, mcmc_burnin=1) if algo == "misa" else {}
    args = module.Args(env_id=dataset_id, total_timesteps=4, eval_freq=4, eval_episodes=2, final_eval_episodes=2,
                       batch_size=16,
                       hidden_dim=16, log_freq=2, run_name="r", cuda=False, **extra)
    module.main(args)
    with open(tmp_path / "runs" / "r" / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [4] and np.isfinite(float(rows[0]["normalized_score"]))
    data = module.read_transitions(dataset_id, 0.999)[1]
    dataset = module.load_dataset(dataset_id)
    flat_dim = module.make_eval_env(dataset, dataset_id).observation_space.shape[0]
    assert data["obs"].shape == (90, flat_dim)  # 3 episodes of 30 steps, flattened as the eval env's observations
    if domain == "kitchen":  # 59 robot and object states, then the 7 tasks' achieved and desired goals (17 values each)
        assert flat_dim == 59 + 17 + 17
    if domain in ("antmaze", "pointmaze"):
        inner = dataset.observation_space["observation"].shape[0]
        assert flat_dim == inner + 4  # + achieved_goal + desired_goal
        assert data["dones"].sum() == 0  # the maze envs are continuing tasks: episodes end by truncation only


def test_reward_processing_and_presets_follow_the_dataset_id(monkeypatch):
    misa = MODULES["misa"]
    r = np.array([0.0, 1.0, 0.5], np.float32)
    assert misa.process_rewards(r, "auto", "D4RL/antmaze/umaze-v1")[1] == "antmaze"
    assert misa.process_rewards(r, "auto", "D4RL/antmaze/umaze-v1")[0].tolist() == [-2.0, 2.0, 0.0]
    assert misa.process_rewards(r, "auto", "D4RL/door/human-v2")[1] == "minmax"
    assert misa.process_rewards(r, "auto", "D4RL/kitchen/mixed-v2")[1] == "minmax"
    assert misa.process_rewards(r, "auto", "D4RL/pointmaze/umaze-v2")[1] == "none"
    monkeypatch.setattr(sys, "argv", ["script"])
    cql, iql, td3_bc = MODULES["cql"], MODULES["iql"], MODULES["td3_bc"]
    args = cql.Args(env_id="D4RL/antmaze/large-diverse-v1")
    cql.apply_dataset_presets(args)
    assert (args.reward_scale, args.reward_bias, args.cql_lagrange, args.cql_target_action_gap, args.cql_alpha,
            args.cql_max_target_backup, args.critic_layers, args.normalize_states) == (10.0, -5.0, True, 0.8, 5.0,
                                                                                      True, 5, False)
    args = iql.Args(env_id="D4RL/antmaze/umaze-v1")
    iql.apply_dataset_presets(args)
    assert (args.expectile, args.beta, args.reward_bias) == (0.9, 10.0, -1.0)
    args = td3_bc.Args(env_id="D4RL/antmaze/umaze-v1")
    td3_bc.apply_dataset_presets(args)
    assert args.reward_bias == -1.0
    # a flag on the command line wins over the preset; locomotion and Adroit ids get no domain preset
    monkeypatch.setattr(sys, "argv", ["script", "--expectile", "0.8"])
    args = iql.Args(env_id="D4RL/antmaze/umaze-v1", expectile=0.8)
    iql.apply_dataset_presets(args)
    assert (args.expectile, args.beta) == (0.8, 10.0)
    for env_id in ("walker2d-medium", "D4RL/door/human-v2"):
        args = iql.Args(env_id=env_id)
        assert iql.apply_dataset_presets(args) == [] and args.reward_bias == 0.0


def test_an_env_that_cannot_be_built_is_one_line_and_kitchen_says_why(capsys):
    def broken(eval_env):
        raise AssertionError

    dataset = SimpleNamespace(spec=SimpleNamespace(env_spec=gym.spec("FrankaKitchen-v1") if "FrankaKitchen-v1" in
                                                   gym.registry else SimpleNamespace(id="FrankaKitchen-v1")),
                              recover_environment=broken)
    for module in MODULES.values():
        with pytest.raises(SystemExit):
            module.make_eval_env(dataset, "D4RL/kitchen/mixed-v2")
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "MuJoCo 3.12 or newer" in err and "requirements.txt" in err, err
