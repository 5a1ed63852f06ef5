"""The main job end to end: train a few iterations, interrupt, resume, evaluate, predict.

A tiny configuration (64x64 shapes, ResNet-18-FPN of width 16) keeps this to seconds.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from minimask import evaluate, predict
from minimask.builders import build_model, config_from_json, config_to_json
from minimask.train import Interrupted, TrainConfig, config_from_args, train

TINY = dict(num_train_images=8, num_val_images=3, image_size=64, min_size=64, max_size=64, width=16,
            batch_size=2, iterations=6, milestones=(4,), warmup_iters=2, checkpoint_every=3, log_every=1,
            eval_limit=3, num_workers=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes-data"))


def _losses(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("full")
    cfg = TrainConfig(data_dir=data_dir, output_dir=str(out), **TINY)
    result = train(cfg, progress=False)
    return cfg, result


def test_run_directory_is_complete(full_run):
    cfg, result = full_run
    run = result["run_dir"]
    for name in ("config.json", "metrics.jsonl", "model_final.npz", "checkpoint_0000003.npz",
                 "checkpoint_0000006.npz", "eval/metrics.json", "eval/results.json", "losses.png",
                 "predictions.png", "summary.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"} and len(metrics["segm"]) == 12
    rows = _losses(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "lr"} <= set(r)
        assert np.isfinite(r["loss"])
    assert json.loads((run / "config.json").read_text())["iterations"] == 6


def test_resume_reproduces_the_uninterrupted_losses(full_run, tmp_path, data_dir):
    cfg, result = full_run
    cfg2 = cfg.replace(output_dir=str(tmp_path / "resumed"))
    with pytest.raises(Interrupted):
        train(cfg2, progress=False, interrupt_at=4)  # dies after iteration 4; last checkpoint is 3
    train(cfg2.replace(resume=True), progress=False)
    a = _losses(result["run_dir"])
    b = _losses(tmp_path / "resumed")
    assert [r["iteration"] for r in b] == [1, 2, 3, 4, 5, 6]  # iteration 4 logged once, from the resumed run
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "loss_classifier", "loss_mask", "lr"):
            # same data order, same random state, same arithmetic: equal up to float32 summation order
            assert rb[k] == pytest.approx(ra[k], rel=1e-6), (ra["iteration"], k)


def test_evaluate_and_predict_cli(full_run, tmp_path, capsys, data_dir):
    _, result = full_run
    ckpt = result["run_dir"] / "checkpoint_0000006.npz"
    assert evaluate.main(["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "ev")]) == 0
    assert "segm AP" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["bbox"].keys() >= {"AP", "AP50"}
    image = Path(data_dir) / "images" / "val" / "000001.png"
    assert predict.main([str(image), "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "pr"),
                         "--score-thresh", "0.0"]) == 0
    assert (tmp_path / "pr" / (image.stem + ".png")).stat().st_size > 1000


def test_flags_come_from_the_dataclass():
    cfg = config_from_args(["--iterations", "7", "--milestones", "3,5", "--set", "nms_thresh=0.6", "--no-skip-bad"])
    assert cfg.iterations == 7 and cfg.milestones == (3, 5) and cfg.set == ("nms_thresh=0.6",)
    assert cfg.output_dir == ""   # runs/shapes, or the next free runs/shapes-N (rundir.py)
    coco = config_from_args(["--preset", "coco-r50-fpn-1x"])
    assert (coco.batch_size, coco.lr, coco.iterations, coco.milestones) == (16, 0.02, 90000, (60000, 80000))


def test_mask_rois_per_image_reaches_the_model():
    """The shapes default caps the mask head's RoIs; the COCO presets, `--set` and runs saved before the
    field existed (config.json without it) keep the paper's every positive."""
    rng = np.random.default_rng(0)
    rh = lambda cfg: build_model(cfg, 4, rng).config.roi_heads.mask_batch_size_per_image  # noqa: E731
    small = dict(width=8, base_width=8)
    assert rh(config_from_args([]).replace(**small)) == TrainConfig.mask_rois_per_image == 8
    assert rh(config_from_args(["--mask-rois-per-image", "0"]).replace(**small)) == 0
    assert rh(config_from_args(["--set", "mask_batch_size_per_image=3"]).replace(**small)) == 3
    for preset in ("coco128", "coco-r50-fpn-1x"):
        assert config_from_args(["--preset", preset]).mask_rois_per_image == 0
    saved = config_to_json(TrainConfig())
    del saved["mask_rois_per_image"]
    assert config_from_json(saved).mask_rois_per_image == 0


def test_bad_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(1))
    with pytest.raises(ValueError, match="x.npz: not a minimask training checkpoint"):
        evaluate.main(["--checkpoint", str(bad)])


def test_time_limit_before_the_first_logged_iteration_still_ends_the_run(tmp_path, data_dir):
    """--time-limit-minutes can stop a run before it logs anything: it still evaluates and exits cleanly."""
    cfg = TrainConfig(data_dir=data_dir, output_dir=str(tmp_path / "run"),
                      **{**TINY, "log_every": 100, "checkpoint_every": 100, "time_limit_minutes": 1e-9})
    result = train(cfg, progress=False)
    run_dir = Path(result["run_dir"])
    assert not (run_dir / "losses.png").exists()
    assert (run_dir / "model_final.npz").exists() and (run_dir / "eval" / "metrics.json").exists()
