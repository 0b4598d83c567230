"""DDIM sampling (Song, Meng & Ermon, arXiv 2010.02502), a drop-in for diffusers' ``DDIMScheduler``."""

from ddim.exact_inversion import BDIALatent, EDICTLatent, sample_exact
from ddim.guidance import CFGPlusPlus, ClassifierFreeGuidance, ClassifierGuidance, rescale_noise_cfg
from ddim.inpainting import Inpainting
from ddim.interpolation import slerp
from ddim.inverse_scheduler import DDIMInverseScheduler
from ddim.inversion import invert
from ddim.logprob import ddim_step_with_logprob
from ddim.model import Model, ModelWrapper, NonFiniteOutputError, Prediction
from ddim.output import DDIMParallelSchedulerOutput, DDIMSchedulerOutput
from ddim.paper_step import ddim_step
from ddim.parallel_scheduler import DDIMParallelScheduler
from ddim.plan import StepPlan
from ddim.sampling import LoopResult, SamplingOutput, sample
from ddim.scheduler import DDIMScheduler
from ddim.scheduler_protocol import DDIMSchedulerLike

__version__ = "0.1.0"

__all__ = [
    "BDIALatent",
    "CFGPlusPlus",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "DDIMInverseScheduler",
    "DDIMParallelScheduler",
    "DDIMParallelSchedulerOutput",
    "DDIMScheduler",
    "DDIMSchedulerLike",
    "DDIMSchedulerOutput",
    "EDICTLatent",
    "Inpainting",
    "LoopResult",
    "Model",
    "ModelWrapper",
    "NonFiniteOutputError",
    "Prediction",
    "SamplingOutput",
    "StepPlan",
    "__version__",
    "ddim_step",
    "ddim_step_with_logprob",
    "invert",
    "rescale_noise_cfg",
    "sample",
    "sample_exact",
    "slerp",
]
