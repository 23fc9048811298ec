"""Layers, ``Sequential``, initializers, optimizers + learning-rate schedules, the cnn7 model,
SyncBatchNorm, BN folding and the forward-only inference path.

Layers compute through ``cybn.functional`` only. Gradients are *overwritten* by ``backward``
(not accumulated as in PyTorch) — see ``cybn.nn.module``.
"""
from . import init
from .module import Module, generator_state, set_generator_state
from .layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU,
                     SoftmaxCrossEntropy)
from .container import HookHandle, Sequential
from .init import init_from_spec
from .optim import SGD, Adam, AdamW, LRSchedule, ConstantLR, CosineLR, StepLR, WarmupLR, schedule_from_spec
from .models import cnn7
from .sync_batchnorm import SyncBatchNorm1D, SyncBatchNorm2D, convert_sync_batchnorm
from .fuse import fuse_batchnorm
from .inference import infer, inference_mode

__all__ = ["Module", "generator_state", "set_generator_state", "Conv2D", "Linear", "BatchNorm1D", "BatchNorm2D", "ReLU", "MaxPool2D", "Flatten",
           "Dropout", "SoftmaxCrossEntropy", "Sequential", "HookHandle", "init", "init_from_spec",
           "SGD", "Adam", "AdamW", "LRSchedule",
           "ConstantLR", "StepLR", "CosineLR", "WarmupLR", "schedule_from_spec", "cnn7",
           "SyncBatchNorm1D", "SyncBatchNorm2D", "convert_sync_batchnorm", "fuse_batchnorm", "infer", "inference_mode"]
