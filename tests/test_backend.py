"""The array backend: module lookup, host conversion, scatter_add semantics, generators."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minimask import backend


def test_numpy_arrays_use_numpy():
    assert backend.get_array_module(np.ones(2), None, 3.0) is np
    assert backend.get_array_module() is np


def test_to_host_returns_numpy():
    x = backend.to_host([1, 2])
    assert isinstance(x, np.ndarray) and x.tolist() == [1, 2]


@given(st.integers(1, 30), st.integers(1, 60), st.integers(0, 2**16))
def test_scatter_add_sums_repeated_indices(size, n, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, size, n)
    vals = rng.standard_normal(n).astype(np.float32)
    got = backend.scatter_add(np.zeros(size, np.float32), idx, vals)
    want = np.zeros(size, np.float64)
    for i, v in zip(idx, vals, strict=True):
        want[i] += v
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 sums of <= 60 terms
    assert got.dtype == np.float32


def test_scatter_add_multi_dimensional_index():
    target = np.zeros((3, 4))
    backend.scatter_add(target, (np.array([0, 0, 2]), np.array([1, 1, 3])), np.array([1.0, 2.0, 5.0]))
    want = np.zeros((3, 4))
    want[0, 1], want[2, 3] = 3.0, 5.0
    np.testing.assert_array_equal(target, want)


def test_generators_are_reproducible():
    a = backend.make_rng(3).standard_normal(4)
    b = backend.make_rng(3).standard_normal(4)
    np.testing.assert_array_equal(a, b)


def test_asfloat_defaults_to_float32():
    assert backend.asfloat(np.arange(3)).dtype == np.float32
    assert backend.asfloat(np.arange(3.0)).dtype == np.float64


def test_backend_is_the_only_module_importing_cupy():
    import pathlib

    pkg = pathlib.Path(backend.__file__).parent
    offenders = [
        p.name for p in pkg.rglob("*.py")
        if p.name != "backend.py" and ("import cupy" in p.read_text() or "from cupy" in p.read_text())
    ]
    assert offenders == []


def test_package_never_imports_torch():
    import pathlib
    import re

    pkg = pathlib.Path(backend.__file__).parent
    pat = re.compile(r"^\s*(import torch|from torch|import torchvision|from torchvision)", re.M)
    assert [p.name for p in pkg.rglob("*.py") if pat.search(p.read_text())] == []
