"""The machinery every checker shares: a registry, the three verdicts, and two kinds of check.

A checker runs the student's function on a few fixed probes (float64, fixed seeds) and compares
it with the truth:
  forward:  the package's own function (or, where the package has none, the checker's reference);
  backward: `minimask.gradcheck.gradcheck` against central differences of the forward.
When the answer is wrong, the checker runs its list of *known mistakes* (a sign error, a missing
half-pixel offset, an off-by-one bin, a transposed index, ...) on the same probes; if one of them
reproduces the student's output exactly, the verdict names it. A function that still raises
NotImplementedError is "not attempted": the chapter runs on, nothing fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..gradcheck import gradcheck

CORRECT, WRONG, NOT_ATTEMPTED = "correct", "wrong", "not attempted"
_TODO = "still raises NotImplementedError: write the {}, then run this cell again."


@dataclass(frozen=True)
class Result:
    """A checker's verdict. `status` is CORRECT, WRONG or NOT_ATTEMPTED; `mistake` names a known
    mistake when the wrong answer matched one (else None). Printed (or shown as a cell's value) as
    one line a student can act on."""

    exercise: str
    status: str
    message: str
    mistake: str | None = None

    @property
    def ok(self):
        return self.status == CORRECT

    def __repr__(self):
        mark = {CORRECT: "[correct]", WRONG: "[WRONG]", NOT_ATTEMPTED: "[not attempted]"}[self.status]
        return f"Exercise {self.exercise} {mark} {self.message}"

    __str__ = __repr__


@dataclass(frozen=True)
class Exercise:
    """One exercise: its id ("07.2"), the name of the function the student writes, a one-line
    task, and the checker (a function of the student's function returning a Result)."""

    id: str
    name: str
    task: str
    checker: object = field(repr=False)

    @property
    def chapter(self):
        return int(self.id.split(".")[0])


REGISTRY: dict[str, Exercise] = {}


def exercise(ex_id, name, task):
    """Decorator: register `checker(fn) -> Result` as exercise `ex_id`."""
    def register(checker):
        if ex_id in REGISTRY:
            raise ValueError(f"exercise {ex_id} registered twice")
        REGISTRY[ex_id] = Exercise(ex_id, name, task, checker)
        return checker
    return register


class _NotAttempted(Exception):
    pass


class _Raised(Exception):
    pass


def _call(fn, *args, **kwargs):
    """Run the student's function on copies of the arrays (a student may modify them in place)."""
    args = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        raise _NotAttempted from e
    except Exception as e:  # the student's code crashed: report it, do not crash the chapter
        raise _Raised(f"{type(e).__name__}: {e}") from e


def _same(a, b, rtol=1e-6, atol=1e-9):
    """Structural closeness: arrays (same shape), numbers, None, strings (equal), and tuples/lists of them."""
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        if not isinstance(a, (tuple, list)) or not isinstance(b, (tuple, list)) or len(a) != len(b):
            return False
        return all(_same(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        return int(a) == int(b)               # exact: a 64-bit word does not fit a float64
    try:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


def _shape(a):
    if isinstance(a, (tuple, list)):
        return "(" + ", ".join(_shape(x) for x in a) + ")"
    return str(np.shape(a)) if a is not None else "None"


def _difference(got, want):
    """A short description of how `got` differs from `want`."""
    if isinstance(want, str) or isinstance(got, str):
        return f"expected {want!r}, got {got!r}"
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"expected {len(want)} outputs {_shape(want)}, got {_shape(got)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if not _same(g, w):
                return f"output {i}: " + _difference(g, w)
        return "outputs differ"
    if want is None or got is None:
        return f"expected {'None' if want is None else 'a value'}, got {'None' if got is None else 'a value'}"
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"expected a number or an array, got {type(got).__name__}"
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return f"expected shape {w.shape}, got {g.shape}"
    if w.ndim == 0:
        return f"expected {float(w):.6g}, got {float(g):.6g}"
    err = np.abs(g - w)
    err = np.where(np.isnan(err), np.inf, err)
    k = np.unravel_index(int(np.argmax(err)), w.shape)
    n_bad = int((~np.isclose(g, w, rtol=1e-6, atol=1e-9, equal_nan=True)).sum())
    return (f"{n_bad} of {w.size} values differ; worst at index {tuple(int(i) for i in k)}: "
            f"expected {w[k]:.6g}, got {g[k]:.6g}")


def _named(got_per_probe, mistakes, probes):
    """The first known mistake that reproduces every probe's wrong answer, or None."""
    for name, wrong in mistakes:
        try:
            if all(_same(g, wrong(*p)) for g, p in zip(got_per_probe, probes, strict=True)):
                return name
        except Exception:  # a mistake that does not apply to this probe (e.g. a shape error)
            continue
    return None


def check_forward(ex_id, fn, reference, probes, mistakes=(), rtol=1e-6, atol=1e-9, hint=""):
    """Compare fn(*probe) with reference(*probe) on every probe.

    probes:   list of argument tuples
    mistakes: list of (description, wrong_fn) with fn's signature: the known wrong answers
    """
    got = []
    try:
        for p in probes:
            got.append(_call(fn, *p))
    except _NotAttempted:
        return Result(ex_id, NOT_ATTEMPTED, _TODO.format("function"))
    except _Raised as e:
        return Result(ex_id, WRONG, f"your function raised {e}")
    wants = [reference(*p) for p in probes]
    bad = [i for i, (g, w) in enumerate(zip(got, wants, strict=True)) if not _same(g, w, rtol, atol)]
    if not bad:
        return Result(ex_id, CORRECT, f"matches the reference on all {len(probes)} test inputs.")
    name = _named(got, mistakes, probes)
    i = bad[0]
    detail = _difference(got[i], wants[i])
    if name:
        return Result(ex_id, WRONG, f"this looks like {name} ({detail} on test input {i}).", mistake=name)
    return Result(ex_id, WRONG, f"{detail} on test input {i} of {len(probes)}.{(' Hint: ' + hint) if hint else ''}")


def check_backward(ex_id, fn, forward, probes, mistakes=(), hint=""):
    """Gradient-check the student's backward `fn(dout, cache)` against `forward` (float64).

    probes:   list of (inputs list, settings dict); every float input is checked
    mistakes: list of (description, wrong_backward(dout, cache)), run on the same dout and a fresh
              cache of the same forward
    """
    rng = np.random.default_rng(0)
    got, calls = [], []
    try:
        for inputs, settings in probes:
            out, cache = forward(*inputs, **settings)
            G = rng.standard_normal(np.shape(out))
            got.append(_call(fn, G, cache))
            calls.append((G, inputs, settings))
    except _NotAttempted:
        return Result(ex_id, NOT_ATTEMPTED, _TODO.format("backward"))
    except _Raised as e:
        return Result(ex_id, WRONG, f"your backward raised {e}")
    worst = 0.0
    for k, (inputs, settings) in enumerate(probes):
        try:
            worst = max(worst, gradcheck(forward, fn, inputs, settings=settings))
        except Exception as e:  # AssertionError from gradcheck, or a crash on a perturbed input
            fresh = [(n, lambda G, inputs, settings, m=m: m(G, forward(*inputs, **settings)[1]))
                     for n, m in mistakes]
            name = _named(got, fresh, calls)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if name:
                return Result(ex_id, WRONG, f"this looks like {name} (gradient check on test input {k}: {msg}).",
                              mistake=name)
            extra = f" Hint: {hint}" if hint else ""
            return Result(ex_id, WRONG, f"gradient check failed on test input {k}: {msg}.{extra}")
    return Result(ex_id, CORRECT, f"gradient check passed on {len(probes)} test inputs "
                                  f"(max |analytic - numeric| = {worst:.1e}).")
