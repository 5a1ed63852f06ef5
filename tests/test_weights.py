"""Loading torchvision-named weights, the .pth -> .npz converter, and the data-path lookup."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minimask import paths
from minimask.fpn import resnet_fpn_backbone
from minimask.module import load_state_file, save_state_dict
from minimask.resnet import resnet18
from minimask.weights import load_maskrcnn_state, load_resnet_imagenet, load_torchvision_state

REPO = Path(__file__).resolve().parent.parent


def small_backbone(seed=0):
    return resnet_fpn_backbone("resnet18", rng=np.random.default_rng(seed))


def snapshot(model):
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def random_state_like(model, seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(np.shape(v)).astype(np.float32) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# errors: everything listed at once, nothing loaded


def test_load_errors_are_listed_together_and_nothing_is_loaded():
    model = small_backbone()
    before = snapshot(model)
    state = random_state_like(model, 1)
    del state["body.layer2.0.conv1.weight"]                     # missing
    state["body.layer5.0.conv1.weight"] = np.zeros(3, np.float32)  # unexpected
    state["fpn.inner_blocks.0.0.weight"] = np.zeros((256, 63, 1, 1), np.float32)  # wrong shape
    with pytest.raises(ValueError) as info:
        load_torchvision_state(model, state)
    msg = str(info.value)
    assert "body.layer2.0.conv1.weight" in msg
    assert "body.layer5.0.conv1.weight" in msg
    assert "fpn.inner_blocks.0.0.weight" in msg and "(256, 63, 1, 1)" in msg
    after = snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "model changed by a failed load"


def test_load_roundtrip_through_npz(tmp_path):
    src, dst = small_backbone(1), small_backbone(2)
    path = tmp_path / "backbone.npz"
    save_state_dict(src.state_dict(), path)
    result = load_torchvision_state(dst, path)
    assert result.missing == [] and result.unexpected == [] and result.ignored == []
    a, b = src.state_dict(), dst.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_num_batches_tracked_is_ignored_and_reported():
    model = small_backbone()
    state = random_state_like(model, 3)
    state["body.bn1.num_batches_tracked"] = np.array(7, np.int64)
    result = load_torchvision_state(model, state)
    assert result.ignored == ["body.bn1.num_batches_tracked"]
    np.testing.assert_array_equal(model.state_dict()["body.bn1.running_var"], state["body.bn1.running_var"])


def test_load_rejects_other_inputs():
    with pytest.raises(TypeError):
        load_torchvision_state(small_backbone(), 42)
    with pytest.raises(FileNotFoundError):
        load_torchvision_state(small_backbone(), "/nonexistent/weights.npz")


# ---------------------------------------------------------------------------------------------
# ImageNet classification weights -> body; Mask R-CNN weights -> backbone


def imagenet_like_state(seed):
    """A classification state dict as torchvision writes it: trunk keys + fc + num_batches_tracked."""
    trunk = resnet18(rng=np.random.default_rng(seed))
    state = random_state_like(trunk, seed)
    state["fc.weight"] = np.ones((1000, 512), np.float32)
    state["fc.bias"] = np.ones(1000, np.float32)
    state["layer1.0.bn1.num_batches_tracked"] = np.array(1, np.int64)
    return state


def test_imagenet_loader_fills_body_and_ignores_fc():
    model = small_backbone()
    fpn_before = {k: v.copy() for k, v in model.state_dict().items() if k.startswith("fpn.")}
    state = imagenet_like_state(5)
    result = load_resnet_imagenet(model, state)
    assert sorted(result.ignored) == ["fc.bias", "fc.weight", "layer1.0.bn1.num_batches_tracked"]
    ours = model.state_dict()
    for k, v in state.items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(ours["body." + k], v)
    for k, v in fpn_before.items():  # the FPN is not touched
        np.testing.assert_array_equal(ours[k], v)
    # the trunk alone works too
    trunk = resnet18(rng=np.random.default_rng(0))
    load_resnet_imagenet(trunk, state)
    np.testing.assert_array_equal(trunk.state_dict()["conv1.weight"], state["conv1.weight"])


def test_imagenet_loader_reports_missing_with_model_names():
    model = small_backbone()
    state = imagenet_like_state(5)
    del state["layer4.1.conv2.weight"]
    with pytest.raises(ValueError, match="layer4.1.conv2.weight"):
        load_resnet_imagenet(model, state)


def test_maskrcnn_loader_strips_backbone_prefix_and_lists_heads():
    model = small_backbone()
    inner = random_state_like(model, 6)
    state = {"backbone." + k: v for k, v in inner.items()}
    state["rpn.head.conv.0.0.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    state["roi_heads.box_head.fc6.weight"] = np.zeros((4, 4), np.float32)
    result = load_maskrcnn_state(model, state)
    assert sorted(result.ignored) == ["roi_heads.box_head.fc6.weight", "rpn.head.conv.0.0.weight"]
    np.testing.assert_array_equal(model.state_dict()["fpn.layer_blocks.3.0.bias"], inner["fpn.layer_blocks.3.0.bias"])


# ---------------------------------------------------------------------------------------------
# torchvision's real key names and the converter script


def _load_converter():
    spec = importlib.util.spec_from_file_location("convert_torchvision", REPO / "tools" / "convert_torchvision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.oracle
def test_converter_and_maskrcnn_checkpoint(torch, tmp_path):
    """torch.save(maskrcnn_resnet50_fpn().state_dict()) -> converter -> load into our backbone."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    pth, npz = tmp_path / "maskrcnn.pth", tmp_path / "maskrcnn.npz"
    torch.save(tv.state_dict(), pth)
    _load_converter().main([str(pth), str(npz)])
    arrays = load_state_file(npz)
    assert not any(k.endswith("num_batches_tracked") for k in arrays)
    assert all(a.dtype == np.float32 for a in arrays.values())

    ours = resnet_fpn_backbone("resnet50", rng=np.random.default_rng(0))
    result = load_maskrcnn_state(ours, npz)
    assert result.ignored and all(k.startswith(("rpn.", "roi_heads.")) for k in result.ignored)
    ref = tv.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(v, ref["backbone." + k].numpy(), err_msg=k)


@pytest.mark.oracle
def test_imagenet_resnet50_state_dict_loads(torch):
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
    state = {k: v.numpy() for k, v in tv.state_dict().items()}
    ours = resnet_fpn_backbone("resnet50", rng=np.random.default_rng(0))
    result = load_resnet_imagenet(ours, state)
    assert {"fc.weight", "fc.bias"} <= set(result.ignored)
    assert {k for k in result.ignored if not k.startswith("fc.")} == {k for k in state if "num_batches" in k}
    got = ours.state_dict()
    for k, v in state.items():
        if k not in result.ignored:
            np.testing.assert_array_equal(got["body." + k], v, err_msg=k)


# ---------------------------------------------------------------------------------------------
# data paths


def test_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "env"))
    assert paths.data_dir(tmp_path / "explicit") == tmp_path / "explicit"   # explicit wins
    assert paths.data_dir() == tmp_path / "env"                             # then the variable
    monkeypatch.delenv(paths.ENV_VAR)
    found = paths.data_dir()                                                # then shared/data nearby
    assert found is None or (found.name == "data" and found.parent.name == "shared" and found.is_dir())


def test_coco128_dir_found_or_clear_error(tmp_path, monkeypatch):
    (tmp_path / "coco128" / "train2017").mkdir(parents=True)
    (tmp_path / "coco128" / "annotations").mkdir()
    assert paths.coco128_dir(tmp_path) == tmp_path / "coco128"
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        paths.coco128_dir()
    assert str(tmp_path / "nowhere" / "coco128") in str(info.value) and paths.ENV_VAR in str(info.value)


def test_data_dir_searches_parents_of_cwd(tmp_path, monkeypatch):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "nbs").mkdir(parents=True)
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "elsewhere" / "repo")
    monkeypatch.chdir(tmp_path / "repo" / "nbs")
    assert paths.data_dir() == (tmp_path / "shared" / "data").resolve()
