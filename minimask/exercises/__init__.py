"""Checked exercises for the chapters, in the spirit of CS231n's assignments.

Each chapter ends with 2-4 exercises: the student writes a small function (a backward, a target,
a kernel index formula, a metric) in the notebook, and one call says whether it is right:

    from minimask import exercises
    def smooth_l1_backward(dout, cache):
        raise NotImplementedError      # the stub the chapter ships
    exercises.check("02.1", smooth_l1_backward)
    # Exercise 02.1 [not attempted] still raises NotImplementedError: ...

Backwards are gradient-checked in float64 (`minimask.gradcheck`); forwards are compared with the
package's own function. A wrong answer that matches a known mistake (a sign error, a missing
half-pixel offset, an off-by-one bin, a transposed index, ...) is named. Reference solutions live in
`nbs/solutions/chNN.py`, outside the chapters.
Files: basics (chapters 00-02), backbone_rpn (03-05), roi (06-08), heads (09-11), training (12-13),
engines (14, the appendix), ablations (15, the paper's Table 2), parallel (16, data parallelism).
"""

from . import ablations, backbone_rpn, basics, engines, heads, parallel, roi, training  # noqa: F401  (each registers its own)
from ._core import CORRECT, NOT_ATTEMPTED, REGISTRY, WRONG, Exercise, Result


def check(exercise_id, fn):
    """Run exercise `exercise_id`'s checker on the student's function `fn` -> Result (shown as one line)."""
    if exercise_id not in REGISTRY:
        raise KeyError(f"no exercise {exercise_id!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[exercise_id].checker(fn)


def for_chapter(chapter):
    """The exercises of one chapter (an int), in order."""
    return [e for k, e in sorted(REGISTRY.items()) if e.chapter == int(chapter)]


__all__ = ["CORRECT", "NOT_ATTEMPTED", "WRONG", "Exercise", "Result", "REGISTRY", "check", "for_chapter"]
