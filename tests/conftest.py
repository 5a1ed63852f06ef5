"""Shared pytest setup: hypothesis profiles and the oracle (torch) switch.

Profiles: "ci" (default) keeps example counts small so the default run stays well under 15 minutes
on 2 cores; `HYPOTHESIS_PROFILE=thorough` draws many more examples for a local deep check.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minimask.shapes import ShapesConfig, generate_shapes

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _torch_or_none():
    try:
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        return torch
    except Exception:
        return None


@pytest.fixture(scope="session")
def torch():
    """The torch module for parity tests; skips with a stated reason when the oracle extra is absent."""
    t = _torch_or_none()
    if t is None:
        pytest.skip("torch not installed: install the 'oracle' extra (pip install -e '.[oracle]') for parity tests")
    return t


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_configure(config):
    """Keep this run's executed chapters (tests/test_notebooks.py saves them to MINIMASK_SAVE_EXECUTED)
    so that tests/test_site.py builds the site from them: each chapter is executed once per run."""
    if not os.environ.get("MINIMASK_SAVE_EXECUTED"):
        import tempfile

        os.environ["MINIMASK_SAVE_EXECUTED"] = tempfile.mkdtemp(prefix="minimask-executed-")
        config._minimask_executed_tmp = os.environ["MINIMASK_SAVE_EXECUTED"]


def pytest_unconfigure(config):
    tmp = getattr(config, "_minimask_executed_tmp", None)
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        os.environ.pop("MINIMASK_SAVE_EXECUTED", None)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory, request):
    """A tiny 64x64 shapes folder sized by the test module's TINY dict (num_train_images, num_val_images)."""
    tiny = request.module.TINY
    root = tmp_path_factory.mktemp("shapes-data")
    for split, n in (("train", tiny["num_train_images"]), ("val", tiny["num_val_images"])):
        generate_shapes(root, split, num_images=n, seed=0, config=ShapesConfig(image_size=64))
    return root
