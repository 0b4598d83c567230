"""A manual DDIM denoising loop with an exact analytic model (no download, no training).

The data distribution is N(mu, s^2 I); its noise predictor is known in closed form, so the loop must
land on samples with mean ~mu and std ~s. Run: ``python examples/denoise_loop.py``.
"""

import torch

from ddim import DDIMScheduler

mu, s = 0.5, 0.2
scheduler = DDIMScheduler(clip_sample=False)
scheduler.set_timesteps(50)
alphas = scheduler.alphas_cumprod.double()


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps*(x_t) = sqrt(1-a)(x_t - sqrt(a) mu) / (a s^2 + 1 - a) for x_0 ~ N(mu, s^2)."""
    a = alphas[t]
    return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)


x = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
for t in scheduler.timesteps:
    x = scheduler.step(model(x, t), t, x).prev_sample
print(f"sample mean {x.mean():.3f} (target {mu}), std {x.std():.3f} (target {s})")
