"""Name -> factory registry: the single place edgekit looks up its bundled models and what they expect."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from torch import nn

from edgekit.errors import ModelLoadError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelCfg:
    """What a model takes and gives, as timm's pretrained_cfg: input C,H,W, normalisation, class labels.

    An image becomes the model's input scaled to [0, 1], then (x - mean) / std per channel (one value or one
    per channel). `labels` names the output classes in order; None when the model has no fixed classes.
    """

    input_size: tuple[int, ...]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        channels = self.input_size[0]
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise ValueError(f"ModelCfg.{key} must hold 1 or {channels} (channels) values, found {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ModelCfg.std must be > 0, found {self.std}")


_FACTORIES: dict[str, tuple[Callable[..., nn.Module], ModelCfg]] = {}


def register_model(cfg: ModelCfg) -> Callable[[Factory], Factory]:
    """Register a factory under its own name with its cfg at the factory's default arguments."""
    def register(factory: Factory) -> Factory:
        name = factory.__name__
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice ({factory.__module__})")
        _FACTORIES[name] = (factory, cfg)
        return factory

    return register


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style pattern such as 'mcunet_*'."""
    return sorted(name for name in _FACTORIES if fnmatch.fnmatchcase(name, pattern))


def _entry(name: str) -> tuple[Callable[..., nn.Module], ModelCfg]:
    entry = _FACTORIES.get(name)
    if entry is None:
        raise ModelLoadError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return entry


def model_cfg(name: str) -> ModelCfg:
    """The registered cfg of model `name` at its factory's default arguments, without building it."""
    return _entry(name)[1]


def _check_overrides(name: str, factory: Callable[..., nn.Module], overrides: dict[str, Any]) -> None:
    """ModelLoadError naming the arguments `factory` does not take (`pretrained`: the models with weights)."""
    accepted = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return  # it takes anything: its own error, if any
    unknown = sorted(set(overrides) - set(accepted))
    if "pretrained" in unknown:
        with_weights = [n for n in list_models() if "pretrained" in inspect.signature(_FACTORIES[n][0]).parameters]
        raise ModelLoadError(f"model {name!r} has no bundled weights (--pretrained); edgekit ships weights for "
                             f"{', '.join(with_weights)} only: give your own trained model as module:factory")
    if unknown:
        raise ModelLoadError(f"model {name!r} takes no argument {', '.join(unknown)}; it takes "
                             f"{', '.join(accepted) or 'none'}")


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model in eval mode; overrides go to its factory (resolution, num_classes, ...).

    The model carries `input_shape` (N,C,H,W, batch 1) and `pretrained_cfg`, its cfg at that input size.
    """
    factory, cfg = _entry(name)
    _check_overrides(name, factory, overrides)
    model = factory(**overrides)
    shape = getattr(model, "input_shape", None)
    if not (isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)):
        raise ModelLoadError(f"model {name!r}: factory returned no integer tuple input_shape, found {shape!r}")
    if shape[1] != cfg.input_size[0]:
        raise ModelLoadError(f"model {name!r}: input has {shape[1]} channels, its cfg {cfg.input_size[0]}")
    model.pretrained_cfg = replace(cfg, input_size=shape[1:])  # type: ignore[assignment]  # plain attribute
    return model.eval()
