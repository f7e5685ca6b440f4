"""Builds tiny Minari datasets for the tests (no jax: create_dataset_from_buffers)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np


def record_episodes(env, num_episodes: int, seed: int, choose_action):
    """Run `choose_action(obs)` for whole episodes and return them as Minari EpisodeBuffers."""
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for ep in range(num_episodes):
        obs, _ = env.reset(seed=seed + ep)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        while True:
            action = choose_action(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated)
            if terminated or truncated:
                break
        buffers.append(EpisodeBuffer(observations=stack_observations(observations), actions=np.array(actions),
                                     rewards=np.array(rewards), terminations=np.array(terms),
                                     truncations=np.array(truncs)))
    env.close()
    return buffers


def pendulum_episodes(num_episodes: int, seed: int, policy: str = "random", max_steps: int = 200):
    """Pendulum-v1 episodes. policy 'energy' is a scripted swing-up-and-balance controller (about -130 per
    200-step episode against about -1200 for random)."""
    env = gym.make("Pendulum-v1", max_episode_steps=max_steps)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)

    def energy_controller(obs):
        cos, sin, vel = obs
        theta = np.arctan2(sin, cos)
        if cos > 0.85:  # near upright: PD balance
            u = -12.0 * theta - 2.5 * vel
        else:  # energy pumping: push along the velocity while energy is below the upright level
            energy = 0.5 * vel**2 + 15.0 * (cos - 1.0)
            u = 2.0 * np.sign(-vel * energy) if abs(vel) > 1e-2 else 2.0
        return np.clip(np.array([u]) + 0.3 * rng.standard_normal(1), -2.0, 2.0).astype(np.float32)

    choose = (lambda obs: env.action_space.sample()) if policy == "random" else energy_controller
    return record_episodes(env, num_episodes, seed, choose)


def build(dataset_id: str, buffers, env="Pendulum-v1", ref_min=-1400.0, ref_max=-150.0, **kwargs):
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return minari.create_dataset_from_buffers(
            dataset_id, buffer=buffers, env=gym.spec(env) if isinstance(env, str) else env,
            ref_min_score=ref_min, ref_max_score=ref_max, algorithm_name="test", description="tiny test dataset",
            **kwargs,
        )


def cartpole_episodes(num_episodes: int, seed: int):
    """Discrete-action episodes: the scripts must reject these with a clear message."""
    env = gym.make("CartPole-v1")
    env.action_space.seed(seed)
    return record_episodes(env, num_episodes, seed, lambda obs: env.action_space.sample())


def stack_observations(observations: list):
    """A list of (possibly nested dict) observations as arrays with a leading time axis, as Minari stores them."""
    if isinstance(observations[0], dict):
        return {k: stack_observations([o[k] for o in observations]) for k in observations[0]}
    return np.array(observations)


def robotics_episodes(env_id: str, num_episodes: int, seed: int, max_steps: int = 30):
    """Random-action episodes of a gymnasium-robotics env (AntMaze, PointMaze, Adroit, Kitchen), dict observations
    kept."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    env = gym.make(env_id, max_episode_steps=max_steps)
    env.action_space.seed(seed)
    buffers = record_episodes(env, num_episodes, seed, lambda obs: env.action_space.sample())
    return env.spec, buffers
