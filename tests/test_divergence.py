"""Divergence stops the run as promised; zero proposals and detections work everywhere (issue 14: 4)."""

from pathlib import Path

import numpy as np
import pytest

from minimask import evaluate, predict
from minimask.model import maskrcnn_small
from minimask.train import NonFiniteLoss, TrainConfig, train

TINY = dict(num_train_images=4, num_val_images=2, image_size=64, min_size=64, max_size=64, width=16,
            batch_size=2, iterations=4, milestones=(4,), warmup_iters=1, checkpoint_every=1, log_every=1,
            eval_limit=2, num_workers=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, data_dir):
    """A trained tiny checkpoint whose weights were then all set to NaN, as a diverged run leaves them."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(data_dir=data_dir, output_dir=str(out), **{**TINY, "iterations": 1}), progress=False)
    src = out / "checkpoint_0000001.npz"
    with np.load(src) as f:
        arrays = {k: (np.full_like(f[k], np.nan) if k.startswith("model.") and f[k].dtype.kind == "f" else f[k])
                  for k in f.files}
    bad = out / "checkpoint_nan.npz"
    np.savez(bad, **arrays)
    return bad


def test_huge_lr_stops_with_nonfinite_loss_naming_iteration_and_checkpoint(tmp_path, data_dir):
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient norm \(inf\) at iteration 2.*last good checkpoint "
                                            r"is .*checkpoint_0000001\.npz"):
        train(TrainConfig(data_dir=data_dir, output_dir=str(tmp_path / "run"), lr=1e6, **TINY), progress=False)
    assert not (tmp_path / "run" / "checkpoint_0000002.npz").exists()   # no step was taken on inf gradients


def test_nan_weights_stop_with_nonfinite_loss_not_a_valueerror(tmp_path, data_dir):
    model = maskrcnn_small(num_classes=4, min_size=64, max_size=64, width=16, rng=np.random.default_rng(0))
    weights = tmp_path / "nan.npz"
    np.savez(weights, **{k: np.full_like(v, np.nan) for k, v in model.state_dict().items() if k.startswith("rpn.")})
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at iteration 1 .*last good checkpoint is \(none yet\)"):
        train(TrainConfig(data_dir=data_dir, output_dir=str(tmp_path / "run"), weights=str(weights), **TINY),
              progress=False)


def test_evaluate_and_predict_survive_a_model_that_proposes_nothing(nan_checkpoint, data_dir, tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(nan_checkpoint), "--output-dir", str(tmp_path / "ev")]) == 0
    assert "bbox AP 0.000" in capsys.readouterr().out
    val_image = sorted((Path(data_dir) / "images" / "val").glob("*.png"))[0]
    assert predict.main([str(val_image), "--checkpoint", str(nan_checkpoint), "--output-dir", str(tmp_path / "pr"),
                         "--score-thresh", "0"]) == 0
    assert "0 detections" in capsys.readouterr().out


@pytest.mark.parametrize("n_proposals", [(0, 0), (0, 2)])
def test_zero_proposals_in_training_and_evaluation(n_proposals):
    rng = np.random.default_rng(0)
    model = maskrcnn_small(num_classes=4, min_size=64, max_size=64, width=16, rng=rng)
    images = [rng.random((3, 64, 64), dtype=np.float32) for _ in range(2)]
    proposals = [np.array([[1, 1, 20, 20], [10, 10, 50, 50]], np.float32)[:n] for n in n_proposals]
    model.eval()
    out = model(images, proposals=proposals)
    assert out[0]["boxes"].shape == (0, 4) and out[0]["masks"].shape == (0, 1, 64, 64)
    model.train()
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
             "masks": np.zeros((0, 64, 64), np.uint8)}
    losses = model(images, [empty, empty], rng=rng, proposals=proposals)
    total = None
    for v in losses.values():
        total = v if total is None else total + v
    assert np.isfinite(float(total.data))
    total.backward()   # the box head's backward with zero RoIs in one image (or both)
