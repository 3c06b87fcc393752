"""Classifier / detector architectures by name, plus the DCGAN used to make fakes.

Importing this package registers the built-in architectures, so
``create_model("resnet18")`` works right after ``from cxr_ray.models import create_model``.
"""

from cxr_ray.models.registry import create_model, list_models, register_model, registered_models

# Imported for their @register_model side effect.
from cxr_ray.models import cnn as _cnn  # noqa: E402,F401
from cxr_ray.models import torchvision_models as _torchvision_models  # noqa: E402,F401

__all__ = ["create_model", "list_models", "register_model", "registered_models"]
