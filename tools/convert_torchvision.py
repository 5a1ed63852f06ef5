"""Convert a torchvision checkpoint (.pth) into a .npz of named arrays that minimask can load.

Usage:   python tools/convert_torchvision.py in.pth out.npz
         python tools/convert_torchvision.py --builder maskrcnn_resnet50_fpn out.npz   (random init,
         torchvision's own builder; handy to test loading without downloading weights)
Needs torch (the 'oracle' extra). This file is the only place in the project that reads a .pth;
`minimask` itself never imports torch.
Keys:    kept exactly as torchvision names them; `*.num_batches_tracked` (int64 BatchNorm counters)
         are dropped and counted in the printout. Floating arrays are stored as float32.
Then:    minimask.weights.load_maskrcnn_state(model, "out.npz") or load_resnet_imagenet(...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minimask.module import save_state_dict  # noqa: E402


def state_dict_to_arrays(state):
    """torch state dict (name -> Tensor) -> (dict name -> float32 NumPy array, list of dropped keys)."""
    arrays, dropped = {}, []
    for name, t in state.items():
        if name.endswith("num_batches_tracked"):
            dropped.append(name)
            continue
        a = t.detach().cpu().numpy()
        arrays[name] = a.astype(np.float32) if a.dtype.kind == "f" else a
    return arrays, dropped


def read_pth(path):
    """Load a .pth safely (weights_only: tensors and containers, no arbitrary code) -> state dict."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # training checkpoints often wrap the state dict
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def from_builder(name):
    """State dict of a torchvision model built with random weights (no download)."""
    import torchvision

    if name in ("resnet18", "resnet34", "resnet50", "resnet101"):
        model = getattr(torchvision.models, name)(weights=None)
    else:
        model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
    return model.state_dict()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", nargs="?", help="input .pth (a torchvision state dict)")
    parser.add_argument("dst", help="output .npz")
    parser.add_argument("--builder", help="instead of a file: a torchvision builder name, random weights")
    args = parser.parse_args(argv)
    if (args.src is None) == (args.builder is None):
        parser.error("give either an input .pth or --builder NAME")
    state = from_builder(args.builder) if args.builder else read_pth(args.src)
    arrays, dropped = state_dict_to_arrays(state)
    save_state_dict(arrays, args.dst)
    n = sum(a.size for a in arrays.values())
    print(f"wrote {args.dst}: {len(arrays)} arrays, {n:,} numbers; dropped {len(dropped)} num_batches_tracked")


if __name__ == "__main__":
    main()
