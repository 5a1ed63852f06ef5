"""Load torchvision weights (converted to a .npz of named arrays) into minimask modules.

Files:   a `.npz` written by `tools/convert_torchvision.py in.pth out.npz` (or any dict name -> array).
         torch is never imported here: the converter is the only place that reads a `.pth`.
Names:   torchvision's own keys. A `maskrcnn_resnet50_fpn` state dict has `backbone.body.*`,
         `backbone.fpn.*`, `rpn.*`, `roi_heads.*`; an ImageNet `resnet50` has `conv1.*`, ..., `layer4.*`
         and `fc.*`. Keys are renamed by `prefix_map` (old prefix -> new prefix, first match wins).
Ignored: `*.num_batches_tracked` (a BatchNorm training counter; frozen norms have no use for it),
         `fc.*` of a classification network, and heads that the target model does not have. Every
         ignored key is returned in `LoadResult.ignored`, never dropped silently.
Errors:  missing keys, unexpected keys and shape mismatches are all listed in one ValueError by
         `Module.load_state_dict`; nothing is loaded half-way.
Chapter: nbs/03_resnet_fpn.ipynb
"""

from __future__ import annotations

import os
from collections import OrderedDict, namedtuple

from .module import Module, load_state_file
from .resnet import ResNet

LoadResult = namedtuple("LoadResult", ["missing", "unexpected", "ignored"])


def _read(path_or_dict):
    if isinstance(path_or_dict, (str, os.PathLike)):
        return load_state_file(path_or_dict)
    if isinstance(path_or_dict, dict):
        return OrderedDict(path_or_dict)
    raise TypeError(f"expected a path to a .npz or a dict name -> array, got {type(path_or_dict).__name__}")


def _rename(key, prefix_map):
    for old, new in prefix_map.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_torchvision_state(model, path_or_dict, prefix_map=None, ignore=(), strict=True):
    """Load torchvision-named arrays into `model`; returns LoadResult(missing, unexpected, ignored).

    prefix_map: {old_prefix: new_prefix} applied to each key (first matching prefix), e.g.
                {"backbone.": ""} to load a Mask R-CNN checkpoint into a BackboneWithFPN.
    ignore:     key prefixes (after renaming) to skip on purpose; `num_batches_tracked` is always skipped.
    Raises ValueError listing every missing / unexpected / mis-shaped key; the model is then unchanged.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a minimask Module, got {type(model).__name__}")
    prefix_map = dict(prefix_map or {})
    ignore = tuple(ignore)
    state, ignored = OrderedDict(), []
    for key, value in _read(path_or_dict).items():
        new = _rename(key, prefix_map)
        if key.endswith("num_batches_tracked") or (ignore and new.startswith(ignore)):
            ignored.append(key)
            continue
        state[new] = value
    missing, unexpected = model.load_state_dict(state, strict=strict)
    return LoadResult(missing, unexpected, ignored)


def _trunk(model):
    """The ResNet trunk inside `model`: the model itself, `model.body`, or `model.backbone.body`."""
    for path in ((), ("body",), ("backbone", "body")):
        m = model
        try:
            for name in path:
                m = getattr(m, name)
        except AttributeError:
            continue
        if isinstance(m, ResNet):
            return m, "".join(f"{name}." for name in path)
    raise TypeError(f"no ResNet trunk found in {type(model).__name__} (looked at ., .body, .backbone.body)")


def load_resnet_imagenet(model, path_or_dict):
    """Initialise the ResNet trunk of `model` from a torchvision ImageNet classification state dict.

    Works for a ResNet, a BackboneWithFPN (keys go to `body.*`) or a full model (`backbone.body.*`).
    The classifier `fc.weight`, `fc.bias` is ignored explicitly (listed in `.ignored`); everything
    else of the trunk must be present with the right shapes. The FPN and heads are left untouched.
    BatchNorm statistics land in FrozenBatchNorm2d's buffers (weight, bias, running_mean, running_var).
    """
    trunk, prefix = _trunk(model)
    result = load_torchvision_state(trunk, path_or_dict, ignore=("fc.",))
    # report keys the way they are named in `model`, e.g. backbone.body.layer1.0.conv1.weight
    return LoadResult([prefix + k for k in result.missing], [prefix + k for k in result.unexpected],
                      result.ignored)


def load_maskrcnn_state(model, path_or_dict):
    """Load a torchvision `maskrcnn_resnet50_fpn` state dict into a BackboneWithFPN or a full model.

    A full model (with `.backbone`) takes every key as it is. A BackboneWithFPN takes `backbone.*`
    with the prefix removed; the head keys (`rpn.*`, `roi_heads.*`) are then listed as ignored.
    """
    if "backbone" in getattr(model, "_modules", {}):
        return load_torchvision_state(model, path_or_dict)
    state = _read(path_or_dict)
    heads = tuple(sorted({k.split(".", 1)[0] + "." for k in state if not k.startswith("backbone.")}))
    return load_torchvision_state(model, state, prefix_map={"backbone.": ""}, ignore=heads)
