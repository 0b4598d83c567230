"""``ddim.diffusers.DDIMScheduler``: our stepping core inside a real ``diffusers.DDIMScheduler`` subclass.

Needs the optional extra ``ddim[diffusers]``. The class *is* a diffusers scheduler (``isinstance``
checks of pipelines pass, diffusers' ``ConfigMixin``/``SchedulerMixin`` provide ``config``,
``from_config``, ``save_pretrained``, ``from_pretrained`` and ``compatibles``), while the schedule and
the hot paths (``set_timesteps``, ``step``, ``add_noise``, ``get_velocity``, ``scale_model_input``)
run on this package's core (:class:`ddim.stepping.DDIMStepping`), with its validation, float64
coefficient tables and sync-free tensor timesteps.

Saving and loading in a pipeline: ``pipe.save_pretrained`` records the component in
``model_index.json`` as ``["ddim.diffusers", "DDIMScheduler"]`` (diffusers writes the full module
path of a class from a library it does not know). ``DiffusionPipeline.from_pretrained`` resolves that
entry only when ``ddim.diffusers`` has already been imported in the process (diffusers never imports
a module named by a repository; otherwise it raises ``ValueError`` naming the module); it then hands
the pipeline's ``__init__`` an instance of this class.
Pipelines that keep the scheduler they are given (most, e.g. ``DDPMPipeline``)
therefore get this class back. ``DDIMPipeline.__init__`` is an exception: it always rebuilds its
scheduler as ``diffusers.DDIMScheduler.from_config(...)``, so after constructing or loading a
``DDIMPipeline`` assign ``pipe.scheduler = ddim.diffusers.DDIMScheduler.from_config(pipe.scheduler.config)``.
"""

from __future__ import annotations

import inspect
from typing import Any

try:
    import diffusers
    from diffusers.configuration_utils import register_to_config
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ddim.diffusers needs diffusers; install the extra with: pip install 'ddim[diffusers]'"
    ) from error

from ddim.scheduler import DDIMScheduler as CoreScheduler
from ddim.stepping import DDIMStepping

__all__ = ["DDIMScheduler", "DDIMSchedulerOutput", "SchedulerMixin"]
# ``SchedulerMixin`` must be an attribute of this module: when loading a component declared as
# ["ddim.diffusers", "DDIMScheduler"], diffusers looks its loadable base classes up by name in the
# declared module and picks the loading method (``from_pretrained``) of the one the class derives from.


def _build_from_core(self: DDIMScheduler, *args: Any, **kwargs: Any) -> None:
    """Validate the arguments and build the float32 schedule tables with the core scheduler.

    Its state (everything but its own config) becomes this scheduler's state.
    """
    core = CoreScheduler(*args, **kwargs)
    state = {k: v for k, v in vars(core).items() if k != "_internal_dict"}
    vars(self).update(state, init_noise_sigma=core.init_noise_sigma)


# diffusers reads a scheduler's arguments from the signature of ``__init__`` (to record the config and
# in ``from_config``): give the constructor the core's signature, so both classes take the same
# arguments, with the same defaults, without restating them.
setattr(_build_from_core, "__signature__", inspect.signature(CoreScheduler.__init__))  # noqa: B010


class DDIMScheduler(DDIMStepping, diffusers.DDIMScheduler):
    """A ``diffusers.DDIMScheduler`` whose schedule and stepping are :mod:`ddim`'s.

    Same constructor (every argument of :class:`ddim.DDIMScheduler`), config, file format and numbers
    as :class:`ddim.DDIMScheduler`; ``step`` returns diffusers' ``DDIMSchedulerOutput``.
    """

    output_class = DDIMSchedulerOutput
    __init__ = register_to_config(_build_from_core)
