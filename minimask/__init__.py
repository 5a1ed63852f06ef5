"""minimask: Mask R-CNN from scratch in NumPy, with CuPy and raw CUDA kernels for the GPU.

Read it chapter by chapter (nbs/), verify each stage (pytest), train it for real.
Public names follow torchvision, so every stage can be checked against it.
"""

from . import backend, init, tape
from .backend import get_array_module, make_rng, scatter_add, to_host
from .module import Module, ModuleList, Parameter, Sequential, load_state_file, save_state_dict
from .tape import Tensor, no_grad

__version__ = "0.1.0"
