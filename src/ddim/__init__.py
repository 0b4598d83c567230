"""DDIM sampling (Song, Meng & Ermon, arXiv 2010.02502), a drop-in for diffusers' ``DDIMScheduler``."""

from ddim.exact_inversion import BDIALatent, EDICTLatent, sample_exact
from ddim.guidance import rescale_noise_cfg
from ddim.interpolation import slerp
from ddim.inverse_scheduler import DDIMInverseScheduler
from ddim.inversion import invert
from ddim.logprob import ddim_step_with_logprob
from ddim.model import Model, NonFiniteOutputError
from ddim.output import DDIMParallelSchedulerOutput, DDIMSchedulerOutput
from ddim.paper_step import ddim_step
from ddim.parallel_scheduler import DDIMParallelScheduler
from ddim.sampling import SamplingOutput, sample
from ddim.scheduler import DDIMScheduler

__version__ = "0.1.0"

__all__ = [
    "BDIALatent",
    "DDIMInverseScheduler",
    "DDIMParallelScheduler",
    "DDIMParallelSchedulerOutput",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "EDICTLatent",
    "Model",
    "NonFiniteOutputError",
    "SamplingOutput",
    "__version__",
    "ddim_step",
    "ddim_step_with_logprob",
    "invert",
    "rescale_noise_cfg",
    "sample",
    "sample_exact",
    "slerp",
]
