"""The Table 2 switches of RoIHeadsConfig in the whole model: set from the CLI, each trains a few iterations on
tiny shapes (train, evaluate with COCOeval), each runs a training step on the stand-in device equal to NumPy,
and the default configuration never touches the new code.
"""

import json

import numpy as np
import pytest

from minimask import backend, poolers, roi_heads
from minimask.builders import build_model
from minimask.config import MaskRCNNConfig, RoIHeadsConfig, with_overrides
from minimask.data import CocoDataset, DataLoader, shapes_paths
from minimask.model import MaskRCNN, small_config
from minimask.testing import fake_cuda as fc
from minimask.train import TrainConfig, config_from_args, train

SWITCHES = {
    "roi_pool": dict(roi_extractor="roi_pool"),
    "roi_warp": dict(roi_extractor="roi_warp"),
    "roi_warp_max": dict(roi_extractor="roi_warp", roi_aggregation="max"),
    "roi_align_max": dict(roi_aggregation="max"),
    "p4_fixed": dict(pool_level=4),
    "p5_roi_pool": dict(pool_level=5, roi_extractor="roi_pool"),
    "softmax_mask": dict(mask_loss="softmax"),
    "mlp_mask": dict(mask_head_type="mlp"),
}
TINY = dict(num_train_images=6, num_val_images=2, image_size=64, min_size=64, max_size=64, width=16, base_width=16,
            batch_size=2, iterations=3, milestones=(100,), warmup_iters=2, checkpoint_every=100, log_every=1,
            eval_limit=2, num_workers=1)


def test_defaults_are_mask_rcnn_and_typos_are_errors():
    cfg = RoIHeadsConfig()
    assert (cfg.roi_extractor, cfg.roi_aggregation, cfg.pool_level, cfg.mask_head_type, cfg.mask_loss) == (
        "roi_align", "avg", 0, "fcn", "sigmoid")
    for field, bad in (("roi_extractor", "roialign"), ("roi_aggregation", "mean"), ("pool_level", 6),
                       ("mask_head_type", "MLP"), ("mask_loss", "bce")):
        with pytest.raises(ValueError, match=field):
            with_overrides(MaskRCNNConfig(), **{field: bad})


def test_switches_from_the_training_cli():
    cfg = config_from_args(["--set", "roi_extractor=roi_warp", "--set", "roi_aggregation=max", "--set", "pool_level=5",
                            "--set", "roi_heads={'mask_loss': 'softmax', 'mask_head_type': 'mlp'}"])
    model = build_model(cfg, 4, np.random.default_rng(0))
    rh = model.config.roi_heads
    assert (rh.roi_extractor, rh.roi_aggregation, rh.pool_level, rh.mask_loss, rh.mask_head_type) == (
        "roi_warp", "max", 5, "softmax", "mlp")
    pool = model.roi_heads.box_roi_pool
    assert (pool.method, pool.aggregation, pool.featmap_names) == ("roi_warp", "max", ["3"])   # P5 alone
    assert {"roi_heads.mask_head.mask_fc1.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight"} <= set(
        dict(model.named_parameters()))


def _step(shapes_dir, xp, **switches):
    """Losses of one training step of the tiny model with these switches, and the summed gradient norm."""
    ds = CocoDataset(*shapes_paths(shapes_dir, "train"))
    cfg = with_overrides(small_config(num_classes=ds.num_classes, min_size=64, max_size=64, width=16, base_width=16),
                         anchor_sizes=(16, 32, 64, 128, 256), **switches)
    images, targets = DataLoader._collate([ds[i] for i in range(2)])
    model = MaskRCNN(cfg, rng=np.random.default_rng(0)).to(xp).train()
    losses = model(*backend.to_device((images, targets), xp), rng=np.random.default_rng(1))
    total = None
    for v in losses.values():
        total = v if total is None else total + v
    total.backward()
    grads = {k: backend.to_host(p.grad) for k, p in model.named_parameters() if p.grad is not None}
    return {k: float(backend.to_host(v.data)) for k, v in losses.items()}, grads


def test_the_default_model_never_calls_the_variants(shapes_dir, monkeypatch):
    """Default configuration: the variant ops are never reached (they raise here), and the losses are those of
    the configuration that spells every switch out with its default value, bit for bit."""
    spelled = _step(shapes_dir, np, roi_extractor="roi_align", roi_aggregation="avg", pool_level=0,
                    mask_head_type="fcn", mask_loss="sigmoid")

    def refuse(*a, **k):
        raise AssertionError("a Table 2 variant ran in the default model")

    for name in ("roi_align_max", "roi_warp", "roi_pool"):
        monkeypatch.setattr(poolers, name, refuse)
    for name in ("maskrcnn_loss_softmax", "maskrcnn_inference_softmax", "MaskRCNNMLPHead", "MaskRCNNMLPPredictor"):
        monkeypatch.setattr(roi_heads, name, refuse)
    losses, grads = _step(shapes_dir, np)
    assert losses == spelled[0]
    for k, g in grads.items():
        np.testing.assert_array_equal(g, spelled[1][k], err_msg=k)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_runs_a_training_step_on_the_stand_in_device_equal_to_numpy(shapes_dir, monkeypatch, name):
    monkeypatch.setenv(backend.FAKE_CUDA_ENV, "1")
    host_losses, host_grads = _step(shapes_dir, np, **SWITCHES[name])
    dev_losses, dev_grads = _step(shapes_dir, fc, **SWITCHES[name])
    # tolerances as tests/test_gpu_path.py: the device runs the .cu kernels (through the CPU emulation) and
    # im2col convolutions where NumPy runs the references and Winograd, float32 sums in another order. A max
    # per bin turns those 1e-6 differences into a flip of the winning sample now and then, which moves one bin's
    # gradient to a neighbouring pixel: measured up to 4e-4 of a tensor's largest entry, so 2e-3 there.
    has_max = SWITCHES[name].get("roi_extractor") == "roi_pool" or SWITCHES[name].get("roi_aggregation") == "max"
    grad_tol = 2e-3 if has_max else 1e-4
    for k, v in host_losses.items():
        assert dev_losses[k] == pytest.approx(v, rel=1e-5), k
    for k, g in host_grads.items():
        np.testing.assert_allclose(dev_grads[k], g, rtol=0, atol=grad_tol * max(float(np.abs(g).max()), 1e-12),
                                   err_msg=k)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_trains_and_evaluates(shapes_dir, tmp_path, name):
    sets = tuple(f"{k}={v}" for k, v in SWITCHES[name].items())
    result = train(TrainConfig(data_dir=str(shapes_dir), output_dir=str(tmp_path / name), set=sets, **TINY),
                   progress=False)
    run = result["run_dir"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss_mask"] > 0 for r in rows)
    assert rows[0]["loss_mask"] != rows[-1]["loss_mask"]          # the mask branch's weights moved
    assert set(result["metrics"]["segm"]) >= {"AP", "AP50", "AP75"}
    assert json.loads((run / "config.json").read_text())["set"] == list(sets)
