"""Chapter 15's evidence: the committed results of benchmarks/ablations.py cover every arm and seed under the
benchmark's current task variant and schedule (a JSON from an older variant is stale and fails here), the committed
figures exist and stay small, and benchmarks/ablations_examples.py matches detections to objects as its docstring
says and draws its figure from saved models.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ablations"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _script("ablations")
examples = _script("ablations_examples")


def test_committed_results_cover_every_arm_and_seed_of_the_benchmark():
    results = json.loads((RESULTS / "results.json").read_text())
    assert results["variant"] == bench.VARIANT
    assert results["schedule"] == {k: list(v) if isinstance(v, tuple) else v for k, v in bench.SCHEDULE.items()}
    assert len(results["seeds"]) >= 2, "the criterion compares a difference with the seeds' spread"
    assert set(results["runs"]) == {f"{arm}/seed{s}" for arm in bench.ARMS for s in results["seeds"]}
    for key, run in results["runs"].items():
        arm = key.split("/")[0]
        assert run["arm"] == arm and run["iterations"] == bench.SCHEDULE["iterations"], key
        assert run["set"] == [f"{k}={v}" for k, v in bench.ARMS[arm].items()], key
        assert 0 <= run["AP"] <= run["AP50"] <= 100 and 0 <= run["AP75"] <= 100, key


def test_committed_figures_exist_and_are_small():
    for key in bench.TABLES:
        png = RESULTS / f"table_{key}.png"
        assert png.exists() and png.stat().st_size < 150_000, png
    png = RESULTS / "example_masks.png"
    assert png.exists() and png.stat().st_size < examples.MAX_BYTES, png


def test_match_takes_the_best_scoring_detection_of_the_class_that_overlaps():
    H = W = 32
    gt = np.zeros((H, W), np.float32)
    gt[8:20, 8:20] = 1                                                   # a 12 x 12 object, class 1

    def det_mask(y0, y1, x0, x1):
        m = np.zeros((1, H, W), np.float32)
        m[0, y0:y1, x0:x1] = 0.9
        return m

    det = {"boxes": np.array([[8, 8, 20, 20], [8, 8, 20, 20], [8, 8, 18, 20], [20, 20, 30, 30]], np.float32),
           "labels": np.array([2, 1, 1, 1]),
           "scores": np.array([0.99, 0.5, 0.7, 0.95], np.float32),
           "masks": np.stack([det_mask(8, 20, 8, 20), det_mask(8, 20, 8, 14), det_mask(8, 20, 8, 18),
                              det_mask(20, 30, 20, 30)])}
    mask, iou, score, peak = examples.match(det, np.array([8, 8, 20, 20], np.float32), 1, gt)
    # the 0.99 one is of another class, the 0.95 one does not overlap: of the two left, the better-scored wins
    assert score == pytest.approx(0.7) and iou == pytest.approx(120 / 144) and mask.sum() == 120
    assert peak == pytest.approx(0.9)
    assert examples.match(det, np.array([8, 8, 20, 20], np.float32), 3, gt) == (None, 0.0, 0.0, 0.0)   # missed
    det["masks"] *= 0.5                                               # probabilities 0.45: matched, but empty
    mask, iou, _, peak = examples.match(det, np.array([8, 8, 20, 20], np.float32), 1, gt)
    assert not mask.any() and iou == 0.0 and peak == pytest.approx(0.45)


def test_example_masks_from_saved_models(tmp_path):
    """The script's whole path on two untrained tiny models saved where and as the benchmark saves them."""
    from minimask.builders import build_model, config_to_json
    from minimask.checkpoint import save_model

    tiny = dict(num_val_images=4, image_size=64, min_size=64, max_size=64, width=16, base_width=16)
    arms = ["fpn_sigmoid_fcn", "p5_roi_pool"]
    for arm in arms:
        cfg = bench.arm_config(arm, 0, tmp_path, quick=False).replace(**tiny)
        model = build_model(cfg, 4, np.random.default_rng(0))
        save_model(examples.weights_path(tmp_path, arm, 0), model, 0, config_to_json(cfg),
                   ["__background__", "square", "circle", "triangle"])
    fig, mean_iou, missing = examples.example_masks(tmp_path, seed=0, n_objects=3, arms=arms + ["fpn_mlp"])
    assert missing == ["fpn_mlp"] and set(mean_iou) == set(arms)
    assert len(fig.axes) == 3 * (1 + len(arms))                       # objects x (the image row + one per arm)
    dpi, size = examples.save_small_png(fig, tmp_path / "example_masks.png")
    assert size == (tmp_path / "example_masks.png").stat().st_size <= examples.MAX_BYTES
    import matplotlib.pyplot as plt

    plt.close(fig)
