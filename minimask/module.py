"""Modules: named parameters and buffers, nested like torch.nn so state-dict keys match torchvision.

A `Module` registers every `Parameter` (a leaf Tensor that requires grad), buffer (a plain array,
e.g. frozen batch-norm statistics) and sub-module assigned to it as an attribute. Their dotted
names (`backbone.body.layer1.0.conv1.weight`) are the keys of `state_dict()`, chosen to equal
torchvision's so weights can be moved between the two and every stage cross-checked.

Files:   `save_state_dict` / `load_state_file` write and read a plain `.npz` of named arrays
         (no pickle: loading runs no code), atomically (write to a temporary file, then rename).
Chapter: nbs/00_arrays_and_autograd.ipynb
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict

import numpy as np

from .backend import get_array_module, to_device, to_host
from .tape import Tensor


class Parameter(Tensor):
    """A trainable leaf tensor. `requires_grad=False` freezes it (no gradient, no update)."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype}, requires_grad={self.requires_grad})"


class Module:
    """Base class. Subclasses set attributes in `__init__` and implement `forward`."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration --------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):  # only called when normal lookup fails
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """A named array that is saved in the state dict but never trained (e.g. running_mean)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    def register_parameter(self, name, param):
        self.__setattr__(name, param)

    # --- traversal -----------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return iter(self._modules.values())

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix=""):
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    # --- modes ---------------------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag=True):
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def to(self, xp):
        """Move every parameter and buffer to the array module `xp` (numpy or cupy), in place."""
        for m in self.modules():
            for p in m._parameters.values():
                p.data = to_device(p.data, xp)
                p.grad = None
            for name in list(m._buffers):
                m._buffers[name] = to_device(m._buffers[name], xp)
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def num_parameters(self, trainable_only=False):
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")

    # --- state dict ----------------------------------------------------------------------------
    def state_dict(self):
        """OrderedDict name -> array (parameters and buffers), torchvision's key names."""
        out = OrderedDict()
        for name, p in self.named_parameters():
            out[name] = p.data
        for name, b in self.named_buffers():
            out[name] = b
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays into parameters and buffers by name. All or nothing.

        Every problem is collected first — missing keys, unexpected keys, shape mismatches — and
        reported in one ValueError; nothing is assigned unless everything fits. With
        `strict=False` missing and unexpected keys are tolerated (and returned), shapes are not.
        Returns (missing, unexpected).
        """
        targets = {}
        for mod_name, m in self.named_modules():
            for name in m._parameters:
                targets[f"{mod_name}.{name}" if mod_name else name] = (m, "param", name)
            for name in m._buffers:
                targets[f"{mod_name}.{name}" if mod_name else name] = (m, "buffer", name)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        mismatched = []
        for k, (m, kind, name) in targets.items():
            if k in state:
                have = (m._parameters[name].data if kind == "param" else m._buffers[name]).shape
                got = tuple(np.shape(state[k]))
                if tuple(have) != got:
                    mismatched.append(f"{k}: model {tuple(have)} vs state {got}")
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        if problems:
            raise ValueError("load_state_dict failed, nothing was loaded:\n  " + "\n  ".join(problems))
        for k, (m, kind, name) in targets.items():
            if k not in state:
                continue
            if kind == "param":
                p = m._parameters[name]
                xp = get_array_module(p.data)
                p.data = to_device(np.asarray(to_host(state[k]), dtype=p.data.dtype), xp).copy()
            else:
                b = m._buffers[name]
                xp = get_array_module(b)
                m._buffers[name] = to_device(np.asarray(to_host(state[k]), dtype=b.dtype), xp).copy()
        return missing, unexpected


class ModuleList(Module):
    """A list of modules named "0", "1", ... (as torch.nn.ModuleList, so keys read `layer1.0.conv1`)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m):
        self._modules[str(len(self._modules))] = m
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after another; sub-modules named "0", "1", ... as torch.nn.Sequential."""

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


def save_state_dict(state, path):
    """Write a dict name -> array to `path` as an uncompressed .npz, atomically.

    The file is first written beside its destination, then renamed over it, so a crash never
    leaves a half-written file under the final name. Arrays are copied to the host.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: to_host(v) for k, v in state.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state_file(path):
    """Read a .npz written by `save_state_dict` into an OrderedDict name -> NumPy array (no pickle)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return OrderedDict((k, f[k]) for k in f.files)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such state file") from None
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npz state file ({e})") from None
