"""Networks for eidetic_func: each takes ``(x, task)`` and declares its prune topology."""

from eidetic_func.batchnorm import TaskBatchNorm1d, TaskBatchNorm2d, convert_batchnorm

from .base import TaskModel
from .convnet import ConvNet
from .mlp import MLP
from .resnet import ResNet

__all__ = [
    "MLP",
    "ConvNet",
    "ResNet",
    "TaskBatchNorm1d",
    "TaskBatchNorm2d",
    "TaskModel",
    "convert_batchnorm",
]
