"""A small tape (reverse-mode autograd) that chains hand-written forward/backward pairs.

The contract every op follows:
    forward(*inputs, **settings)  -> (out, cache)      plain arrays in, plain array out
    backward(dout, cache)         -> grads             one gradient per positional input
`backward` returns a tuple with one entry per positional input of `forward` (None where there is
no gradient, e.g. integer targets); trailing entries may be left out, and a bare array means
"the gradient of the first input". Keyword arguments are settings (stride, beta, ...) and never
get gradients.

A backward may take an optional keyword `needs_input_grad` (a tuple of bools, one per positional
input, as torch's `ctx.needs_input_grad`): the tape then tells it which gradients will be used, so it
can skip work — the first convolution never needs the gradient of the image.

`op(forward, backward)` turns such a pair into a function that accepts `Tensor`s: it unwraps them,
runs `forward`, and (unless inside `no_grad()`) records a `Node` so that `Tensor.backward()` can
later call `backward` in reverse topological order. Gradients *accumulate* (`+=`): a feature map
read by two heads receives the sum of both gradients.

Shapes:  whatever the op says; a Tensor is only a box around one array
Chapter: nbs/00_arrays_and_autograd.ipynb
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref

from .backend import get_array_module, to_host

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Inside this block ops record nothing: no caches are kept, outputs need no gradient."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


class Node:
    """One recorded op: its backward, the cache from its forward, and where its input gradients go.

    `inputs` holds, per positional input, None (no gradient wanted) or an edge
    (leaf Tensor or None, producing Node or None, input shape). Only leaves (parameters, inputs
    that asked for a gradient) are kept as Tensors: an intermediate input is reached through the
    Node that made it, so its array is freed as soon as no cache needs it (as in torch, where the
    graph holds functions, not tensors). `out` is a weak reference to the output Tensor.
    """

    __slots__ = ("name", "backward_fn", "cache", "inputs", "wants_mask", "out")

    def __init__(self, name, backward_fn, cache, inputs, wants_mask=False):
        self.name = name
        self.backward_fn = backward_fn
        self.cache = cache
        self.inputs = [  # never the Tensor of an intermediate: that would keep its array alive
            None if t is None else ((t, None, tuple(t.shape)) if t.node is None else (None, t.node, tuple(t.shape)))
            for t in inputs
        ]
        self.wants_mask = wants_mask  # backward accepts needs_input_grad=
        self.out = None  # weakref to the output Tensor (for retain_grad)


class Tensor:
    """An array plus what autograd needs: `.data`, `.grad`, `.requires_grad` and the op that made it.

    Leaf tensors (parameters, inputs you want gradients for) accumulate into `.grad`;
    intermediate tensors keep theirs only when `retain_grad()` was called.
    """

    __slots__ = ("data", "grad", "requires_grad", "node", "_retain", "__weakref__")

    def __init__(self, data, requires_grad=False, node=None):
        if isinstance(data, Tensor):
            data = data.data
        xp = get_array_module(data)
        self.data = xp.asarray(data)  # numpy scalars become 0-d arrays; arrays pass through uncopied
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.node = node
        self._retain = False
        if node is not None:
            node.out = weakref.ref(self)

    # --- array-like conveniences -------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self.node is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={tuple(self.shape)}, dtype={self.dtype}{flag})"

    def numpy(self):
        return to_host(self.data)

    def item(self):
        return float(self.data.reshape(-1)[0]) if self.size == 1 else self.data.item()

    def detach(self):
        """The same array, cut off from the tape."""
        return Tensor(self.data)

    def retain_grad(self):
        """Keep `.grad` on this intermediate tensor after backward (for inspection in notebooks)."""
        self._retain = True
        return self

    def zero_grad(self):
        self.grad = None

    # arithmetic (a + b, a * b, a - b, -a, a / 2.0, t.sum()) is sugar over the ops of layers.py, which
    # attaches it to Tensor when it defines them (`layers._tensor_operators`): the tape itself knows no op.

    # --- reverse mode -----------------------------------------------------------------------
    def backward(self, grad=None):
        """Backpropagate from this tensor. `grad` defaults to 1 for a scalar (size-1) tensor.

        Visits nodes in reverse topological order, calls each op's backward once with the sum of
        all gradients that reached its output, and frees the caches as it goes.
        """
        xp = get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without a gradient needs a scalar, got shape {self.shape}")
            grad = xp.ones_like(self.data)
        if isinstance(grad, Tensor):
            grad = grad.data
        if tuple(grad.shape) != tuple(self.shape):
            raise ValueError(f"gradient shape {tuple(grad.shape)} does not match tensor shape {self.shape}")
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (made under no_grad?)")

        if self.node is None:  # a leaf: nothing to propagate
            self.grad = grad if self.grad is None else self.grad + grad
            return
        grads = {id(self.node): grad}
        for node in _topological_order(self.node):  # outputs before inputs
            g = grads.pop(id(node), None)
            if g is None:
                continue
            out = node.out() if node.out is not None else None
            if out is not None and out._retain:
                out.grad = g if out.grad is None else out.grad + g
            if node.cache is _FREED:
                raise RuntimeError(f"backward through '{node.name}' a second time: its cache was freed")
            if node.wants_mask:
                mask = tuple(edge is not None for edge in node.inputs)
                in_grads = node.backward_fn(g, node.cache, needs_input_grad=mask)
            else:
                in_grads = node.backward_fn(g, node.cache)
            node.cache = _FREED
            del g
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            for i, edge in enumerate(node.inputs):
                if edge is None:
                    continue
                leaf, parent, shape = edge
                gi = in_grads[i] if i < len(in_grads) else None
                if gi is None:
                    raise RuntimeError(
                        f"op '{node.name}' returned no gradient for input {i}, which requires grad"
                    )
                if tuple(gi.shape) != shape:
                    raise RuntimeError(
                        f"op '{node.name}' returned gradient of shape {tuple(gi.shape)} "
                        f"for input {i} of shape {shape}"
                    )
                if parent is None:  # a leaf: accumulate into .grad, never assign
                    leaf.grad = gi if leaf.grad is None else leaf.grad + gi
                    continue
                key = id(parent)
                grads[key] = grads[key] + gi if key in grads else gi  # accumulate, never assign
            in_grads = None


_FREED = object()


def _topological_order(root):
    """Nodes reachable from node `root` through their inputs, each before every node that feeds it."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:  # iterative DFS: deep nets would overflow Python's recursion limit
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for edge in node.inputs:
            if edge is not None and edge[1] is not None and id(edge[1]) not in seen:
                stack.append((edge[1], False))
    order.reverse()
    return order


def op(forward, backward, name=None):
    """Make a tape-aware function from a forward/backward pair (see the module docstring).

    Positional arguments may be Tensors or plain arrays (or None); keyword arguments are settings.
    The returned function gives a Tensor; `fn.forward` and `fn.backward` stay reachable so that
    tests and notebooks can call the plain pair directly.
    """
    op_name = name or forward.__name__.removesuffix("_forward")
    try:
        wants_mask = "needs_input_grad" in inspect.signature(backward).parameters
    except (TypeError, ValueError):  # builtins without a signature
        wants_mask = False

    @functools.wraps(forward)
    def apply(*args, **kwargs):
        arrays = [a.data if isinstance(a, Tensor) else a for a in args]
        out, cache = forward(*arrays, **kwargs)
        track = _grad_enabled and any(isinstance(a, Tensor) and a.requires_grad for a in args)
        if not track:
            return Tensor(out)
        inputs = [a if isinstance(a, Tensor) and a.requires_grad else None for a in args]
        return Tensor(out, requires_grad=True, node=Node(op_name, backward, cache, inputs, wants_mask))

    apply.forward = forward
    apply.backward = backward
    apply.__name__ = op_name
    return apply


def as_tensor(x, requires_grad=False):
    """Wrap an array in a Tensor (a Tensor passes through unchanged)."""
    return x if isinstance(x, Tensor) else Tensor(x, requires_grad=requires_grad)
