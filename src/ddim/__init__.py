"""DDIM sampling (Song, Meng & Ermon, arXiv 2010.02502), a drop-in for diffusers' ``DDIMScheduler``."""

from ddim.guidance import rescale_noise_cfg
from ddim.interpolation import slerp
from ddim.inverse import DDIMInverseScheduler, invert
from ddim.output import DDIMSchedulerOutput
from ddim.sampling import NonFiniteOutputError, SamplingOutput, sample
from ddim.scheduler import DDIMScheduler

__version__ = "0.1.0"

__all__ = [
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "NonFiniteOutputError",
    "SamplingOutput",
    "__version__",
    "invert",
    "rescale_noise_cfg",
    "sample",
    "slerp",
]
