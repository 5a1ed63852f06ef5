"""Test helpers that ship with the package: `fake_cuda`, a strict CuPy stand-in backed by NumPy."""
