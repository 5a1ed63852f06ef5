"""Parity with torchvision's maskrcnn_resnet50_fpn on real coco128 images (oracle).

A seeded, randomly initialised torchvision model's state dict is loaded into minimask (configured
as torchvision: RoIAlign aligned=False, soft mask targets, score threshold 0 on both sides), and
  eval:  the same proposals, detections (boxes within 1e-3 of their size, same labels, scores within
         1e-4) and masks (IoU > 0.99 after the 0.5 threshold; see the test for thin boxes);
  train: with the same deterministic anchor and RoI sampling on both sides, and torchvision's
         proposals fed to minimask's RoI heads, the same five losses within 1e-4 relative.
Tolerances: both run float32; random weights without trained batch-norm statistics let the
activations grow through 50 layers, so the two sides' different summation orders reach ~1e-5
relative in the scores. Two results whose scores are that close may come out in swapped order, so
proposals and detections are compared as matched sets (every one found on the other side), not
row by row. Images are resized to a short side of 384 (not 800) to keep CI time down.
"""

import numpy as np
import pytest

MIN_SIZE, MAX_SIZE = 384, 512


class FirstK:
    """A deterministic stand-in for BalancedPositiveNegativeSampler, usable by both frameworks: the
    first positives and negatives in index order (instead of a random draw)."""

    def __init__(self, batch_size_per_image, positive_fraction, torch=None):
        self.n, self.frac, self.torch = batch_size_per_image, positive_fraction, torch

    def _masks(self, lab):
        lab_np = lab.numpy() if self.torch is not None else lab
        pos = np.nonzero(lab_np >= 1)[0]
        neg = np.nonzero(lab_np == 0)[0]
        num_pos = min(pos.size, int(self.n * self.frac))
        num_neg = min(neg.size, self.n - num_pos)
        pm = np.zeros(lab_np.shape, bool)
        nm = np.zeros(lab_np.shape, bool)
        pm[pos[:num_pos]] = True
        nm[neg[:num_neg]] = True
        if self.torch is not None:
            return self.torch.from_numpy(pm).to(self.torch.uint8), self.torch.from_numpy(nm).to(self.torch.uint8)
        return pm, nm

    def __call__(self, labels, rng=None):
        pairs = [self._masks(lab) for lab in labels]
        return [p for p, _ in pairs], [n for _, n in pairs]


def box_scale(boxes):
    """(K,) the larger side of each box: the scale a box tolerance is relative to."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def match_rows(a, b, tol):
    """Indices j(i) pairing each row of a with a distinct row of b, |a_i - b_j| <= tol_i in every
    column, or -1 where none is left. tol: (A,) per row of a."""
    close = (np.abs(a[:, None, :] - b[None, :, :]) <= tol[:, None, None]).all(-1)   # (A, B)
    taken = np.zeros(len(b), bool)
    out = np.full(len(a), -1)
    for i in range(len(a)):
        cand = np.nonzero(close[i] & ~taken)[0]
        if cand.size:
            out[i] = cand[0]
            taken[cand[0]] = True
    return out


@pytest.fixture(scope="module")
def setup(torch):
    import torchvision

    from minimask import model as M
    from minimask import paths
    from minimask.data import CocoDataset, coco_paths

    try:
        root = paths.coco128_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=MIN_SIZE,
                                                            max_size=MAX_SIZE, box_score_thresh=0.0)
    ours = M.maskrcnn_resnet50_fpn(rng=np.random.default_rng(0), min_size=MIN_SIZE, max_size=MAX_SIZE,
                                   aligned=False, mask_target_binarize=False, roi_heads={"score_thresh": 0.0})
    ours.load_state_dict({k: v.numpy() for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")})
    ds = CocoDataset(*coco_paths(root, "train2017"))
    images, targets = [], []
    for index in (1, 3):                                      # two images of different sizes: one padded batch
        image, target = ds[index]
        keep = ~target["iscrowd"]                             # torchvision knows no crowd boxes
        targets.append({"boxes": target["boxes"][keep], "labels": target["labels"][keep],
                        "masks": target["masks"][keep]})
        images.append(image)
        assert len(targets[-1]["boxes"]) >= 1
    assert images[0].shape != images[1].shape
    captured = {}
    tv.rpn.register_forward_hook(lambda m, a, o: captured.__setitem__("tv", [p.detach().numpy() for p in o[0]]))
    rpn_forward = ours.rpn.forward

    def ours_rpn(*a, **k):
        out = rpn_forward(*a, **k)
        captured["ours"] = out[0]
        return out

    object.__setattr__(ours.rpn, "forward", ours_rpn)
    return tv, ours, images, targets, captured


@pytest.mark.oracle
def test_eval_matches_torchvision(torch, setup):
    tv, ours, images, _, captured = setup
    tv.eval()
    ours.eval()
    with torch.no_grad():
        refs = [{k: v.numpy() for k, v in r.items()} for r in tv([torch.from_numpy(im) for im in images])]
    gots = ours(images)
    for i, (got, ref) in enumerate(zip(gots, refs, strict=True)):
        p_ours, p_tv = captured["ours"][i], captured["tv"][i]
        assert p_ours.shape == p_tv.shape
        # 1e-3 of the box's size (+ 1e-3 px): relative to the box, since coordinates near 0 have no scale
        j = match_rows(p_tv, p_ours, 1e-3 * box_scale(p_tv) + 1e-3)
        assert (j >= 0).all(), f"image {i}: {(j < 0).sum()} of {len(j)} torchvision proposals not in minimask's"

        assert got["boxes"].shape == ref["boxes"].shape and got["masks"].shape == ref["masks"].shape
        # a detection is (label, box): pair them up, then compare scores and masks pair by pair
        key_ref = np.concatenate([ref["boxes"], ref["labels"][:, None] * 1e4], 1)
        key_got = np.concatenate([got["boxes"], got["labels"][:, None] * 1e4], 1)
        j = match_rows(key_ref, key_got, 1e-3 * box_scale(ref["boxes"]) + 1e-3)
        assert (j >= 0).all(), f"image {i}: {(j < 0).sum()} of {len(j)} torchvision detections not in minimask's"
        np.testing.assert_allclose(got["scores"][j], ref["scores"], atol=1e-4)
        m_got, m_ref = got["masks"][j] >= 0.5, ref["masks"] >= 0.5
        inter = (m_got & m_ref).sum(axis=(1, 2, 3))
        union = (m_got | m_ref).sum(axis=(1, 2, 3))
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)   # both empty: the same mask
        assert inter.sum() / max(union.sum(), 1) > 0.99, f"image {i}: IoU over all masks below 0.99"
        # Pasting truncates each (grown) box corner to an integer pixel, so a 1e-4 px difference that
        # straddles an integer moves a whole row or column: for a thin box (random weights make many)
        # that alone is more than 1% of the mask. Such masks may differ by one row and one column.
        b = ref["boxes"]
        one_line = (b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1]) + 4
        ok = (iou > 0.99) | ((union < 2000) & ((union - inter) <= one_line))
        assert ok.all(), f"image {i}: mask IoU {iou[~ok].min():.4f} at detection {np.nonzero(~ok)[0][0]}"


@pytest.mark.oracle
def test_train_losses_match_torchvision(torch, setup):
    tv, ours, images, targets, captured = setup
    tv.train()
    # without pretrained weights torchvision builds its ResNet with ordinary BatchNorm2d (FrozenBN only
    # comes with weights): in eval mode it uses its running statistics, which is FrozenBN's arithmetic
    for m in tv.backbone.body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    ours.train()
    tv.rpn.fg_bg_sampler = FirstK(256, 0.5, torch)
    tv.roi_heads.fg_bg_sampler = FirstK(512, 0.25, torch)
    ours.rpn.fg_bg_sampler = FirstK(256, 0.5)
    ours.roi_heads.fg_bg_sampler = FirstK(512, 0.25)
    t_targets = [{k: torch.from_numpy(v) for k, v in t.items()} for t in targets]
    ref = {k: v.item() for k, v in tv([torch.from_numpy(im) for im in images], t_targets).items()}
    # torchvision's proposals (in the resized image) go to minimask's RoI heads: the sampled RoIs
    # are then the same even where near-tied scores order two proposals differently
    got = ours(images, [dict(t) for t in targets], proposals=captured["tv"])
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(float(got[k].data), ref[k], rtol=1e-4, err_msg=k)
