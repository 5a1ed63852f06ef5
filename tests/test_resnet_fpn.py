"""ResNet trunk and FPN: shapes, freezing, float64 gradient checks, and parity with torchvision.

The oracle tests copy torchvision's randomly initialised weights into minimask (after giving every
FrozenBatchNorm2d non-trivial statistics, so a wrong norm would show) and compare outputs/gradients.
"""

import numpy as np
import pytest
from gradcheck import gradcheck
from hypothesis import given, settings
from hypothesis import strategies as st

from minimask.fpn import resnet_fpn_backbone
from minimask.layers import FrozenBatchNorm2d
from minimask.module import Sequential
from minimask.resnet import (
    BasicBlock,
    Bottleneck,
    _conv,
    make_norm,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    set_trainable_layers,
)
from minimask.tape import Tensor, no_grad
from minimask.weights import load_torchvision_state

# ---------------------------------------------------------------------------------------------
# helpers


def torch_state(module):
    """torch state dict -> dict of NumPy arrays (num_batches_tracked is dropped by the loader)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def randomise_torch_frozen_bn(torch, model, seed=0):
    """Give torchvision's FrozenBatchNorm2d layers non-trivial affine and statistics (identity by default)."""
    from torchvision.ops.misc import FrozenBatchNorm2d as TFrozenBN

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (TFrozenBN, torch.nn.BatchNorm2d)):
            c = m.weight.shape[0]
            # scale around 1 keeps activations O(1) through 50 layers; the shifts make every term matter
            m.weight.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|: a relative error that no single large element can hide in."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} vs torch {ref.shape}"
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def set_float64(module, rng):
    """Turn a module's parameters and buffers into float64, with non-trivial FrozenBN statistics."""
    for m in module.modules():
        for p in m._parameters.values():
            p.data = p.data.astype(np.float64)
        for name, b in list(m._buffers.items()):
            if isinstance(m, FrozenBatchNorm2d):
                c = b.shape[0]
                b = {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.1, c),
                     "running_mean": rng.normal(0, 0.1, c), "running_var": rng.uniform(0.5, 1.5, c)}[name]
            m._buffers[name] = np.asarray(b, dtype=np.float64)


def module_as_op(module):
    """(forward, backward, params) so that tests/gradcheck.py can check a Module through the tape.

    forward(x, *weights) writes the weight arrays into the parameters and runs the module on a
    Tensor; backward(g, cache) runs the tape and returns (dx, *dweights).
    """
    params = [p for _, p in module.named_parameters()]

    def forward(x, *weights):
        for p, w in zip(params, weights, strict=True):
            p.data = w
            p.grad = None
        xt = Tensor(x, requires_grad=True)
        out = module(xt)
        return out.data, (out, xt)

    def backward(g, cache):
        out, xt = cache
        out.backward(g)
        return (xt.grad, *[p.grad for p in params])

    return forward, backward, params


def make_block(kind, inplanes, planes, stride, norm, rng):
    block = BasicBlock if kind == "basic" else Bottleneck
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = Sequential([_conv(inplanes, planes * block.expansion, 1, stride=stride, rng=rng),
                                 make_norm(norm, planes * block.expansion)])
    return block(inplanes, planes, stride, downsample, norm=norm, rng=rng)


# ---------------------------------------------------------------------------------------------
# shapes and input checks


def test_pyramid_shapes_and_keys():
    model = resnet_fpn_backbone("resnet18", rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)
    with no_grad():
        c = model.body(x)
        p = model(x)
    assert list(c) == ["0", "1", "2", "3"]
    assert [tuple(v.shape) for v in c.values()] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6),
                                                    (2, 512, 2, 3)]
    assert list(p) == ["0", "1", "2", "3", "pool"]  # P2..P6
    assert [tuple(v.shape) for v in p.values()] == [(2, 256, 16, 24), (2, 256, 8, 12), (2, 256, 4, 6),
                                                    (2, 256, 2, 3), (2, 256, 1, 2)]
    assert all(v.dtype == np.float32 for v in p.values())
    # P6 is a kernel-1 stride-2 max pool of P5: every other pixel
    np.testing.assert_array_equal(p["pool"].data, p["3"].data[:, :, ::2, ::2])


def test_returned_layers_subset():
    model = resnet_fpn_backbone("resnet18", returned_layers=(2, 3, 4), rng=np.random.default_rng(0))
    x = np.zeros((1, 3, 64, 64), np.float32)
    with no_grad():
        p = model(x)
    assert list(p) == ["0", "1", "2", "pool"]
    assert [v.shape[-1] for v in p.values()] == [8, 4, 2, 1]  # P3..P6


@pytest.mark.parametrize("shape", [(1, 3, 64, 70), (1, 3, 48, 64), (3, 64, 64), (1, 4, 64, 64)])
def test_bad_input_raises(shape):
    model = resnet_fpn_backbone("resnet18", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(") as info:
        model(np.zeros(shape, np.float32))
    assert str(tuple(shape)) in str(info.value)
    if len(shape) == 4 and shape[1] == 3:
        assert "pads" in str(info.value)


def test_integer_input_raises():
    with pytest.raises(ValueError, match="floating"):
        resnet18(rng=np.random.default_rng(0))(np.zeros((1, 3, 64, 64), np.uint8))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="norm"):
        resnet18(norm="batch_norm")
    with pytest.raises(ValueError, match="trainable_layers"):
        resnet_fpn_backbone("resnet18", trainable_layers=6)
    with pytest.raises(ValueError, match="backbone_name"):
        resnet_fpn_backbone("resnet152")


# ---------------------------------------------------------------------------------------------
# freezing


@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
def test_frozen_layers_get_no_gradient(norm):
    model = resnet_fpn_backbone("resnet18", norm=norm, trainable_layers=3, rng=np.random.default_rng(0))
    x = Tensor(np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32),
               requires_grad=True)  # even with an input that wants a gradient
    out = model(x)
    loss = None
    for v in out.values():
        loss = v.sum() if loss is None else loss + v.sum()
    loss.backward()
    assert x.grad is not None and np.abs(x.grad).sum() > 0
    for name, p in model.named_parameters():
        frozen = name.startswith(("body.conv1", "body.bn1", "body.layer1"))
        assert p.requires_grad == (not frozen), name
        if frozen:
            assert p.grad is None, f"{name} is frozen but got a gradient"
        else:
            assert p.grad is not None and p.grad.shape == p.shape, name


def test_trainable_layers_count():
    body = resnet18(rng=np.random.default_rng(0))
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    for k in range(6):
        set_trainable_layers(body, k)
        trained = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
        assert trained == set(stages[len(stages) - k:]), f"trainable_layers={k}"


@pytest.mark.oracle
@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
def test_trainable_layers_match_torchvision(torch, norm):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_backbone

    norm_layer = None if norm == "frozen_bn" else (lambda c: torch.nn.GroupNorm(32, c))
    for k in range(6):
        kwargs = {} if norm_layer is None else {"norm_layer": norm_layer}
        tv = tv_backbone(backbone_name="resnet18", weights=None, trainable_layers=k, **kwargs)
        ours = resnet_fpn_backbone("resnet18", norm=norm, trainable_layers=k, rng=np.random.default_rng(0))
        tv_flags = {n: p.requires_grad for n, p in tv.named_parameters()}
        our_flags = {n: p.requires_grad for n, p in ours.named_parameters()}
        assert our_flags == tv_flags, f"trainable_layers={k}"


# ---------------------------------------------------------------------------------------------
# float64 gradient checks of whole blocks through the tape


@settings(max_examples=8)
@given(kind=st.sampled_from(["basic", "bottleneck"]), stride=st.sampled_from([1, 2]),
       shortcut=st.booleans(), size=st.integers(3, 6), seed=st.integers(0, 2**16))
def test_block_gradcheck_frozen_bn(kind, stride, shortcut, size, seed):
    rng = np.random.default_rng(seed)
    planes = 2
    expansion = 1 if kind == "basic" else 4
    # shortcut=False with stride 1 and matching channels: identity shortcut; else a downsample branch
    inplanes = planes * expansion if not shortcut else 3
    stride = stride if shortcut else 1
    block = make_block(kind, inplanes, planes, stride, "frozen_bn", rng)
    set_float64(block, rng)
    forward, backward, params = module_as_op(block)
    x = rng.standard_normal((2, inplanes, size, size))
    # float64 central differences (eps 1e-6): truncation ~1e-9, far below atol 1e-6
    gradcheck(forward, backward, [x] + [p.data.copy() for p in params], max_checks=25, seed=seed)


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_block_gradcheck_group_norm(kind):
    rng = np.random.default_rng(3)
    planes = 32  # GroupNorm uses 32 groups, so channels must be a multiple of 32
    block = make_block(kind, 8, planes, 2, "group_norm", rng)
    set_float64(block, rng)
    for m in block.modules():  # non-trivial GroupNorm affine (default is weight 1, bias 0)
        if "weight" in m._parameters and m._parameters["weight"].ndim == 1:
            m._parameters["weight"].data = rng.uniform(0.5, 1.5, m._parameters["weight"].shape)
            m._parameters["bias"].data = rng.normal(0, 0.1, m._parameters["bias"].shape)
    forward, backward, params = module_as_op(block)
    x = rng.standard_normal((1, 8, 4, 4))
    gradcheck(forward, backward, [x] + [p.data.copy() for p in params], max_checks=15)


# ---------------------------------------------------------------------------------------------
# parameter counts (torchvision documents these totals, fc included)

TORCHVISION_TOTALS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160}


@pytest.mark.parametrize("builder", [resnet18, resnet34, resnet50, resnet101], ids=lambda b: b.__name__)
def test_parameter_counts_match_torchvision_docs(builder):
    body = builder(norm="group_norm", rng=np.random.default_rng(0))  # GN: affine are parameters, as BN
    c5 = body.out_channels_list[-1]
    fc = c5 * 1000 + 1000  # the ImageNet classifier that a detection trunk does not have
    assert body.num_parameters() + fc == TORCHVISION_TOTALS[builder.__name__]
    # frozen BN: the same numbers, but the per-channel affine are buffers, not parameters
    frozen = builder(rng=np.random.default_rng(0))
    n_affine = sum(b.size for n, b in frozen.named_buffers() if n.endswith(("weight", "bias")))
    assert frozen.num_parameters() + n_affine + fc == TORCHVISION_TOTALS[builder.__name__]


@pytest.mark.oracle
def test_fpn_parameter_count_matches_torchvision(torch):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_backbone

    tv = tv_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
    ours = resnet_fpn_backbone("resnet50", trainable_layers=5, rng=np.random.default_rng(0))
    assert ours.num_parameters() == sum(p.numel() for p in tv.parameters())
    assert ours.num_parameters(trainable_only=True) == sum(p.numel() for p in tv.parameters() if p.requires_grad)
    assert set(ours.state_dict()) == set(tv.state_dict())


# ---------------------------------------------------------------------------------------------
# parity with torchvision


@pytest.mark.oracle
def test_resnet50_fpn_parity_with_torchvision(torch):
    """C2..C5 and P2..P6 on a random 3x512x640 image, identical weights, relative error <= 1e-4."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as tv_backbone

    torch.manual_seed(0)
    tv = tv_backbone(backbone_name="resnet50", weights=None, trainable_layers=3).eval()
    with torch.no_grad():
        randomise_torch_frozen_bn(torch, tv)
        # torchvision's FPN biases start at 0; make them matter
        for n, p in tv.fpn.named_parameters():
            if n.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape))
    ours = resnet_fpn_backbone("resnet50", rng=np.random.default_rng(0))
    load_torchvision_state(ours, torch_state(tv))

    x = np.random.default_rng(0).standard_normal((1, 3, 512, 640)).astype(np.float32)
    with torch.no_grad():
        tc = tv.body(torch.from_numpy(x))
        tp = tv.fpn(tc)
    with no_grad():
        oc = ours.body(x)
        op = ours.fpn(oc)
    # float32 through ~55 layers: rounding differences of ~1e-6 relative; 1e-4 is the bound
    for k in ["0", "1", "2", "3"]:
        assert rel_err(oc[k].data, tc[k].numpy()) <= 1e-4, f"C{int(k) + 2}"
    assert list(op) == list(tp) == ["0", "1", "2", "3", "pool"]
    for k in op:
        assert rel_err(op[k].data, tp[k].numpy()) <= 1e-4, f"P level {k}"


@pytest.mark.oracle
@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
def test_bottleneck_gradients_match_torch(torch, norm):
    from torchvision.models.resnet import Bottleneck as TBottleneck
    from torchvision.ops.misc import FrozenBatchNorm2d as TFrozenBN

    torch.manual_seed(0)
    inplanes, planes, stride = 64, 32, 2
    norm_layer = TFrozenBN if norm == "frozen_bn" else (lambda c: torch.nn.GroupNorm(32, c))
    down = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                               norm_layer(planes * 4))
    tblock = TBottleneck(inplanes, planes, stride, down, norm_layer=norm_layer)
    with torch.no_grad():
        randomise_torch_frozen_bn(torch, tblock)
        for m in tblock.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape))
    block = make_block("bottleneck", inplanes, planes, stride, norm, np.random.default_rng(0))
    load_torchvision_state(block, torch_state(tblock))

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, inplanes, 16, 16)).astype(np.float32)
    g = rng.standard_normal((2, planes * 4, 8, 8)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    tout = tblock(tx)
    tout.backward(torch.from_numpy(g))
    xt = Tensor(x, requires_grad=True)
    out = block(xt)
    out.backward(g)
    # float32 sums over up to 64*9 terms: ~1e-6 relative rounding; 1e-4 leaves a wide margin
    assert rel_err(out.data, tout.detach().numpy()) <= 1e-4
    assert rel_err(xt.grad, tx.grad.numpy()) <= 1e-4
    tgrads = {n: p.grad.numpy() for n, p in tblock.named_parameters()}
    ograds = {n: p.grad for n, p in block.named_parameters()}
    assert set(ograds) == set(tgrads)
    for n in tgrads:
        assert rel_err(ograds[n], tgrads[n]) <= 1e-4, n



@pytest.mark.parametrize("base_width", [16, 32])
def test_narrow_trunk_for_training_from_scratch(base_width):
    rng = np.random.default_rng(0)
    bb = resnet_fpn_backbone("resnet18", norm="group_norm", trainable_layers=5, out_channels=32, rng=rng,
                             base_width=base_width)
    assert bb.body.out_channels_list == [base_width, 2 * base_width, 4 * base_width, 8 * base_width]
    assert bb.body.conv1.weight.shape == (base_width, 3, 7, 7)
    out = bb(Tensor(rng.standard_normal((1, 3, 64, 64)).astype(np.float32)))
    assert [tuple(v.shape) for v in out.values()] == [(1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2),
                                                      (1, 32, 1, 1)]
    for m in bb.modules():  # every group norm has a valid grouping: 32 groups, or groups of 4 when narrower
        if type(m).__name__ == "GroupNorm":
            assert m.num_channels % m.num_groups == 0
            assert m.num_groups == 32 or m.num_channels // m.num_groups == 4
