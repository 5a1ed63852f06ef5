"""The whole GPU path on the strict stand-in device (minimask.testing.fake_cuda), without a GPU.

The stand-in refuses implicit host conversion where CuPy does and counts every device -> host
transfer or synchronisation. Here: the refusals themselves; 3 training iterations of the small
model on shapes under `--device cuda` equal the NumPy run; evaluate and predict run on the device;
checkpoints cross between devices; the exact per-iteration list of syncs; the .cu kernels are what
ran for RoIAlign, RoIPool and NMS.

Tolerances. The device path runs the .cu kernels (through the CPU emulation) where the NumPy path
runs the NumPy references: RoIAlign forward equals them to ~1e-6 relative in float32 (a different
summation order of the same four bilinear terms), the backward to ~1e-5 (atomicAdd in any thread
order), tests/kernel_harness.py. Everything else is the same NumPy arithmetic. After 3 SGD steps the
losses agree to 1e-4 relative; one step's gradients to 1e-4 of each tensor's largest entry.
"""

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from minimask import backend, evaluate, predict
from minimask.config import with_overrides
from minimask.data import CocoDataset, DataLoader, shapes_paths
from minimask.model import MaskRCNN, small_config
from minimask.testing import fake_cuda as fc
from minimask.train import TrainConfig, load_checkpoint_model, train

TINY = dict(num_train_images=6, num_val_images=2, image_size=64, min_size=64, max_size=64, width=16,
            base_width=16, batch_size=2, iterations=3, milestones=(100,), warmup_iters=2, checkpoint_every=100,
            log_every=1, eval_limit=2, num_workers=1)
N = TINY["batch_size"]

# ------------------------------------------------------------------------------------------------
# the stand-in refuses what CuPy refuses, counts what CuPy syncs
# ------------------------------------------------------------------------------------------------


def test_stand_in_refuses_implicit_host_conversion():
    x = fc.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    host = np.ones((2, 3), np.float32)
    for bad in (lambda: np.asarray(x), lambda: np.array(x), lambda: x + host, lambda: host + x,
                lambda: fc.concatenate([x, host]), lambda: x[np.array([0])], lambda: host[fc.asarray([0, 1])],
                lambda: x.__setitem__(0, host[0]), lambda: float(x), lambda: fc.maximum(x, host),
                lambda: np.maximum(host, x)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(AttributeError):   # NumPy-only methods do not exist on device arrays
        x.tobytes()


def test_stand_in_counts_every_way_back_to_the_host():
    x = fc.asarray(np.array([0.0, 2.0, -1.0], np.float32))
    assert backend.get_array_module(x) is fc and backend.is_cupy_array(x)
    fc.reset_counters()
    y = (x * 2 + 1).sum()                   # device work: no sync; a reduction is a 0-d device array
    assert backend.is_cupy_array(y) and fc.sync_count() == 0
    x[x < 0] = 0                            # boolean-mask assignment stays on the device
    assert fc.sync_count() == 0
    float(y), int(x[1]), bool(x[1] > 0), x[0].item(), x.get(), backend.to_host(x), x.tolist()
    x.nonzero(), fc.flatnonzero(x), fc.unique(x), x[x > 0], fc.where(x > 0)
    kinds = collections.Counter(k for (k, _) in fc.SYNCS.elements())
    assert kinds == {"float": 1, "int": 1, "bool": 1, "item": 1, "get": 2, "tolist": 1, "nonzero": 1,
                     "flatnonzero": 1, "unique": 1, "boolean-index": 1, "where": 1}
    assert all(where.startswith("tests/test_gpu_path.py:") for (_, where) in fc.SYNCS)


def test_device_module_and_uploads(monkeypatch):
    monkeypatch.setenv(backend.FAKE_CUDA_ENV, "1")
    assert backend.device_module("cuda") is fc and backend.device_module("cpu") is np
    with pytest.raises(ValueError, match="unknown device"):
        backend.device_module("tpu")
    batch = ([np.zeros((3, 4, 4), np.float32)], [{"boxes": np.zeros((1, 4), np.float32), "image_id": 7}])
    images, targets = backend.to_device(batch, fc)
    assert backend.is_cupy_array(images[0]) and backend.is_cupy_array(targets[0]["boxes"])
    assert targets[0]["image_id"] == 7
    monkeypatch.setenv(backend.FAKE_CUDA_ENV, "0")
    if not backend.cupy_available():
        with pytest.raises(RuntimeError, match="MINIMASK_FAKE_CUDA"):
            backend.device_module("cuda")


# ------------------------------------------------------------------------------------------------
# the .cu kernels are what runs on the device
# ------------------------------------------------------------------------------------------------


def test_roi_ops_run_the_cuda_kernels_on_the_device(rng):
    from minimask.roi_align import roi_align
    from minimask.roi_pool import roi_pool
    from minimask.tape import Tensor

    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    rois = np.array([[0, 1, 1, 20, 30], [1, 5, 5, 9, 9]], np.float32)
    for op, kernels in ((roi_align, ("roi_align_forward", "roi_align_backward")),
                        (roi_pool, ("roi_pool_forward", "roi_pool_backward"))):
        args = (7, 0.5, 2, True) if op is roi_align else (7, 0.5)
        fc.reset_counters()
        t = Tensor(fc.asarray(x), requires_grad=True)
        out = op(t, fc.asarray(rois), *args)
        out.backward(fc.ones(out.shape, np.float32))
        assert dict(fc.LAUNCHES) == {kernels[0]: 1, kernels[1]: 1} and fc.sync_count() == 0
        ref = op(Tensor(x, requires_grad=True), rois, *args)
        np.testing.assert_allclose(out.data.get(), ref.data, rtol=1e-5, atol=1e-5)
        assert backend.is_cupy_array(t.grad)


def test_nms_runs_the_cuda_kernel_on_the_device(rng):
    from minimask.nms import batched_nms, nms

    xy = rng.uniform(0, 50, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (300, 2))], 1).astype(np.float32)
    scores = rng.random(300).astype(np.float32)
    idxs = rng.integers(0, 3, 300)
    fc.reset_counters()
    keep = nms(fc.asarray(boxes), fc.asarray(scores), 0.5)
    keep_b = batched_nms(fc.asarray(boxes), fc.asarray(scores), fc.asarray(idxs), 0.5)
    assert dict(fc.LAUNCHES) == {"nms_mask": 2}
    assert fc.sync_count() == 2      # the bitmask comes to the host for the sequential walk, once per call
    np.testing.assert_array_equal(keep.get(), nms(boxes, scores, 0.5))
    np.testing.assert_array_equal(keep_b.get(), batched_nms(boxes, scores, idxs, 0.5))


def test_batched_mask_pasting_equals_the_per_box_loop(rng):
    from minimask.mask_head import paste_masks_batched, paste_masks_in_image

    for _ in range(10):
        D = int(rng.integers(0, 30))
        masks = rng.random((D, 1, 28, 28)).astype(np.float32)
        xy = rng.uniform(-30, 120, (D, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.2, 80, (D, 2))], 1).astype(np.float32)
        H, W = (int(v) for v in rng.integers(20, 100, 2))
        ref = paste_masks_in_image(masks, boxes, (H, W))     # NumPy: the per-box reference loop
        np.testing.assert_array_equal(paste_masks_batched(masks, boxes, (H, W)), ref)   # bit for bit
        fc.reset_counters()
        dev = paste_masks_in_image(fc.asarray(masks), fc.asarray(boxes), (H, W))
        assert fc.sync_count() == 0
        np.testing.assert_array_equal(dev.get(), ref)


# ------------------------------------------------------------------------------------------------
# one step of the model: losses and every gradient equal NumPy's
# ------------------------------------------------------------------------------------------------


def one_step_parity(shapes_dir, device_xp, loss_rtol, grad_tol):
    """One training step of the small model on NumPy and on `device_xp`: equal losses and gradients."""
    ds = CocoDataset(*shapes_paths(shapes_dir, "train"))
    cfg = with_overrides(small_config(num_classes=ds.num_classes, min_size=64, max_size=64, width=16, base_width=16),
                         anchor_sizes=(16, 32, 64, 128, 256))
    images, targets = DataLoader._collate([ds[i] for i in range(N)])
    results = {}
    for xp in (np, device_xp):
        model = MaskRCNN(cfg, rng=np.random.default_rng(0)).to(xp).train()
        losses = model(*backend.to_device((images, targets), xp), rng=np.random.default_rng(1))
        total = None
        for v in losses.values():
            total = v if total is None else total + v
        total.backward()
        results[xp] = ({k: float(backend.to_host(v.data)) for k, v in losses.items()},
                       {k: backend.to_host(p.grad) for k, p in model.named_parameters()})
    (loss_np, grad_np), (loss_dev, grad_dev) = results[np], results[device_xp]
    for k in loss_np:
        assert loss_dev[k] == pytest.approx(loss_np[k], rel=loss_rtol), k
    assert grad_np.keys() == grad_dev.keys()
    for k, g in grad_np.items():
        np.testing.assert_allclose(grad_dev[k], g, rtol=0, atol=grad_tol * max(float(np.abs(g).max()), 1e-12),
                                   err_msg=k)


def test_one_step_losses_and_gradients_equal_numpy(shapes_dir):
    one_step_parity(shapes_dir, fc, loss_rtol=1e-5, grad_tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="needs cupy and a CUDA device")
def test_whole_model_cupy_equals_numpy_on_the_gpu(shapes_dir):
    """The same step on a real GPU (benchmarks/gpu.py runs it). Looser: cuBLAS and OpenBLAS sum the
    GEMMs in different orders (float32, K up to 2304: ~1e-6 relative per layer, through ~30 layers)."""
    one_step_parity(shapes_dir, backend._import_cupy(), loss_rtol=1e-3, grad_tol=1e-3)


# ------------------------------------------------------------------------------------------------
# the main job on the device: 3 iterations, then evaluate and predict; every sync accounted for
# ------------------------------------------------------------------------------------------------

# Every device -> host transfer or sync of one training iteration (no checkpoint), keyed by
# (kind, "file:function"), with why it exists; none depends on the batch size. Anything new fails the test.
EXPECTED_SYNCS_PER_ITERATION = {
    # the logged loss values: all five in one copy, and the (clipped) gradient norm that is logged with them
    ("get", "minimask/train.py:train"): 2,
    # target values checked (finite, inside the image, labels in range): one flag per image, read together
    ("get", "minimask/transform.py:check_targets"): 1,
    # how many crowd boxes each image has (a shape): all images' counts in one copy
    ("get", "minimask/roi_heads.py:_count_crowd"): 1,
    # the balanced samplers (RPN anchors, box-head RoIs) draw on the host with the run's NumPy generator,
    # so CPU and GPU runs sample alike: the labels of all images in one copy per sampler
    ("get", "minimask/matching.py:sample"): 2,
    # how many RoIs go to each FPN level (a shape): once per pooler (box head, mask head)
    ("get", "minimask/poolers.py:multiscale_roi_align"): 2,
    # the positive RoIs of the batch for the box-regression loss (a data-dependent count)
    ("nonzero", "minimask/box_head.py:fastrcnn_loss"): 1,
    # proposals, for the whole batch: the candidates above the size and score thresholds (a count), NMS's
    # sequential walk over the kernel's bitmask on the host (as torchvision's CUDA NMS does; one NMS for
    # all images and levels), and how many proposals each image kept (the sizes of the per-image lists)
    ("nonzero", "minimask/rpn.py:filter_proposals"): 1,
    ("get", "minimask/kernels.py:nms_cuda"): 1,
    ("get", "minimask/rpn.py:filter_proposals"): 1,
    # the mask branch: which sampled RoIs are positive and which gt each matched (so that only the gt masks
    # in use are converted to float), every image's in one copy
    ("get", "minimask/roi_heads.py:_labels_and_matches_on_host"): 1,
}


# Every sync of one inference batch inside the model (as above: none per image)
EXPECTED_SYNCS_PER_INFERENCE_BATCH = {
    ("get", "minimask/poolers.py:multiscale_roi_align"): 2,    # RoIs per FPN level: box head, mask head
    ("nonzero", "minimask/rpn.py:filter_proposals"): 1,        # proposals: candidates, NMS walk, per-image counts
    ("get", "minimask/kernels.py:nms_cuda"): 2,                # ... and the detections' class-wise NMS walk
    ("get", "minimask/rpn.py:filter_proposals"): 1,
    ("nonzero", "minimask/box_head.py:postprocess_detections"): 1,   # detections above the score threshold
    ("get", "minimask/box_head.py:postprocess_detections"): 1,       # how many each image kept
}


@pytest.fixture(scope="module")
def device_run(tmp_path_factory, shapes_dir):
    """3 iterations under `--device cuda` on the stand-in, syncs recorded between batches."""
    mp = pytest.MonkeyPatch()
    mp.setenv(backend.FAKE_CUDA_ENV, "1")
    per_iteration = []
    original = DataLoader.batches

    def batches(self, *args, **kwargs):
        for b in original(self, *args, **kwargs):
            per_iteration.append(collections.Counter(fc.SYNCS))
            yield b

    mp.setattr(DataLoader, "batches", batches)
    fc.reset_counters()
    try:
        cfg = TrainConfig(data_dir=str(shapes_dir), output_dir=str(tmp_path_factory.mktemp("dev")), device="cuda",
                          **TINY)
        result = train(cfg, progress=False)
        launches = collections.Counter(fc.LAUNCHES)
    finally:
        mp.undo()
    deltas = [b - a for a, b in zip(per_iteration, per_iteration[1:], strict=False)]
    return cfg, result, deltas, launches


@pytest.fixture(scope="module")
def host_run(tmp_path_factory, shapes_dir):
    cfg = TrainConfig(data_dir=str(shapes_dir), output_dir=str(tmp_path_factory.mktemp("host")), **TINY)
    return cfg, train(cfg, progress=False)


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_device_training_equals_numpy(device_run, host_run):
    dev, host = _metrics(device_run[1]["run_dir"]), _metrics(host_run[1]["run_dir"])
    assert [r["iteration"] for r in dev] == [1, 2, 3] == [r["iteration"] for r in host]
    for a, b in zip(host, dev, strict=True):
        for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                  "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-4), (a["iteration"], k)


def test_exact_syncs_per_iteration(device_run):
    deltas = device_run[2]
    assert len(deltas) == TINY["iterations"] - 1          # iterations 1 and 2 (3 ends with the checkpoint)
    for it, d in enumerate(deltas, start=1):
        got = {k: v for k, v in d.items() if v}
        assert got == EXPECTED_SYNCS_PER_ITERATION, f"iteration {it}: " + "\n".join(
            f"{k}: {got.get(k, 0)} (expected {EXPECTED_SYNCS_PER_ITERATION.get(k, 0)})"
            for k in sorted(set(got) | set(EXPECTED_SYNCS_PER_ITERATION), key=str)
            if got.get(k, 0) != EXPECTED_SYNCS_PER_ITERATION.get(k, 0))
    assert sum(EXPECTED_SYNCS_PER_ITERATION.values()) == 13   # 2 logged values, 11 per batch, none per image


def test_device_run_used_the_kernels(device_run):
    launches = device_run[3]
    for name in ("roi_align_forward", "roi_align_backward", "nms_mask"):
        assert launches[name] > 0, name


def test_detections_on_the_device_equal_numpy(host_run, shapes_dir, monkeypatch):
    """The same checkpoint, evaluated on both devices: the same detections (scores to 1e-4: the
    RoIAlign kernel's float32 rounding reaches the box head)."""
    ckpt = Path(host_run[1]["run_dir"]) / "checkpoint_0000003.npz"
    ds = CocoDataset(*shapes_paths(shapes_dir, "val"))
    cpu_model, _ = load_checkpoint_model(ckpt, device="cpu")
    monkeypatch.setenv(backend.FAKE_CUDA_ENV, "1")
    dev_model, _ = load_checkpoint_model(ckpt, device="cuda")
    assert backend.module_of(dev_model) is fc
    a = evaluate.predict_dataset(cpu_model, ds, batch_size=2, progress=False)
    fc.reset_counters()
    b = evaluate.predict_dataset(dev_model, ds, batch_size=2, progress=False)      # one batch of 2 images
    assert len(a) == len(b) > 0
    model_syncs = {k: v for k, v in fc.SYNCS.items() if not k[1].startswith("minimask/coco_eval.py")}
    assert model_syncs == EXPECTED_SYNCS_PER_INFERENCE_BATCH
    # the detections handed to COCOeval: boxes, scores, labels and masks of each image, nothing else
    assert set(fc.SYNCS) - set(model_syncs) == {("get", "minimask/coco_eval.py:detections_to_coco")}
    assert fc.SYNCS["get", "minimask/coco_eval.py:detections_to_coco"] <= 4 * len(ds)
    for ra, rb in zip(a, b, strict=True):
        assert (ra["image_id"], ra["category_id"]) == (rb["image_id"], rb["category_id"])
        assert rb["score"] == pytest.approx(ra["score"], rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(rb["bbox"], ra["bbox"], atol=1e-2)


def test_checkpoints_cross_devices(device_run, host_run, monkeypatch):
    dev_ckpt = Path(device_run[1]["run_dir"]) / "checkpoint_0000003.npz"
    on_cpu, _ = load_checkpoint_model(dev_ckpt, device="cpu")           # written on the device, read on the CPU
    assert backend.module_of(on_cpu) is np
    monkeypatch.setenv(backend.FAKE_CUDA_ENV, "1")
    on_dev, _ = load_checkpoint_model(dev_ckpt, device="cuda")
    host_ckpt = Path(host_run[1]["run_dir"]) / "checkpoint_0000003.npz"
    host_on_dev, _ = load_checkpoint_model(host_ckpt, device="cuda")     # and the reverse
    assert backend.module_of(host_on_dev) is fc
    for (k, p), (_, q) in zip(on_cpu.named_parameters(), on_dev.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data.get(), err_msg=k)


def test_evaluate_and_predict_cli_on_the_device(device_run, shapes_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(backend.FAKE_CUDA_ENV, "1")
    ckpt = str(Path(device_run[1]["run_dir"]) / "checkpoint_0000003.npz")
    assert evaluate.main(["--checkpoint", ckpt, "--device", "cuda", "--limit", "2",
                          "--output-dir", str(tmp_path / "ev")]) == 0
    assert "segm AP" in capsys.readouterr().out
    image = Path(shapes_dir) / "images" / "val" / "000001.png"
    fc.reset_counters()
    assert predict.main([str(image), "--checkpoint", ckpt, "--device", "cuda", "--score-thresh", "0.0",
                         "--output-dir", str(tmp_path / "pr")]) == 0
    assert (tmp_path / "pr" / (image.stem + ".png")).stat().st_size > 1000
    assert fc.LAUNCHES["roi_align_forward"] > 0 and fc.LAUNCHES["nms_mask"] > 0


def test_device_flag_without_a_device_is_a_clear_error(monkeypatch, capsys):
    if backend.cupy_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.delenv(backend.FAKE_CUDA_ENV, raising=False)
    assert evaluate.main(["--checkpoint", "missing.npz", "--device", "cuda"]) == 2
    assert "MINIMASK_FAKE_CUDA" in capsys.readouterr().err


def test_convolutions_on_the_device_take_im2col(rng, monkeypatch):
    """On CuPy arrays every non-1x1 conv is im2col + one GEMM (conv.DEVICE_PATH), never the CPU's
    Winograd or shifted paths, whose choice was measured on OpenBLAS."""
    from minimask import conv, fast
    from minimask.fast import conv as conv_engine
    from minimask.fast import conv_paths, winograd
    from minimask.tape import Tensor

    def refuse(*a, **k):
        raise AssertionError("a CPU-only conv path ran on the device")

    x = rng.standard_normal((1, 128, 16, 16)).astype(np.float32)
    w = (rng.standard_normal((128, 128, 3, 3)) * 0.05).astype(np.float32)
    ref = conv.conv2d_forward(x, w, None, 1, 1)[0]            # the CPU's Winograd result
    for name in ("winograd_conv", "winograd_backward"):
        monkeypatch.setattr(winograd, name, refuse)
    monkeypatch.setattr(conv_paths, "shifted_weight_grad", refuse)
    assert conv_engine.choose_path(x.shape, 128, (3, 3), (1, 1), (1, 1), (1, 1)) == "winograd"     # on the CPU
    assert fast.pick_conv(x.shape, w.shape, (1, 1), (1, 1), (1, 1), on_device=True) is None     # the reference
    assert conv.DEVICE_PATH == "im2col"
    t = Tensor(fc.asarray(x), requires_grad=True)
    out = conv.conv2d(t, Tensor(fc.asarray(w)), None, 1, 1)
    out.backward(fc.ones(out.shape, np.float32))
    np.testing.assert_allclose(out.data.get(), ref, rtol=1e-4, atol=1e-4)
