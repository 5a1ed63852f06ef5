"""benchmarks/main_job_vs_peer.py cannot rot: the torchvision peer is built as issue 17 says, takes two training
steps on minimask's shapes and is scored by the same COCOeval code (skipped without the oracle extra)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "main_job_vs_peer.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("main_job_vs_peer", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peer_is_the_issues_model(bench):
    model = bench.build_peer(4)
    rows = bench.check_peer(model)
    assert len(rows) >= 15 and all(wanted == built for _, wanted, built in rows)
    assert model.backbone.fpn.extra_blocks is None             # no P6: four levels, one per anchor size
    assert 2.0e6 < bench.num_parameters(model) < 3.0e6
    model.rpn.anchor_generator.sizes = ((16,), (32,), (64,), (128,), (256,))   # a changed peer is refused
    with pytest.raises(AssertionError, match="anchor sizes"):
        bench.check_peer(model)


def test_peer_trains_two_steps_and_is_scored(bench, tmp_path):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    flags = ["--data-dir", str(tmp_path / "shapes"), "--num-train-images", "8", "--num-val-images", "4"]
    cfg = bench.config_from_args(flags)
    train_set = bench.build_dataset(cfg, cfg.train_split)
    val_set = bench.build_dataset(cfg, cfg.val_split)
    model = bench.build_peer(train_set.num_classes)
    model.train()
    optimizer, scheduler = bench.peer_optimizer(model)
    batches = bench.DataLoader(train_set, batch_size=4, flip_prob=0.5, seed=0, num_workers=0).batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for it in range(2):
        assert math.isclose(optimizer.param_groups[0]["lr"], 0.02 * (0.001 + 0.999 * it / 200))  # the warmup
        losses = bench.peer_step(model, optimizer, scheduler, *next(batches))
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                               "loss_rpn_box_reg"} and all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    path = tmp_path / "peer.pt"
    torch.save(model.state_dict(), path)
    metrics = bench.peer_evaluate(path, val_set)
    for task in ("bbox", "segm"):
        assert set(metrics[task]) >= {"AP", "AP50", "AR100"}
        assert 0.0 <= metrics[task]["AP"] <= 1.0 or metrics[task]["AP"] == -1.0
