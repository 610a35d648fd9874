"""Name -> factory registry: the single place edgekit looks up its bundled models."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from edgekit.errors import ModelLoadError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Factory) -> Factory:
    """Register a plain factory function under its own name so create_model can build it."""
    name = factory.__name__
    if name in _FACTORIES:
        raise ValueError(f"model {name!r} is registered twice ({factory.__module__})")
    _FACTORIES[name] = factory
    return factory


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style pattern such as 'mcunet_*'."""
    return sorted(name for name in _FACTORIES if fnmatch.fnmatchcase(name, pattern))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model in eval mode; overrides go to its factory (resolution, num_classes, ...)."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ModelLoadError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    model = factory(**overrides)
    shape = getattr(model, "input_shape", None)
    if not (isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)):
        raise ModelLoadError(f"model {name!r}: factory returned no integer tuple input_shape, found {shape!r}")
    return model.eval()
