"""Optimizer, schedule and clipping: parity with torch.optim (oracle), a hand-computed LR schedule,
state-dict resume through a .npz file, and a tiny model that SGD actually trains."""

import numpy as np
import pytest

from minimask import layers, losses
from minimask.module import Module, Parameter, load_state_file, save_state_dict
from minimask.optim import SGD, WarmupMultiStepLR, clip_grad_norm_, lr_at, param_groups
from minimask.tape import Tensor


def _params(rng, shapes, dtype=np.float64):
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


SHAPES = [(3, 4), (5,), (2, 2, 3)]


# --- SGD ----------------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("momentum,weight_decay,nesterov", [
    (0.0, 0.0, False), (0.9, 0.0, False), (0.9, 1e-2, False), (0.9, 1e-2, True), (0.0, 0.1, False),
])
def test_sgd_matches_torch(torch, momentum, weight_decay, nesterov):
    rng = np.random.default_rng(0)
    ours = _params(rng, SHAPES)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    # two groups: the second overrides lr and weight decay, as param_groups() will
    groups = [{"params": ours[:2]}, {"params": ours[2:], "lr": 0.05, "weight_decay": 0.0}]
    opt = SGD(groups, lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    topt = torch.optim.SGD([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.05, "weight_decay": 0.0}],
                           lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for step in range(6):
        grads = [rng.standard_normal(s) for s in SHAPES]
        for i, (p, t, g) in enumerate(zip(ours, theirs, grads, strict=True)):
            skip = step == 2 and i == 1          # a parameter without a gradient this step is left alone
            p.grad = None if skip else g
            t.grad = None if skip else torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)  # float64 both


def test_sgd_skips_frozen_and_keeps_dtype():
    rng = np.random.default_rng(1)
    a, b = _params(rng, [(4,), (3,)], dtype=np.float32)
    b.requires_grad = False
    a.grad, b.grad = np.ones(4, np.float32), np.ones(3, np.float32)
    b0, a0 = b.data.copy(), a.data.copy()
    opt = SGD([a, b], lr=np.float64(0.5), momentum=0.9, weight_decay=1e-4)  # a float64 lr must not upcast
    opt.step()
    opt.step()
    np.testing.assert_array_equal(b.data, b0)
    assert a.data.dtype == np.float32
    # by hand: d = 1 + 1e-4 p; buf1 = d1; p1 = p0 - 0.5 d1; buf2 = 0.9 d1 + d2; p2 = p1 - 0.5 buf2
    d1 = 1 + 1e-4 * a0
    p1 = a0 - 0.5 * d1
    p2 = p1 - 0.5 * (0.9 * d1 + (1 + 1e-4 * p1))
    np.testing.assert_allclose(a.data, p2, rtol=1e-6)   # float32 arithmetic
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_sgd_rejects_bad_settings():
    p = _params(np.random.default_rng(0), [(2,)])
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=">= 0"):
        SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="twice"):
        SGD([{"params": p}, {"params": p}], lr=0.1)
    with pytest.raises(ValueError, match="unknown keys"):
        SGD([{"params": p, "betas": 1}], lr=0.1)


def test_sgd_state_dict_resume_through_npz(tmp_path):
    """Three steps, save, restore into fresh copies, two more == five uninterrupted steps."""
    rng = np.random.default_rng(2)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(5)]
    init = _params(rng, SHAPES)

    def run(params, opt, steps):
        for gs in steps:
            for p, g in zip(params, gs, strict=True):
                p.grad = g
            opt.step()

    def make(params):
        opt = SGD([{"params": params[:1], "weight_decay": 0.0}, {"params": params[1:]}], lr=0.1, momentum=0.9,
                  weight_decay=1e-3, nesterov=True)
        return opt, WarmupMultiStepLR(opt, milestones=[3], warmup_iters=2, warmup_factor=0.5)

    straight = [Parameter(p.data.copy()) for p in init]
    opt, sched = make(straight)
    for gs in grads:
        run(straight, opt, [gs])
        sched.step()

    first = [Parameter(p.data.copy()) for p in init]
    opt, sched = make(first)
    for gs in grads[:3]:
        run(first, opt, [gs])
        sched.step()
    save_state_dict({**{f"optimizer.{k}": v for k, v in opt.state_dict().items()},
                     **{f"scheduler.{k}": v for k, v in sched.state_dict().items()}}, tmp_path / "ckpt.npz")

    loaded = load_state_file(tmp_path / "ckpt.npz")
    resumed = [Parameter(p.data.copy()) for p in first]
    opt2, sched2 = make(resumed)
    opt2.load_state_dict({k[10:]: v for k, v in loaded.items() if k.startswith("optimizer.")})
    sched2.load_state_dict({k[10:]: v for k, v in loaded.items() if k.startswith("scheduler.")})
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr() != [0.1, 0.1]
    for gs in grads[3:]:
        run(resumed, opt2, [gs])
        sched2.step()
    for a, b in zip(resumed, straight, strict=True):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12)


def test_sgd_load_state_dict_rejects_mismatch():
    rng = np.random.default_rng(3)
    ps = _params(rng, SHAPES)
    opt = SGD(ps, lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    state = opt.state_dict()
    other = SGD(_params(rng, [(3, 4), (6,), (2, 2, 3)]), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"\(5,\).*\(6,\)"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="group 0 has 2 params"):
        SGD(ps[:2], lr=0.1).load_state_dict(state)


# --- param groups -------------------------------------------------------------------------------


class _Tiny(Module):
    def __init__(self, rng):
        super().__init__()
        self.fc = layers.Linear(4, 6, rng=rng)
        self.gn = layers.GroupNorm(2, 6)
        self.bn = layers.FrozenBatchNorm2d(6)   # buffers only: nothing to train
        self.head = layers.Linear(6, 2, rng=rng)


def test_param_groups_split_norm_parameters():
    m = _Tiny(np.random.default_rng(0))
    m.head.bias.requires_grad = False
    groups = param_groups(m, weight_decay=1e-4, norm_weight_decay=0.0)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    ids = [[id(p) for p in g["params"]] for g in groups]
    assert ids[0] == [id(m.fc.weight), id(m.fc.bias), id(m.head.weight)]
    assert ids[1] == [id(m.gn.weight), id(m.gn.bias)]
    opt = SGD(groups, lr=0.1, momentum=0.9)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    # no norm layers -> a single group
    assert len(param_groups(layers.Linear(2, 2, rng=np.random.default_rng(0)), 1e-4)) == 1


# --- LR schedule ----------------------------------------------------------------------------------


def test_lr_at_hand_computed():
    # base 0.02, warmup 3 iterations from factor 0.1, milestones 5 and 8, gamma 0.1
    # it 1: a = 1/3 -> 0.1 * 2/3 + 1/3 = 0.4;  it 2: a = 2/3 -> 0.1/3 + 2/3 = 0.7
    want = [0.002, 0.008, 0.014, 0.02, 0.02, 0.002, 0.002, 0.002, 0.0002, 0.0002]
    got = [lr_at(i, 0.02, [5, 8], gamma=0.1, warmup_iters=3, warmup_factor=0.1) for i in range(10)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got = [lr_at(i, 1.0, [2], gamma=0.5, warmup_iters=4, warmup_factor=0.25, warmup_method="constant")
           for i in range(6)]
    np.testing.assert_allclose(got, [0.25, 0.25, 0.125, 0.125, 0.5, 0.5], rtol=1e-12)
    with pytest.raises(ValueError, match="warmup_method"):
        lr_at(0, 1.0, [], warmup_method="cosine")


def test_scheduler_drives_optimizer_groups():
    ps = _params(np.random.default_rng(0), SHAPES)
    opt = SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.01}], lr=0.02, momentum=0.9)
    sched = WarmupMultiStepLR(opt, milestones=[5, 8], warmup_iters=3, warmup_factor=0.1)
    seen = []
    for _ in range(10):
        seen.append(sched.get_last_lr())
        sched.step()
    want = [0.002, 0.008, 0.014, 0.02, 0.02, 0.002, 0.002, 0.002, 0.0002, 0.0002]  # by hand, as above
    np.testing.assert_allclose([s[0] for s in seen], want, rtol=1e-12)
    np.testing.assert_allclose([s[1] for s in seen], [s[0] / 2 for s in seen], rtol=1e-12)
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(opt, milestones=[8, 5])


# --- clipping -------------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(torch, max_norm):
    rng = np.random.default_rng(4)
    ps = _params(rng, SHAPES, dtype=np.float32)
    ts = [torch.tensor(p.data.copy(), requires_grad=True) for p in ps]
    for p, t in zip(ps, ts, strict=True):
        g = rng.standard_normal(p.shape).astype(np.float32)
        p.grad, t.grad = g, torch.tensor(g.copy())
    ps[1].grad = ts[1].grad = None                           # skipped by both
    total = clip_grad_norm_(ps, max_norm)
    ttotal = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    np.testing.assert_allclose(float(total), float(ttotal), rtol=1e-6)  # float32 sums
    for p, t in zip(ps, ts, strict=True):
        if p.grad is not None:
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf * 0 = nan, as torch
def test_clip_grad_norm_shared_array_and_nonfinite():
    g = np.full(4, 3.0)
    a, b = Parameter(np.zeros(4)), Parameter(np.zeros(4))
    a.grad = b.grad = g                           # the tape can hand one array to two parameters
    total = clip_grad_norm_([a, b], max_norm=1.0)
    np.testing.assert_allclose(float(total), np.sqrt(8 * 9.0))
    np.testing.assert_allclose(a.grad, 3.0 / (np.sqrt(72) + 1e-6))  # scaled once, not twice
    np.testing.assert_allclose(b.grad, a.grad)
    assert np.all(g == 3.0)
    a.grad = np.array([1.0, np.inf, 0, 0])
    assert not np.isfinite(float(clip_grad_norm_([a], 1.0)))


# --- end to end -------------------------------------------------------------------------------------


def test_logistic_and_linear_regression_train():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 5)).astype(np.float32)
    w_true = rng.standard_normal((1, 5)).astype(np.float32)
    y_cls = (x @ w_true.T > 0).astype(np.float32)                # (128, 1) separable labels
    y_reg = (x @ w_true.T + 0.5).astype(np.float32)              # (128, 1) regression target

    def train(target, loss_fn, steps=60):
        model = layers.Linear(5, 1, rng=np.random.default_rng(1))
        opt = SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
        sched = WarmupMultiStepLR(opt, milestones=[40], warmup_iters=5)
        history = []
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(Tensor(x)), target)
            loss.backward()
            clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            history.append(float(loss.data))
        return history

    h = train(y_cls, losses.binary_cross_entropy_with_logits)
    assert h[-1] < 0.25 * h[0], h[::10]
    h = train(y_reg, lambda p, t: losses.smooth_l1_loss(p, t, beta=1 / 9))
    assert h[-1] < 0.1 * h[0], h[::10]
