"""Tests import the one gradient-check helper from here; it lives in the package (minimask.gradcheck)
so chapters can use it too."""

from minimask.gradcheck import adjoint_check, gradcheck, tape_gradcheck  # noqa: F401
