"""The paper's Table 2b and 2e mask alternatives: the multinomial (softmax) mask loss and the MLP mask head.

Checked like the defaults (tests/test_mask_head.py): float64 gradients through the tape, and torch as the
oracle for values and gradients (torch.nn.functional.cross_entropy over the K channels per pixel; an
nn.Sequential of Linear layers with the same weights).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimask.mask_head import maskrcnn_loss
from minimask.mask_mlp import MaskRCNNMLPHead, MaskRCNNMLPPredictor
from minimask.mask_softmax import maskrcnn_inference_softmax, maskrcnn_loss_softmax, softmax_mask_targets
from minimask.module import Parameter
from minimask.tape import Tensor
from tests.gradcheck import tape_gradcheck


def _problem(rng, P=3, K=4, M=5, dtype=np.float64):
    logits = rng.standard_normal((P, K, M, M)).astype(dtype)
    labels = rng.integers(1, K, P)
    targets = (rng.random((P, M, M)) > 0.5).astype(dtype)
    return logits, labels, targets


def test_softmax_targets_are_the_class_inside_and_background_outside():
    labels = np.array([2, 1])
    t = np.array([[[1.0, 0.4], [0.5, 0.0]], [[0.0, 1.0], [0.7, 0.2]]])
    np.testing.assert_array_equal(softmax_mask_targets(labels, t), [[[2, 0], [2, 0]], [[0, 1], [1, 0]]])


def test_softmax_mask_loss_gradient_checks_in_float64(rng):
    logits, labels, targets = _problem(rng)
    p = Parameter(logits)
    tape_gradcheck([p], lambda: maskrcnn_loss_softmax(p, labels, targets), max_checks=60)


def test_softmax_mask_loss_equals_torch_cross_entropy(rng, torch):
    logits, labels, targets = _problem(rng, P=4, K=5, M=7, dtype=np.float32)
    p = Parameter(logits)
    loss = maskrcnn_loss_softmax(p, labels, targets)
    loss.backward()
    tl = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(tl, torch.from_numpy(softmax_mask_targets(labels, targets)))
    want.backward()
    assert float(loss.data) == pytest.approx(want.item(), rel=1e-6)
    np.testing.assert_allclose(p.grad, tl.grad.numpy(), rtol=1e-5, atol=1e-8)


@given(seed=st.integers(0, 2**31 - 1), P=st.integers(1, 4), K=st.integers(2, 5), shift=st.floats(-50, 50))
def test_softmax_mask_loss_properties(seed, P, K, shift):
    """Positive; unchanged when one constant is added to all K channels of a pixel (a softmax); and the
    classes compete, unlike the sigmoid loss: raising a non-target class channel raises the softmax loss
    and leaves the sigmoid loss alone (it reads only the gt class's channel)."""
    rng = np.random.default_rng(seed)
    logits, labels, targets = _problem(rng, P=P, K=K, M=4)
    base = float(maskrcnn_loss_softmax(Tensor(logits), labels, targets).data)
    assert base > 0
    bump = np.full((P, 1, 4, 4), shift)
    assert float(maskrcnn_loss_softmax(Tensor(logits + bump), labels, targets).data) == pytest.approx(base, rel=1e-9)
    other = (labels % (K - 1)) + 1                       # a class channel that is not the gt class ...
    if K > 2:
        raised = logits.copy()
        raised[np.arange(P), other] += 5.0
        assert float(maskrcnn_loss_softmax(Tensor(raised), labels, targets).data) > base
        assert float(maskrcnn_loss(Tensor(raised), labels, targets).data) == float(
            maskrcnn_loss(Tensor(logits), labels, targets).data)


def test_softmax_mask_loss_with_no_positives_is_zero_with_a_zero_gradient():
    p = Parameter(np.ones((0, 3, 4, 4)))
    loss = maskrcnn_loss_softmax(p, np.zeros(0, np.int64), np.zeros((0, 4, 4)))
    loss.backward()
    assert float(loss.data) == 0.0 and p.grad.shape == (0, 3, 4, 4)


def test_softmax_inference_is_where_the_class_wins_the_pixel(rng, torch):
    logits = rng.standard_normal((5, 4, 6, 6)).astype(np.float32)
    labels = [np.array([1, 3]), np.array([2, 2, 1])]
    out = maskrcnn_inference_softmax(logits, labels)
    winner = torch.softmax(torch.from_numpy(logits), dim=1).argmax(dim=1).numpy()   # (5, 6, 6)
    lab = np.concatenate(labels)
    assert [o.shape for o in out] == [(2, 1, 6, 6), (3, 1, 6, 6)]
    np.testing.assert_array_equal(np.concatenate(out)[:, 0], (winner == lab[:, None, None]).astype(np.float32))


def test_softmax_inference_keeps_a_pixel_its_class_wins_below_one_half():
    # class 1 wins with softmax 0.4 against 0.2 each: its pixel is in the mask (a 0.5 threshold on the
    # probability would drop it); where background wins, it is not
    p_win, p_lose = np.log([0.2, 0.4, 0.2, 0.2]), np.log([0.4, 0.2, 0.2, 0.2])
    logits = np.stack([p_win, p_lose], axis=1).reshape(1, 4, 1, 2).astype(np.float32)
    (out,) = maskrcnn_inference_softmax(logits, [np.array([1])])
    np.testing.assert_array_equal(out[0, 0], [[1.0, 0.0]])


# ------------------------------------------------------------------------------------------------
# the MLP mask head (Table 2e)
# ------------------------------------------------------------------------------------------------


def _mlp(rng, C=3, S=4, dim=8, K=3, M=6):
    head = MaskRCNNMLPHead(C * S * S, dim, rng=rng)
    pred = MaskRCNNMLPPredictor(dim, K, M, rng=rng)
    return head, pred


def test_mlp_head_loss_gradient_checks_in_float64(rng):
    head, pred = _mlp(rng)
    params = list(head.parameters()) + list(pred.parameters())
    for p in params:
        p.data = p.data.astype(np.float64)
    x = Parameter(rng.standard_normal((5, 3, 4, 4)))
    labels = rng.integers(1, 3, 5)
    targets = (rng.random((5, 6, 6)) > 0.5).astype(np.float64)
    for loss_fn in (maskrcnn_loss, maskrcnn_loss_softmax):
        tape_gradcheck(params + [x], lambda lf=loss_fn: lf(pred(head(x)), labels, targets), max_checks=40)


def test_mlp_head_equals_torch_linear_layers(rng, torch):
    head, pred = _mlp(rng, C=4, S=5, dim=16, K=4, M=7)
    x = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    labels = rng.integers(1, 4, 6)
    targets = (rng.random((6, 7, 7)) > 0.5).astype(np.float32)
    xt = Parameter(x)
    logits = pred(head(xt))
    assert logits.shape == (6, 4, 7, 7)
    loss = maskrcnn_loss(logits, labels, targets)
    loss.backward()

    layers = [head.mask_fc1, head.mask_fc2, pred.mask_fcn_logits]
    lin = [torch.nn.Linear(m.in_features, m.out_features) for m in layers]
    with torch.no_grad():
        for t, m in zip(lin, layers, strict=True):
            t.weight.copy_(torch.from_numpy(m.weight.data))
            t.bias.copy_(torch.from_numpy(m.bias.data))
    net = torch.nn.Sequential(torch.nn.Flatten(), lin[0], torch.nn.ReLU(), lin[1], torch.nn.ReLU(), lin[2])
    tx = torch.tensor(x, requires_grad=True)
    tlogits = net(tx).reshape(6, 4, 7, 7)
    np.testing.assert_allclose(logits.data, tlogits.detach().numpy(), rtol=1e-5, atol=1e-6)
    picked = tlogits[torch.arange(6), torch.from_numpy(labels)]
    tloss = torch.nn.functional.binary_cross_entropy_with_logits(picked, torch.from_numpy(targets))
    tloss.backward()
    assert float(loss.data) == pytest.approx(tloss.item(), rel=1e-5)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-4, atol=1e-7)
    for t, m in zip(lin, layers, strict=True):
        np.testing.assert_allclose(m.weight.grad, t.weight.grad.numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(m.bias.grad, t.bias.grad.numpy(), rtol=1e-4, atol=1e-7)


@given(P=st.integers(0, 5), C=st.integers(1, 4), S=st.integers(1, 4), K=st.integers(2, 4), M=st.integers(1, 6))
def test_mlp_head_shapes(P, C, S, K, M):
    rng = np.random.default_rng(0)
    head, pred = _mlp(rng, C=C, S=S, dim=4, K=K, M=M)
    out = pred(head(Tensor(rng.standard_normal((P, C, S, S)).astype(np.float32))))
    assert out.shape == (P, K, M, M) and out.data.dtype == np.float32


def test_softmax_inference_on_the_stand_in_device_equals_numpy_without_a_sync(rng):
    from minimask.testing import fake_cuda as fc

    logits = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    labels = [np.array([1, 2]), np.array([3])]
    host = maskrcnn_inference_softmax(logits, labels)
    fc.reset_counters()
    dev = maskrcnn_inference_softmax(fc.asarray(logits), [fc.asarray(lab) for lab in labels])
    assert fc.sync_count() == 0                                  # the argmax stays on the device
    for h, d in zip(host, dev, strict=True):
        np.testing.assert_array_equal(d.get(), h)
