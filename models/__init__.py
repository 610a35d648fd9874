"""edgekit's bundled models: a timm-style registry; importing the package registers every model file."""

from . import detector, digits, mcunet, mobilenetv2, resnet  # noqa: F401  (importing registers the models)
from .registry import ModelCfg, create_model, list_models, model_cfg, register_model

__all__ = ["ModelCfg", "create_model", "list_models", "model_cfg", "register_model"]
