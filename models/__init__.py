"""Networks for eidetic_func: each takes ``(x, task)`` and declares its prune topology."""

from eidetic_func.models.base import TaskModel
from eidetic_func.models.convnet import ConvNet
from eidetic_func.models.mlp import MLP
from eidetic_func.models.resnet import ResNet

from eidetic_func.nn.batchnorm import TaskBatchNorm1d, TaskBatchNorm2d, convert_batchnorm

__all__ = [
    "MLP",
    "ConvNet",
    "ResNet",
    "TaskBatchNorm1d",
    "TaskBatchNorm2d",
    "TaskModel",
    "convert_batchnorm",
]
