"""A diffusion policy's action loop with ddim: the drop-in, then the whole loop as one CUDA graph.

A policy denoises an action chunk (batch, horizon, action_dim) conditioned on observation features,
with Diffusion Policy's scheduler config (T = 100, ``squaredcos_cap_v2``, ``clip_sample=True``).

1. Drop-in: the policy's own loop, with diffusers' ``DDIMScheduler`` replaced by ``ddim.DDIMScheduler``
   (same arguments, same loop, the same actions).
2. Graphed (CUDA only): ``GraphedSampler`` records model + step for all steps once, with the
   observation as a per-call input; each new observation is one ``sampler(x_T, global_cond=obs)``,
   with no Python in the loop. (For the network size robot policies use, see
   ``benchmarks/policy_latency.py``.)

Run: ``python examples/policy_loop.py`` (the graphed part runs where CUDA is available).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import ddim
from ddim.graphs import GraphedSampler

CONFIG = {
    "num_train_timesteps": 100,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
}
HORIZON, ACTION_DIM, OBS_DIM, STEPS = 16, 7, 32, 10


class Policy(nn.Module):
    """A small conditional noise predictor: ``policy(actions, t, global_cond)`` (random weights here)."""

    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(HORIZON * ACTION_DIM + 2 * 16 + OBS_DIM, width),
            nn.Mish(),
            nn.Linear(width, width),
            nn.Mish(),
            nn.Linear(width, HORIZON * ACTION_DIM),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).to(x.device).expand(x.shape[0]).float()
        angles = t[:, None] * torch.exp(torch.arange(16, device=x.device) * (-math.log(1000.0) / 15))
        features = torch.cat([x.flatten(1), angles.sin(), angles.cos(), global_cond], dim=1)
        return self.net(features).view_as(x)


def act(policy: nn.Module, scheduler: object, obs: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    """The policy's loop, written once for any diffusers-style scheduler."""
    scheduler.set_timesteps(STEPS)  # type: ignore[attr-defined]
    x = x_T
    for t in scheduler.timesteps:  # type: ignore[attr-defined]
        x = scheduler.step(policy(x, t, obs), t, x).prev_sample  # type: ignore[attr-defined]
    return x


def main(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    policy = Policy().to(device).eval()
    obs = torch.randn(1, OBS_DIM, device=device)
    x_T = torch.randn(1, HORIZON, ACTION_DIM, device=device)
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        results["ddim"] = act(policy, ddim.DDIMScheduler(**CONFIG), obs, x_T)
        try:
            from diffusers import DDIMScheduler as DiffusersDDIM
        except ImportError:
            print("diffusers is not installed: the comparison is skipped")
        else:
            results["diffusers"] = act(policy, DiffusersDDIM(**CONFIG), obs, x_T)
            gap = float((results["ddim"] - results["diffusers"]).abs().max())
            print(f"drop-in: largest action difference from diffusers' loop {gap:.1e}")
        if device.startswith("cuda"):
            sampler = GraphedSampler(
                policy,
                ddim.DDIMScheduler(**CONFIG),
                x_T.shape,
                extra_inputs={"global_cond": obs},
                num_inference_steps=STEPS,
                device=device,
            )
            results["graphed"] = sampler(x_T, global_cond=obs)  # a new observation: call again, no new capture
            gap = float((results["graphed"] - results["ddim"]).abs().max())
            print(f"graphed: largest action difference from the eager loop {gap:.1e}")
        else:
            print("graphed loop: needs CUDA, skipped")
    print(f"actions {tuple(results['ddim'].shape)}, first step {results['ddim'][0, 0].tolist()}")
    return results


if __name__ == "__main__":
    main()
