"""Training machinery: SGD with momentum, weight-decay groups, the warmup + step LR schedule, clipping.

    SGD                 torch.optim.SGD semantics (momentum, weight decay, nesterov, param groups)
    param_groups        weight decay for conv/linear weights, a separate one for norm parameters
    WarmupMultiStepLR   linear warmup, then lr *= gamma at each milestone (Detectron2, torchvision
                        detection references); `lr_at` is the same schedule as a pure function
    clip_grad_norm_     global L2 norm over all gradients, scaled down to max_norm (torch)

Iterations, not epochs: the scheduler's `last_epoch` counts optimizer steps, as in Detectron2.
State dicts are flat dicts of arrays and numbers (no pickle), so `save_state_dict` writes them
to .npz beside the model weights; momentum buffers are keyed by parameter position.
Backend: every update is an array expression on the parameter's own module (NumPy or CuPy).
Chapter: nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import bisect

from .backend import get_array_module, to_device, to_host

_GROUP_KEYS = ("lr", "momentum", "weight_decay", "nesterov")


# --- SGD --------------------------------------------------------------------------------------


class SGD:
    """Stochastic gradient descent with momentum, exactly as torch.optim.SGD (dampening 0):

        d = grad + weight_decay * p
        buf = d                          on the first step (torch's initialisation)
        buf = momentum * buf + d         afterwards
        p  -= lr * (d + momentum * buf)  if nesterov else lr * buf

    `params` is a list of Parameters or a list of group dicts (`{"params": [...], "weight_decay": 0}`)
    whose missing keys take the defaults given here. A parameter is skipped when its `grad` is None
    or `requires_grad` is False. Settings after `lr` are keyword-only: torch's positional order
    puts `dampening` where a caller might expect `weight_decay`.
    Chapter: nbs/02_layers_and_losses.ipynb
    """

    def __init__(self, params, lr, *, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}
        params = list(params)
        if not params:
            raise ValueError("SGD got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        seen = set()
        for i, group in enumerate(params):
            unknown = set(group) - set(_GROUP_KEYS) - {"params", "initial_lr"}
            if unknown:
                raise ValueError(f"param group {i}: unknown keys {sorted(unknown)}")
            g = {**self.defaults, **group, "params": list(group["params"])}
            # Python numbers: a NumPy float64 scalar lr would silently upcast float32 updates
            g.update({k: float(g[k]) for k in ("lr", "momentum", "weight_decay")})
            g["nesterov"] = bool(g["nesterov"])
            _check_group(g, i)
            for p in g["params"]:
                if id(p) in seen:
                    raise ValueError(f"param group {i}: a parameter of shape {tuple(p.shape)} appears twice")
                seen.add(id(p))
            self.param_groups.append(g)
        self.state = {}  # id(param) -> momentum buffer (an array on the parameter's device)

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        """Forget every gradient (`grad = None`, torch's default `set_to_none=True`)."""
        for p in self._params():
            p.grad = None

    def step(self):
        """One update of every parameter that has a gradient."""
        for g in self.param_groups:
            lr, momentum, wd, nesterov = g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]
            for p in g["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                d = p.grad
                if wd != 0:
                    d = d + wd * p.data
                if momentum != 0:
                    buf = self.state.get(id(p))
                    if buf is None:
                        buf = self.state[id(p)] = d.astype(p.data.dtype, copy=True)
                    else:
                        buf *= momentum                  # buffers are ours: update in place
                        buf += d
                    d = d + momentum * buf if nesterov else buf
                p.data -= lr * d                         # in place: the array stays the same object

    def state_dict(self):
        """Flat dict: `state.{i}.momentum_buffer` (host arrays) and `param_groups.{g}.{key}` numbers.

        `i` is the parameter's position counting through the groups in order (as torch numbers them).
        """
        out = {}
        for i, p in enumerate(self._params()):
            if id(p) in self.state:
                out[f"state.{i}.momentum_buffer"] = to_host(self.state[id(p)]).copy()
        for gi, g in enumerate(self.param_groups):
            for k in _GROUP_KEYS + ("initial_lr",):
                if k in g:
                    out[f"param_groups.{gi}.{k}"] = g[k]
            out[f"param_groups.{gi}.num_params"] = len(g["params"])
        return out

    def load_state_dict(self, state):
        """Restore buffers and group settings written by `state_dict` (values may be 0-d arrays)."""
        params = self._params()
        for gi, g in enumerate(self.param_groups):
            n = state.get(f"param_groups.{gi}.num_params")
            if n is None or int(n) != len(g["params"]):
                raise ValueError(f"optimizer state: group {gi} has {len(g['params'])} params, state has {n}")
        if f"param_groups.{len(self.param_groups)}.num_params" in state:
            raise ValueError(f"optimizer state has more than {len(self.param_groups)} param groups")
        buffers = {}
        for key, value in state.items():
            if not key.startswith("state."):
                continue
            i = int(key.split(".")[1])
            if i >= len(params) or tuple(params[i].shape) != tuple(value.shape):
                shape = tuple(params[i].shape) if i < len(params) else "no such parameter"
                raise ValueError(f"optimizer state: {key} has shape {tuple(value.shape)}, "
                                 f"parameter {i}: {shape}")
            p = params[i]
            xp = get_array_module(p.data)
            buffers[id(p)] = to_device(to_host(value).astype(p.data.dtype), xp).copy()
        for gi, g in enumerate(self.param_groups):
            for k in _GROUP_KEYS + ("initial_lr",):
                key = f"param_groups.{gi}.{k}"
                if key in state:
                    g[k] = bool(state[key]) if k == "nesterov" else float(state[key])
        self.state = buffers


def _check_group(g, i):
    if g["lr"] < 0 or g["momentum"] < 0 or g["weight_decay"] < 0:
        raise ValueError(f"param group {i}: lr, momentum, weight_decay must be >= 0, got "
                         f"{g['lr']}, {g['momentum']}, {g['weight_decay']}")
    if g["nesterov"] and g["momentum"] <= 0:
        raise ValueError(f"param group {i}: nesterov needs momentum > 0")


def _is_norm(module):
    # by class name, so this file does not import layers.py: GroupNorm, FrozenBatchNorm2d, BatchNorm2d
    return type(module).__name__.endswith(("Norm", "Norm2d"))


def param_groups(model, weight_decay, norm_weight_decay=0.0):
    """Split a Module's trainable parameters into [{"params": others, "weight_decay": weight_decay},
    {"params": norm, "weight_decay": norm_weight_decay}] for `SGD`; empty groups are left out.

    "norm" = parameters of normalisation modules (GroupNorm's per-channel weight and bias): decaying
    them pulls the learned scale towards 0, which fights the normalisation (torchvision's
    `norm_weight_decay`). Order follows `model.named_parameters()`.
    Chapter: nbs/02_layers_and_losses.ipynb
    """
    norm, other = [], []
    for _, m in model.named_modules():
        for p in m._parameters.values():
            if p.requires_grad:
                (norm if _is_norm(m) else other).append(p)
    groups = [{"params": other, "weight_decay": weight_decay},
              {"params": norm, "weight_decay": norm_weight_decay}]
    return [g for g in groups if g["params"]]


# --- learning-rate schedule -------------------------------------------------------------------


def lr_at(iteration, base_lr, milestones, gamma=0.1, warmup_iters=1000, warmup_factor=1e-3,
          warmup_method="linear"):
    """The learning rate at `iteration` (0-based):  base_lr * warmup(it) * gamma ** #(milestones <= it).

    warmup(it) = 1 for it >= warmup_iters; before that "linear": warmup_factor * (1 - a) + a with
    a = it / warmup_iters (from warmup_factor up to 1), or "constant": warmup_factor.
    Chapter: nbs/02_layers_and_losses.ipynb
    """
    factor = 1.0
    if iteration < warmup_iters:
        if warmup_method == "linear":
            alpha = iteration / warmup_iters
            factor = warmup_factor * (1 - alpha) + alpha
        elif warmup_method == "constant":
            factor = warmup_factor
        else:
            raise ValueError(f"warmup_method must be 'linear' or 'constant', got {warmup_method!r}")
    return base_lr * factor * gamma ** bisect.bisect_right(list(milestones), iteration)


class WarmupMultiStepLR:
    """Sets each group's lr to `lr_at(last_epoch, initial_lr, ...)`; `step()` advances one iteration.

    As in torch, constructing it applies iteration 0 (so the first optimizer step uses the warmup lr)
    and stores each group's starting lr as `initial_lr`. Call `optimizer.step()` then `scheduler.step()`.
    Chapter: nbs/02_layers_and_losses.ipynb
    """

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_iters=1000, warmup_factor=1e-3,
                 warmup_method="linear"):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"warmup_method must be 'linear' or 'constant', got {warmup_method!r}")
        self.optimizer = optimizer
        self.milestones, self.gamma = milestones, gamma
        self.warmup_iters, self.warmup_factor, self.warmup_method = warmup_iters, warmup_factor, warmup_method
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def _apply(self):
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = lr_at(self.last_epoch, base, self.milestones, self.gamma, self.warmup_iters,
                            self.warmup_factor, self.warmup_method)

    def step(self):
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        """Flat dict of numbers: the iteration, the schedule's settings and `base_lrs.{g}`."""
        out = {"last_epoch": self.last_epoch, "gamma": self.gamma, "warmup_iters": self.warmup_iters,
               "warmup_factor": self.warmup_factor, "warmup_method": self.warmup_method,
               "milestones": list(self.milestones)}
        out.update({f"base_lrs.{i}": b for i, b in enumerate(self.base_lrs)})
        return out

    def load_state_dict(self, state):
        """Restore the iteration and settings (as torch, the checkpoint's settings win)."""
        if f"base_lrs.{len(self.base_lrs) - 1}" not in state or f"base_lrs.{len(self.base_lrs)}" in state:
            raise ValueError(f"scheduler state does not match {len(self.base_lrs)} param groups")
        self.last_epoch = int(state["last_epoch"])
        self.gamma, self.warmup_factor = float(state["gamma"]), float(state["warmup_factor"])
        self.warmup_iters = int(state["warmup_iters"])
        self.warmup_method = str(state["warmup_method"])
        self.milestones = [int(m) for m in to_host(state["milestones"]).reshape(-1)]
        self.base_lrs = [float(state[f"base_lrs.{i}"]) for i in range(len(self.base_lrs))]
        self._apply()


# --- gradient clipping ------------------------------------------------------------------------


def clip_grad_norm_(parameters, max_norm):
    """Scale all gradients by min(1, max_norm / (total + 1e-6)), total = L2 norm of all of them.

    Returns the total norm before clipping as a 0-d array (no host sync); a non-finite total is
    returned as it is and the caller decides (skip the step, stop). Parameters without a
    gradient are skipped. Accepts a list of Parameters or a single one, as torch.
    Chapter: nbs/02_layers_and_losses.ipynb
    """
    if hasattr(parameters, "grad"):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    xp = get_array_module(grads[0])
    total = xp.sqrt(sum((g * g).sum() for g in grads))                # 0-d
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0).astype(grads[0].dtype)
    for p in parameters:
        if p.grad is not None:
            # a new array, not `*=`: the tape may hand the same array to two parameters
            # (the backward of `add` returns dout for both inputs), which must not be scaled twice
            p.grad = p.grad * coef
    return xp.asarray(total)

