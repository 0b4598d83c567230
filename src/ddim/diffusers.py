"""``ddim.diffusers``: our stepping core inside real diffusers scheduler subclasses.

``DDIMScheduler``, ``DDIMInverseScheduler`` and ``DDIMParallelScheduler`` here *are* diffusers'
classes of the same names (``isinstance`` checks of pipelines pass; diffusers' ``ConfigMixin`` and
``SchedulerMixin`` provide ``config``, ``from_config``, ``save_pretrained``, ``from_pretrained`` and
``compatibles``), while the schedule and the hot paths (``set_timesteps``, ``step``,
``batch_step_no_noise``, ``add_noise``, ``get_velocity``, ``scale_model_input``) run on this package's
core, with its validation, float64 coefficient tables and sync-free tensor timesteps. Needs the
optional extra: ``pip install -e '.[diffusers]'``.

Saving and loading in a pipeline: ``pipe.save_pretrained`` records the component in
``model_index.json`` as ``["ddim.diffusers", "DDIMScheduler"]`` (diffusers writes the full module
path of a class from a library it does not know), and writes options diffusers lacks only when they
differ from their defaults. ``DiffusionPipeline.from_pretrained`` resolves that entry only when
``ddim.diffusers`` has already been imported in the process (diffusers never imports a module named
by a repository; otherwise it raises ``ValueError`` naming the module); it then hands the pipeline's
``__init__`` an instance of this class. Pipelines that keep the scheduler they are given (most, e.g.
``DDPMPipeline``) therefore get this class back. ``DDIMPipeline.__init__`` is an exception: it always
rebuilds its scheduler as ``diffusers.DDIMScheduler.from_config(...)``, so after constructing or
loading a ``DDIMPipeline`` assign ``pipe.scheduler = ddim.diffusers.DDIMScheduler.from_config(pipe.scheduler.config)``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

try:
    import diffusers
    from diffusers.configuration_utils import register_to_config
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddim_parallel import DDIMParallelSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ddim.diffusers needs diffusers; install the extra from the repository: pip install -e '.[diffusers]'"
    ) from error

from ddim import inverse_scheduler, parallel_scheduler, scheduler
from ddim.config import ConfigMixin, config_json, hide_default_options, without_default_options
from ddim.inverse_scheduler import InverseStepping
from ddim.parallel_scheduler import ParallelStepping
from ddim.stepping import DDIMStepping

__all__ = [
    "DDIMInverseScheduler",
    "DDIMParallelScheduler",
    "DDIMParallelSchedulerOutput",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "SchedulerMixin",
]
# ``SchedulerMixin`` must be an attribute of this module: when loading a component declared as
# ["ddim.diffusers", "DDIMScheduler"], diffusers looks its loadable base classes up by name in the
# declared module and picks the loading method (``from_pretrained``) of the one the class derives from.


def core_constructor(core: type[ConfigMixin]) -> Callable[..., None]:
    """An ``__init__`` that validates the arguments and builds the schedule tables with the stand-alone
    class ``core``, whose state (everything but its config) becomes this scheduler's state.

    diffusers reads a scheduler's arguments from the signature of ``__init__`` (to record the config
    and in ``from_config``): the function carries ``core``'s signature, so both classes take the same
    arguments, with the same defaults, without restating them.
    """

    def build(self: Any, *args: Any, **kwargs: Any) -> None:
        built = core(*args, **kwargs)
        state = {k: v for k, v in vars(built).items() if k != "_internal_dict"}
        vars(self).update(state, init_noise_sigma=built.init_noise_sigma)
        if "set_alpha_to_zero" in kwargs:  # the inverse's deprecated alias: record what it set
            self.register_to_config(set_alpha_to_one=built.config["set_alpha_to_one"])

    constructor = next(vars(cls)["__init__"] for cls in core.__mro__ if "__init__" in vars(cls))
    setattr(build, "__signature__", inspect.signature(constructor))  # noqa: B010
    return build


class OwnOptionsOnlyWhenSet:
    """A config without our extra options at their defaults, in memory and in ``scheduler_config.json``
    (``config.<option>`` still reads the default), so that diffusers' classes take it without an
    "unexpected config attributes" warning; ``_use_default_values`` lists what diffusers' class would."""

    extra_options: dict[str, Any] = {}

    def register_to_config(self, **kwargs: Any) -> None:
        super().register_to_config(**kwargs)  # type: ignore[misc]
        keys = [name for name in inspect.signature(type(self).__init__).parameters if name not in ("self", "kwargs")]
        config = self.config  # type: ignore[attr-defined]
        cleaned = type(config)(without_default_options(config, keys, self.extra_options))
        self._internal_dict = hide_default_options(cleaned, self.extra_options)

    def to_json_string(self) -> str:
        return config_json(json.loads(super().to_json_string()), self.extra_options)  # type: ignore[misc]


class DDIMScheduler(OwnOptionsOnlyWhenSet, DDIMStepping, diffusers.DDIMScheduler):
    """A ``diffusers.DDIMScheduler`` whose schedule and stepping are :mod:`ddim`'s.

    Same constructor (every argument of :class:`ddim.DDIMScheduler`), config, file format and numbers
    as :class:`ddim.DDIMScheduler`; ``step`` returns diffusers' ``DDIMSchedulerOutput``.
    """

    output_class = DDIMSchedulerOutput
    extra_options = scheduler.DDIMScheduler.extra_options
    __init__ = register_to_config(core_constructor(scheduler.DDIMScheduler))


class DDIMInverseScheduler(OwnOptionsOnlyWhenSet, InverseStepping, diffusers.DDIMInverseScheduler):
    """A ``diffusers.DDIMInverseScheduler`` running on :class:`ddim.DDIMInverseScheduler`'s core (same
    constructor, config and numbers); ``step`` returns diffusers' ``DDIMSchedulerOutput``."""

    output_class = DDIMSchedulerOutput
    extra_options = inverse_scheduler.DDIMInverseScheduler.extra_options
    _compatibles = inverse_scheduler.DDIMInverseScheduler._compatibles  # diffusers' own lists none
    __init__ = register_to_config(core_constructor(inverse_scheduler.DDIMInverseScheduler))


class DDIMParallelScheduler(OwnOptionsOnlyWhenSet, ParallelStepping, diffusers.DDIMParallelScheduler):
    """A ``diffusers.DDIMParallelScheduler`` running on :class:`ddim.DDIMParallelScheduler`'s core (same
    constructor, config and numbers); ``step`` returns diffusers' ``DDIMParallelSchedulerOutput``."""

    output_class = DDIMParallelSchedulerOutput
    extra_options = parallel_scheduler.DDIMParallelScheduler.extra_options
    __init__ = register_to_config(core_constructor(parallel_scheduler.DDIMParallelScheduler))
