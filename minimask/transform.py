"""Input transform: check targets, normalise, resize, pad and batch; and its inverse for the outputs.

Shapes:  images: a list of float (3, H_i, W_i) arrays in [0, 1] (RGB), sizes may differ
         batch:  (N, 3, H, W), H and W multiples of `size_divisible` (32), zero-padded bottom/right
Targets: dicts with boxes (G, 4) float x1 y1 x2 y2 px, labels (G,) int64 in 1..K-1, masks (G, H_i, W_i)
         uint8, optional iscrowd (G,) bool: `check_targets` validates them field by field
Resize:  scale = min(min_size / short side, max_size / long side); the new size is floor(H * scale)
         (as torch's interpolate with recompute_scale_factor=True). Images: bilinear with
         align_corners=False, reproducing torch's arithmetic so torchvision sees the same input;
         masks: nearest; boxes: multiplied by new / old size per axis.
Inverse: `postprocess` scales detected boxes back and pastes the 28x28 masks into the original image.
Chapter: nbs/11_mask_rcnn.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module, is_cupy_array, to_host
from .config import TransformConfig
from .layers import interpolate_forward
from .mask_head import paste_masks_in_image
from .matching import per_image
from .pooling import resize_bilinear  # noqa: F401  (re-exported: tests and chapters import it from here)

# ------------------------------------------------------------------------------------------------
# bilinear resize with torch's semantics
# ------------------------------------------------------------------------------------------------


def resized_size(height, width, min_size, max_size):
    """(new_h, new_w) and the scale: scale = min(min_size / short, max_size / long) in double,
    new size floor(side * scale), as torchvision's `_resize_image_and_masks`."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return (math.floor(float(height) * scale), math.floor(float(width) * scale)), scale


def resize_boxes(boxes, original_size, new_size):
    """Scale (G, 4) boxes from an image of `original_size` (h, w) to `new_size`: x by w'/w, y by h'/h."""
    xp = get_array_module(boxes)
    dt = boxes.dtype
    rh = np.float32(new_size[0]) / np.float32(original_size[0])
    rw = np.float32(new_size[1]) / np.float32(original_size[1])
    ratios = xp.asarray(np.array([rw, rh, rw, rh], dtype=np.float32)).astype(dt)
    return boxes * ratios


# ------------------------------------------------------------------------------------------------
# target checks
# ------------------------------------------------------------------------------------------------


def check_images(images):
    """Raise ValueError unless `images` is a non-empty list of float (3, H, W) arrays."""
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images must be a non-empty list of (3, H, W) float arrays")
    for i, im in enumerate(images):
        if getattr(im, "ndim", None) != 3 or im.shape[0] != 3:
            raise ValueError(f"images[{i}]: expected a (3, H, W) array, got shape {tuple(getattr(im, 'shape', ()))}")
        if im.dtype.kind != "f":
            raise ValueError(f"images[{i}]: expected a float image in [0, 1], got dtype {im.dtype}")
        if im.shape[1] < 1 or im.shape[2] < 1:
            raise ValueError(f"images[{i}]: empty image of shape {tuple(im.shape)}")


def check_targets(images, targets, num_classes, need_masks=True, tol=1.0):
    """Validate training targets against their images; raise ValueError naming the field and image.

    boxes (G, 4) float, finite, x2 > x1 and y2 > y1, inside the image (up to `tol` pixels);
    labels (G,) int in [1, num_classes - 1]; masks (G, H, W) with the image's H, W (uint8/bool);
    iscrowd (G,) (optional). Returns nothing; a problem anywhere raises before any work is done.
    """
    if targets is None:
        raise ValueError("training mode needs targets (a list of dicts with boxes, labels, masks)")
    if len(targets) != len(images):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    device_flags, device_images = [], []
    for i, (im, t) in enumerate(zip(images, targets, strict=True)):
        where = f"targets[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"{where}: expected a dict, got {type(t).__name__}")
        needed = ("boxes", "labels") + (("masks",) if need_masks else ())
        for key in needed:
            if key not in t:
                raise ValueError(f"{where}: missing field '{key}'")
        H, W = im.shape[-2:]
        boxes = t["boxes"]
        if getattr(boxes, "ndim", None) != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}['boxes']: expected shape (G, 4), got {tuple(getattr(boxes, 'shape', ()))}")
        if boxes.dtype.kind != "f":
            raise ValueError(f"{where}['boxes']: expected a float array, got dtype {boxes.dtype}")
        G = boxes.shape[0]
        labels = t["labels"]
        if getattr(labels, "shape", None) != (G,):
            raise ValueError(f"{where}['labels']: expected shape ({G},) to match boxes, got "
                             f"{tuple(getattr(labels, 'shape', ()))}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{where}['labels']: expected integer class ids, got dtype {labels.dtype}")
        if is_cupy_array(boxes) or is_cupy_array(labels):
            device_flags.append(_bad_values(boxes, labels, H, W, num_classes, tol))   # checked below
            device_images.append(i)
        else:
            _check_values(where, to_host(boxes), to_host(labels), H, W, num_classes, tol)
        if need_masks:
            masks = t["masks"]
            if getattr(masks, "ndim", None) != 3 or tuple(masks.shape) != (G, H, W):
                raise ValueError(f"{where}['masks']: expected shape ({G}, {H}, {W}) (one mask per box, the "
                                 f"image's size), got {tuple(getattr(masks, 'shape', ()))}")
            if masks.dtype.kind not in "uib":
                raise ValueError(f"{where}['masks']: expected uint8 or bool masks, got dtype {masks.dtype}")
        if "iscrowd" in t and t["iscrowd"] is not None and tuple(t["iscrowd"].shape) != (G,):
            raise ValueError(f"{where}['iscrowd']: expected shape ({G},), got {tuple(t['iscrowd'].shape)}")
    if device_flags:
        # device targets: one flag per image, read back together (one host sync per batch); only a
        # bad image is copied to the host, to name the box
        xp = get_array_module(*device_flags)
        for k in np.flatnonzero(to_host(xp.stack(device_flags))):
            i = device_images[k]
            H, W = images[i].shape[-2:]
            _check_values(f"targets[{i}]", to_host(targets[i]["boxes"]), to_host(targets[i]["labels"]), H, W,
                          num_classes, tol)


def _bad_values(boxes, labels, H, W, num_classes, tol):
    """A 0-d bool array: does `_check_values` object to these boxes and labels? (no host sync)"""
    xp = get_array_module(boxes)
    b = boxes
    bad = ~xp.isfinite(b).all() | ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()
    bad = bad | ((b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > W + tol) | (b[:, 3] > H + tol)).any()
    return bad | ((labels < 1) | (labels >= num_classes)).any()


def _check_values(where, b, lab, H, W, num_classes, tol):
    """The value checks of `check_targets` on host arrays: boxes b (G, 4), labels lab (G,)."""
    if not np.isfinite(b).all():
        raise ValueError(f"{where}['boxes']: non-finite coordinates")
    bad = np.nonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))[0]
    if bad.size:
        raise ValueError(f"{where}['boxes']: box {int(bad[0])} {b[bad[0]].tolist()} has non-positive width "
                         f"or height (x1 y1 x2 y2 expected)")
    out = np.nonzero((b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > W + tol) | (b[:, 3] > H + tol))[0]
    if out.size:
        raise ValueError(f"{where}['boxes']: box {int(out[0])} {b[out[0]].tolist()} lies outside the "
                         f"{H}x{W} image")
    if lab.size and (lab.min() < 1 or lab.max() >= num_classes):
        raise ValueError(f"{where}['labels']: labels must be in [1, {num_classes - 1}] (0 is background), "
                         f"got min {int(lab.min())} max {int(lab.max())}")


# ------------------------------------------------------------------------------------------------
# the transform
# ------------------------------------------------------------------------------------------------


class GeneralizedRCNNTransform:
    """torchvision's GeneralizedRCNNTransform: normalise -> resize -> pad to a batch (and back).

    `batch, image_sizes, targets = transform(images, targets=None, rng=None, training=False)`
    image_sizes: the (h, w) of each resized image inside the padded batch. In training with a tuple
    `min_size`, each image draws its short side from it with `rng` (a Generator, or one per image).
    Chapter: nbs/11_mask_rcnn.ipynb
    """

    def __init__(self, config: TransformConfig | None = None):
        self.config = config = config if config is not None else TransformConfig()
        ms = config.min_size
        self.min_sizes = tuple(ms) if isinstance(ms, (tuple, list)) else (ms,)

    def normalize(self, image):
        """(image - mean) / std per channel, in the image's dtype."""
        xp = get_array_module(image)
        mean = xp.asarray(self.config.image_mean, dtype=image.dtype)[:, None, None]
        std = xp.asarray(self.config.image_std, dtype=image.dtype)[:, None, None]
        return (image - mean) / std

    def resize(self, image, target=None, min_size=None):
        """Resize one (3, H, W) image (and its target's boxes and masks); returns (image, target)."""
        h, w = image.shape[-2:]
        min_size = self.min_sizes[-1] if min_size is None else min_size
        (nh, nw), _ = resized_size(h, w, min_size, self.config.max_size)
        image = resize_bilinear(image, (nh, nw))
        if target is None:
            return image, None
        target = dict(target)
        target["boxes"] = resize_boxes(target["boxes"], (h, w), (nh, nw))
        if "masks" in target and target["masks"] is not None:
            m = target["masks"]
            if m.shape[0]:
                # nearest, as torchvision (interpolate of the float mask, then back to uint8)
                target["masks"] = interpolate_forward(m[:, None], size=(nh, nw))[0][:, 0]
            else:
                xp = get_array_module(m)
                target["masks"] = xp.zeros((0, nh, nw), dtype=m.dtype)
        return image, target

    def batch_images(self, images):
        """Zero-pad a list of (3, h, w) images to one (N, 3, H, W) batch, H and W multiples of 32."""
        xp = get_array_module(images[0])
        d = self.config.size_divisible
        H = int(math.ceil(max(im.shape[1] for im in images) / d) * d)
        W = int(math.ceil(max(im.shape[2] for im in images) / d) * d)
        batch = xp.zeros((len(images), 3, H, W), dtype=images[0].dtype)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[1], : im.shape[2]] = im
        return batch

    def __call__(self, images, targets=None, rng=None, training=False):
        check_images(images)
        out_images, out_targets, sizes = [], ([] if targets is not None else None), []
        rngs = per_image(rng, len(images))   # one Generator for all images, or one per image
        for i, image in enumerate(images):
            min_size = None
            if training and len(self.min_sizes) > 1:
                if rngs[i] is None:
                    raise ValueError("multi-scale training (a tuple min_size) needs an rng")
                min_size = self.min_sizes[int(rngs[i].integers(len(self.min_sizes)))]
            image = self.normalize(image)
            image, target = self.resize(image, None if targets is None else targets[i], min_size)
            out_images.append(image)
            sizes.append((int(image.shape[1]), int(image.shape[2])))
            if targets is not None:
                out_targets.append(target)
        return self.batch_images(out_images), sizes, out_targets

    def postprocess(self, result, image_sizes, original_sizes):
        """Map detections from the resized images back to the originals (boxes; masks pasted)."""
        for r, size, orig in zip(result, image_sizes, original_sizes, strict=True):
            r["boxes"] = resize_boxes(r["boxes"], size, orig)
            if "masks" in r:
                r["masks"] = paste_masks_in_image(r["masks"], r["boxes"], orig)
        return result
