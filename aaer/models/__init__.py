"""Model zoo: a name registry (create_model / list_models / register_model), the
architectures of AAER's lineage with checkpoint-compatible state-dict keys, small CPU
models, normalisation as a separable layer, and tolerant checkpoint loading.
"""
from .registry import create_model, list_models, register_model
from . import preact_resnet, wide_resnet, resnet, resnet_cifar, small  # noqa: F401  (register)
from . import external  # noqa: F401  (package.module:factory and timm:<name>)
from .preact_resnet import PreActResNet18
from .wide_resnet import WideResNet, wideresnet
from .resnet import ResNet18ImageNet
from .resnet_cifar import ResNet18
from .small import LinearModel, SmallCNN
from .normalize import NORMALIZATIONS, Normalized, build, input_stats
from .loading import load_state_dict_into

__all__ = [
    "create_model", "list_models", "register_model", "Normalized", "build", "load_state_dict_into",
    "input_stats", "NORMALIZATIONS",
    "PreActResNet18", "WideResNet", "wideresnet", "ResNet18ImageNet", "ResNet18", "SmallCNN",
    "LinearModel",
]
