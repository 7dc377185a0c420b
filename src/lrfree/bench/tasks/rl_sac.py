"""Soft Actor-Critic (Haarnoja et al. 2018, the automatic-temperature version) on Hopper-v5.

The optimizer under test drives two networks, each through its own handle: the actor (a
tanh-squashed Gaussian policy) and the twin Q critics. The entropy temperature α is tuned by a
fixed Adam(3e-4) for every method, so that the comparison is about the two networks only.
The loss each handle's `step` receives is that network's own loss:

    critic:  Σ_{i=1,2} mean (Q_i(s, a) − y)²,
             y = r + γ (1 − terminated) (min_i Q̄_i(s', a') − α log π(a'|s')),  a' ~ π(·|s')
    actor:   mean (α log π(ã|s) − min_i Q_i(s, ã)),  ã ~ π(·|s) (reparameterised)

Q̄ are target copies of the critics, Polyak-averaged with τ = 0.005 after every update.
The actor loss is unbounded below and typically negative (it is −Q plus an entropy term), so
Polyak-type step sizes that assume f* = 0 see a loss that is not a suboptimality here.

`TrainLog.train_step` records the critic loss (the one of the two with a fixed lower bound, 0),
at the environment step it was computed on; evaluation points are environment steps too.
The metric is the mean undiscounted return of the deterministic policy tanh(μ(s)) over a fixed
set of evaluation episodes (reset seeds 10_000, 10_001, ...), the same for every run.

Determinism: the networks come from `seed`, and every random draw of the algorithm (warm-up
actions, exploration noise, replay sampling) comes from one generator seeded with `seed`;
the training environment is reset with `seed` once and then runs on its own seeded RNG.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrfree.bench.models import build_seeded
from lrfree.bench.tasks.base import Budget, OptimizerFactory, OptimizerHandle, TrainLog

ENV_ID = "Hopper-v5"
HIDDEN = 256
GAMMA = 0.99
TAU = 0.005
ALPHA_LR = 3e-4
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
EVAL_SEED = 10_000

# steps = environment steps; the networks are updated once per step after `start_steps`
# uniformly random warm-up steps, so each handle is built for steps − start_steps updates.
_BUDGETS = {
    "tiny": Budget("tiny", steps=250, batch_size=32, eval_every=125,
                   extra={"start_steps": 100, "eval_episodes": 1}),
    "quick": Budget("quick", steps=4000, batch_size=256, eval_every=2000,
                    extra={"start_steps": 1000, "eval_episodes": 5}),
    "full": Budget("full", steps=20_000, batch_size=256, eval_every=4000,
                   extra={"start_steps": 4000, "eval_episodes": 10}),
}


def _mlp(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, outputs),
    )


class Actor(nn.Module):
    """Gaussian policy squashed by tanh into the action box [-1, 1]^act_dim."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.net = _mlp(obs_dim, 2 * act_dim)

    def forward(
        self, obs: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Action and its log-density; with `noise=None` the deterministic action tanh(μ)."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        if noise is None:
            return torch.tanh(mean), None
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        pre_tanh = mean + log_std.exp() * noise
        gaussian = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log(1 − tanh²u) = 2(log 2 − u − softplus(−2u)): finite even where tanh u rounds to ±1.
        log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        return torch.tanh(pre_tanh), gaussian - log_det.sum(-1)


class TwinQ(nn.Module):
    """Two independent Q(s, a) networks; the minimum of the two curbs overestimation."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.q1 = _mlp(obs_dim + act_dim, 1)
        self.q2 = _mlp(obs_dim + act_dim, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class ReplayBuffer:
    """Fixed-size store of transitions, large enough for the whole run (nothing is evicted)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int,
                 device: torch.device | str = "cpu") -> None:
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.act = torch.zeros(capacity, act_dim, device=device)
        self.reward = torch.zeros(capacity, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.terminated = torch.zeros(capacity, device=device)
        self.size = 0

    def add(self, obs: torch.Tensor, act: torch.Tensor, reward: float,
            next_obs: torch.Tensor, terminated: bool) -> None:
        i = self.size
        self.obs[i], self.act[i], self.next_obs[i] = obs, act, next_obs
        self.reward[i], self.terminated[i] = reward, float(terminated)
        self.size += 1

    def sample(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        index = torch.randint(0, self.size, (batch_size,), generator=gen).to(self.obs.device)
        return (self.obs[index], self.act[index], self.reward[index], self.next_obs[index],
                self.terminated[index])


@dataclass
class _Agent:
    actor: Actor
    critic: TwinQ
    critic_target: TwinQ
    actor_handle: OptimizerHandle
    critic_handle: OptimizerHandle
    log_alpha: torch.Tensor
    alpha_opt: torch.optim.Optimizer
    target_entropy: float


def _update(agent: _Agent, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
    """One SAC update of critics, actor, temperature and targets; returns the critic loss."""
    obs, act, reward, next_obs, terminated = batch
    alpha = agent.log_alpha.detach().exp()
    with torch.no_grad():
        next_act, next_logp = agent.actor(next_obs, _noise(act.shape, gen, act.device))
        q1_next, q2_next = agent.critic_target(next_obs, next_act)
        soft_value = torch.min(q1_next, q2_next) - alpha * next_logp
        target = reward + GAMMA * (1.0 - terminated) * soft_value
    q1, q2 = agent.critic(obs, act)
    critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    agent.critic_handle.zero_grad()
    critic_loss.backward()
    agent.critic_handle.step(critic_loss.detach())

    # The actor's gradient reaches it through the critics' input only; frozen critic weights
    # skip their own (unused) gradients.
    agent.critic.requires_grad_(False)
    new_act, logp = agent.actor(obs, _noise(act.shape, gen, act.device))
    q1_new, q2_new = agent.critic(obs, new_act)
    actor_loss = (alpha * logp - torch.min(q1_new, q2_new)).mean()
    agent.actor_handle.zero_grad()
    actor_loss.backward()
    agent.actor_handle.step(actor_loss.detach())
    agent.critic.requires_grad_(True)

    alpha_loss = -(agent.log_alpha * (logp.detach() + agent.target_entropy)).mean()
    agent.alpha_opt.zero_grad()
    alpha_loss.backward()
    agent.alpha_opt.step()

    with torch.no_grad():
        torch._foreach_lerp_(list(agent.critic_target.parameters()),
                             list(agent.critic.parameters()), TAU)
    return critic_loss.detach()


def _noise(shape: torch.Size | tuple[int, ...], gen: torch.Generator,
           device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU generator (the same draws on every device)."""
    return torch.randn(shape, generator=gen).to(device)


def _make_env() -> Any:
    try:
        import gymnasium
    except ImportError as exc:
        raise ImportError(
            "the sac-hopper task needs MuJoCo environments: pip install 'gymnasium[mujoco]'"
        ) from exc
    return gymnasium.make(ENV_ID)


def _obs(x: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=device)


@torch.no_grad()
def evaluate_policy(actor: Actor, episodes: int, device: torch.device | str = "cpu") -> float:
    """Mean return of the deterministic policy over `episodes` episodes with fixed reset seeds."""
    env = _make_env()
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            action, _ = actor(_obs(obs, device), None)
            obs, reward, terminated, truncated, _ = env.step(action.cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return sum(returns) / len(returns)


class SACHopperTask:
    """SAC on Hopper-v5 (256x256 MLPs, batch 256, γ = 0.99, τ = 0.005, one update per step).

    Budgets (environment steps / random warm-up steps / eval episodes): tiny 250/100/1
    (tests, batch 32), quick 4,000/1,000/5, full 20,000/4,000/10 (16,000 updates:
    ~13 minutes a run on one core of this 2-core CPU).
    """

    name = "sac-hopper"
    family = "rl"
    metric = "return"
    higher_is_better = True

    def budget(self, level: str) -> Budget:
        """Environment steps, batch, eval interval and warm-up for `level` in tiny/quick/full."""
        return _BUDGETS[level]

    def _evaluate(self, agent: _Agent, episodes: int, device: torch.device | str = "cpu"
                  ) -> float:
        agent.actor_handle.eval()
        value = evaluate_policy(agent.actor, episodes, device)
        agent.actor_handle.train()
        return value

    def run(self, factory: OptimizerFactory, seed: int, level: str, log: TrainLog,
            device: torch.device | str = "cpu") -> float:
        """Train SAC for the budget's environment steps (networks and replay buffer on
        `device`, the simulator on the CPU); returns the final evaluation return."""
        budget = self.budget(level)
        start_steps = int(budget.extra["start_steps"])
        episodes = int(budget.extra["eval_episodes"])
        env = _make_env()
        obs_dim = env.observation_space.shape[0]
        act_dim = env.action_space.shape[0]
        nets = build_seeded(
            lambda: nn.ModuleDict({"actor": Actor(obs_dim, act_dim),
                                   "critic": TwinQ(obs_dim, act_dim)}), seed).to(device)
        actor, critic = nets["actor"], nets["critic"]
        critic_target = copy.deepcopy(critic).requires_grad_(False)
        updates = budget.steps - start_steps
        log_alpha = torch.zeros((), device=device, requires_grad=True)
        agent = _Agent(
            actor=actor, critic=critic, critic_target=critic_target,
            actor_handle=factory(actor.parameters(), updates),
            critic_handle=factory(critic.parameters(), updates),
            log_alpha=log_alpha, alpha_opt=torch.optim.Adam([log_alpha], lr=ALPHA_LR),
            target_entropy=-float(act_dim),
        )
        buffer = ReplayBuffer(budget.steps, obs_dim, act_dim, device)
        gen = torch.Generator().manual_seed(seed)
        obs = _obs(env.reset(seed=seed)[0], device)
        for step in range(budget.steps):
            if step < start_steps:
                action = (torch.rand(act_dim, generator=gen) * 2.0 - 1.0).to(device)
            else:
                with torch.no_grad():
                    action, _ = actor(obs, _noise((act_dim,), gen, obs.device))
            next_obs, reward, terminated, truncated, _ = env.step(action.cpu().numpy())
            next_obs = _obs(next_obs, device)
            buffer.add(obs, action, float(reward), next_obs, terminated)
            obs = _obs(env.reset()[0], device) if terminated or truncated else next_obs
            if step >= start_steps:
                critic_loss = _update(agent, buffer.sample(budget.batch_size, gen), gen)
                log.train_step(step, critic_loss, agent.critic_handle)
            if (step + 1) % budget.eval_every == 0 and step + 1 < budget.steps:
                log.evaluate(step + 1, self._evaluate(agent, episodes, device))
        env.close()
        final = self._evaluate(agent, episodes, device)
        log.evaluate(budget.steps, final)
        return final
