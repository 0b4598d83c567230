"""DDIM sampling (Song, Meng & Ermon, arXiv 2010.02502), a drop-in for diffusers' ``DDIMScheduler``."""

from ddim.guidance import rescale_noise_cfg
from ddim.output import DDIMSchedulerOutput
from ddim.scheduler import DDIMScheduler

__version__ = "0.1.0"

__all__ = [
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "__version__",
    "rescale_noise_cfg",
]
