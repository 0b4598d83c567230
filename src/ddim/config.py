"""Scheduler configuration that behaves like diffusers' ``FrozenDict`` / ``ConfigMixin``.

The configuration of a scheduler is exactly its constructor's arguments. It is stored in
``scheduler.config`` (an ordered mapping with attribute access), written to and read from
``scheduler_config.json`` in the format diffusers uses, so configs move freely between diffusers
and this package. No diffusers import is needed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch

from ddim.config_files import default_value_keys, naming_file, read_config_file
from ddim.validation import ArgumentTypeError, ArgumentValueError, RefusesItemChanges

CONFIG_NAME = "scheduler_config.json"
#: The diffusers release whose behaviour and file format this package reproduces.
DIFFUSERS_COMPAT_VERSION = "0.42.1"


def written_diffusers_version() -> str:
    """The ``_diffusers_version`` a saved config records: the installed diffusers' version (as diffusers'
    own classes write it), else :data:`DIFFUSERS_COMPAT_VERSION`. Reads package metadata only: diffusers
    is not imported."""
    try:
        return importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        return DIFFUSERS_COMPAT_VERSION


class FrozenConfig(RefusesItemChanges, OrderedDict):  # type: ignore[type-arg,unused-ignore]
    """An ordered mapping with attribute access whose items cannot be changed.

    Like diffusers' ``FrozenDict``: item mutation raises, while assigning an attribute
    (``config.clip_sample = False``) changes what attribute access returns, because
    diffusers' own guard never triggers and pipelines rely on that. Schedulers read their
    settings through attribute access at call time, so such an assignment takes effect.
    """

    item_change_advice = "build a new config with from_config"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_FrozenConfig__sealed", True)

    def __setitem__(self, key: Any, value: Any) -> None:
        if getattr(self, "_FrozenConfig__sealed", False):
            self._refuse()
        super().__setitem__(key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self.items()),), dict(self.__dict__))

    def __copy__(self) -> FrozenConfig:
        clone = type(self)(self.items())
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenConfig:
        import copy

        clone = type(self)(copy.deepcopy(list(self.items()), memo))
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


def json_value(value: Any) -> Any:
    """A config value as JSON can hold it (arrays and tensors become lists, paths strings)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def resolve_config_path(path: str | os.PathLike[str], subfolder: str | None = None) -> Path:
    """The ``scheduler_config.json`` for a file, a folder, or a folder's ``subfolder``."""
    base = Path(path)
    if subfolder:
        base = base / subfolder
    if base.is_file():
        return base
    candidate = base / CONFIG_NAME
    if candidate.is_file():
        return candidate
    raise ArgumentValueError(
        f"no {CONFIG_NAME} found at {os.fspath(base)!r}; pass a local folder holding it, "
        "or the file itself (hub downloads are not supported)"
    )


def warn_ignored_keys(keys: list[str], class_name: str, stacklevel: int) -> None:
    """One ``UserWarning`` naming config keys a class does not take (they are ignored)."""
    warnings.warn(f"config keys {keys} are not arguments of {class_name} and are ignored", UserWarning, stacklevel)


S = TypeVar("S", bound="ConfigMixin")
F = TypeVar("F", bound=Callable[..., None])
M = TypeVar("M", bound=Mapping[str, Any])


def records_config(init: F) -> F:
    """Decorate ``__init__`` so its arguments (defaults filled in) become the instance's config.

    The names of arguments left at their defaults are kept in ``_use_default_values``, as diffusers
    does; ``from_config`` drops those keys so that another class applies its own defaults.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: ConfigMixin, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        passed = set(bound.arguments) - {"self"}
        bound.apply_defaults()
        values = {k: v for k, v in bound.arguments.items() if k not in ("self", "kwargs")}
        defaults = list(set(values) - passed)
        self.register_to_config(**values, **({"_use_default_values": defaults} if defaults else {}))
        init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def is_default_option(key: str, value: Any, extra_options: Mapping[str, Any]) -> bool:
    """Whether ``key`` is one of our ``extra_options`` (options diffusers lacks) and ``value`` its default."""
    if key not in extra_options:
        return False
    default = extra_options[key]
    return type(value) is type(default) and bool(value == default)


def without_default_options(
    config: Mapping[str, Any], init_keys: list[str], extra_options: Mapping[str, Any]
) -> dict[str, Any]:
    """``config`` without our ``extra_options`` at their defaults, and ``_use_default_values`` without any
    of them, listed as diffusers' class of the same name lists it (its set difference over the other
    ``init_keys``), so that diffusers' classes take the config without an "unexpected attributes" warning
    and configs compare equal after round trips through diffusers' classes."""
    kept = {k: v for k, v in config.items() if not is_default_option(k, v, extra_options)}
    listed = kept.pop("_use_default_values", None)
    if listed:
        keys = [k for k in init_keys if k not in extra_options]
        used = set(listed) - set(extra_options)
        ordered = list(set(keys) - (set(keys) - used)) + [k for k in listed if k in used and k not in keys]
        if ordered:
            kept["_use_default_values"] = ordered
    return kept


def hide_default_options(config: M, extra_options: Mapping[str, Any]) -> M:
    """Make ``config.<option>`` read an absent option's default (attribute access only: the mapping itself,
    its keys, JSON and comparisons, holds no option at its default). Returns ``config``."""
    for key, default in extra_options.items():
        if key not in config:
            object.__setattr__(config, key, default)
    return config


def config_json(data: Mapping[str, Any], extra_options: Mapping[str, Any]) -> str:
    """``data`` as a ``scheduler_config.json`` text (diffusers' format), without the ``extra_options``
    (options diffusers lacks, with their defaults) whose value is their default."""
    kept = {k: v for k, v in data.items() if not is_default_option(k, v, extra_options)}
    return json.dumps(kept, indent=2, sort_keys=True) + "\n"


class ConfigMixin:
    """Config storage, ``from_config``, ``save_config``/``save_pretrained`` and ``from_pretrained``."""

    config_name = CONFIG_NAME
    #: Constructor options diffusers' class of the same name lacks, with their defaults (not saved at them).
    extra_options: dict[str, Any] = {}
    #: Deprecated keyword arguments that ``from_config`` passes on to the constructor (as diffusers).
    _deprecated_kwargs: list[str] = []
    _internal_dict: FrozenConfig

    @property
    def config(self) -> FrozenConfig:
        """The constructor arguments (and metadata), read by the scheduler at call time."""
        return self._internal_dict

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or replace config entries (a new frozen mapping replaces the old one); our options at their
        defaults are left out (``config.<option>`` still reads them), see :func:`without_default_options`."""
        current = self.__dict__.get("_internal_dict", {})
        merged = dict(current)
        merged.update(kwargs)
        extra = type(self).extra_options
        self._internal_dict = hide_default_options(
            FrozenConfig(without_default_options(merged, type(self).init_keys(), extra)), extra
        )

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("_internal_dict")
        if config is not None and name in config:
            warnings.warn(
                f"accessing config attribute {name!r} on the scheduler is deprecated; use scheduler.config.{name}",
                FutureWarning,
                stacklevel=2,
            )
            return config[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def init_keys(cls) -> list[str]:
        """The constructor's parameter names, in order."""
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]

    @overload
    @classmethod
    def from_config(
        cls: type[S], config: Mapping[str, Any] | Any = ..., return_unused_kwargs: Literal[False] = ..., **kwargs: Any
    ) -> S: ...

    @overload
    @classmethod
    def from_config(
        cls: type[S], config: Mapping[str, Any] | Any = ..., *, return_unused_kwargs: Literal[True], **kwargs: Any
    ) -> tuple[S, dict[str, Any]]: ...

    @classmethod
    def from_config(
        cls: type[S],
        config: Mapping[str, Any] | Any = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> S | tuple[S, dict[str, Any]]:
        """Build a scheduler from a config mapping (a dict, a diffusers ``FrozenDict`` or ours).

        Keyword arguments override config entries. As in diffusers, keys listed in
        ``_use_default_values`` take this class's defaults and metadata keys (``_class_name``,
        ``_diffusers_version``) are not constructor arguments. Keys this class does not know (for
        example ``skip_prk_steps`` of a PNDM config) are ignored with one warning and kept in the
        new config, as diffusers keeps them.
        """
        if config is None:
            config = {}
        if hasattr(config, "config") and not isinstance(config, Mapping):
            config = config.config
        if not isinstance(config, Mapping):
            raise ArgumentTypeError(f"config must be a mapping, got {type(config).__name__}")
        used_defaults = default_value_keys(config)
        source = {k: v for k, v in config.items() if k not in used_defaults and k != "_use_default_values"}
        keys = cls.init_keys()
        init_dict: dict[str, Any] = {}
        for key in keys:
            if key in kwargs:
                init_dict[key] = kwargs.pop(key)
            elif key in source:
                init_dict[key] = source[key]
        for key in cls._deprecated_kwargs:
            if key in kwargs:
                init_dict[key] = kwargs.pop(key)
        foreign = {k: v for k, v in source.items() if k not in init_dict and not k.startswith("_") and k not in keys}
        if foreign:
            warn_ignored_keys(sorted(foreign), cls.__name__, stacklevel=3)
        instance = cls(**init_dict)
        hidden = {k: v for k, v in source.items() if k not in init_dict and k not in keys}
        if hidden:
            instance.register_to_config(**hidden)
        if return_unused_kwargs:
            return instance, dict(kwargs)
        return instance

    def to_json_string(self) -> str:
        """The config as diffusers writes it: sorted keys, ``_class_name`` and ``_diffusers_version`` (the
        installed diffusers', else the compatible release; also recorded in ``config``, as diffusers does);
        options of ours that diffusers lacks only when not at their defaults, so diffusers' class loads the
        file without a warning."""
        self.register_to_config(_class_name=type(self).__name__, _diffusers_version=written_diffusers_version())
        data = {k: json_value(v) for k, v in self.config.items() if k not in ("_use_default_values", "_ignore_files")}
        return config_json(data, type(self).extra_options)

    def save_config(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``scheduler_config.json`` into ``save_directory`` (created if needed)."""
        if push_to_hub:
            raise ArgumentValueError("push_to_hub=True is not supported: this package never contacts a hub")
        folder = Path(save_directory)
        if folder.is_file():
            raise ArgumentValueError(f"save_directory={os.fspath(folder)!r} is a file; pass a directory")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.config_name).write_text(self.to_json_string(), encoding="utf-8")

    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Alias of :meth:`save_config`, as for diffusers schedulers."""
        self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def load_config(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], subfolder: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Read a config from a local file or folder (``subfolder`` as in diffusers)."""
        return read_config_file(resolve_config_path(pretrained_model_name_or_path, subfolder))

    @overload
    @classmethod
    def from_pretrained(
        cls: type[S],
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = ...,
        return_unused_kwargs: Literal[False] = ...,
        **kwargs: Any,
    ) -> S: ...

    @overload
    @classmethod
    def from_pretrained(
        cls: type[S],
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = ...,
        *,
        return_unused_kwargs: Literal[True],
        **kwargs: Any,
    ) -> tuple[S, dict[str, Any]]: ...

    @classmethod
    def from_pretrained(
        cls: type[S],
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> S | tuple[S, dict[str, Any]]:
        """Load a scheduler from a local ``scheduler_config.json`` (a file, a folder, or a folder's subfolder)."""
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder)
        with naming_file(resolve_config_path(pretrained_model_name_or_path, subfolder)):
            if return_unused_kwargs:
                return cls.from_config(config, return_unused_kwargs=True, **kwargs)
            return cls.from_config(config, **kwargs)
