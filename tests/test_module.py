"""Modules: registration, dotted torchvision-style names, freezing, state-dict save/load."""

import numpy as np
import pytest

from minimask.module import Module, ModuleList, Parameter, Sequential, load_state_file, save_state_dict


class Leaf(Module):
    def __init__(self, n, rng):
        super().__init__()
        self.weight = Parameter(rng.standard_normal((n, n)).astype(np.float32))
        self.bias = Parameter(np.zeros(n, np.float32))
        self.register_buffer("running_mean", rng.standard_normal(n).astype(np.float32))


class Tree(Module):
    def __init__(self, rng):
        super().__init__()
        self.conv1 = Leaf(2, rng)
        self.layer1 = Sequential([Leaf(3, rng), Leaf(3, rng)])
        self.heads = ModuleList([Leaf(1, rng)])


def make(seed=0):
    return Tree(np.random.default_rng(seed))


def test_state_dict_names_are_dotted_like_torch():
    keys = list(make().state_dict())
    assert keys == [
        "conv1.weight", "conv1.bias", "layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias",
        "heads.0.weight", "heads.0.bias",
        "conv1.running_mean", "layer1.0.running_mean", "layer1.1.running_mean", "heads.0.running_mean",
    ]


def test_parameters_and_buffers_are_tracked_separately():
    m = make()
    assert len(m.parameters()) == 8
    assert [n for n, _ in m.named_buffers()] == [
        "conv1.running_mean", "layer1.0.running_mean", "layer1.1.running_mean", "heads.0.running_mean"
    ]
    assert m.num_parameters() == 2 * 2 + 2 + 2 * (9 + 3) + 1 + 1


def test_reassigning_an_attribute_replaces_registration():
    m = make()
    m.conv1 = None
    assert "conv1.weight" not in m.state_dict()
    assert m.conv1 is None


def test_save_load_is_bit_exact(tmp_path):
    a, b = make(0), make(1)
    path = tmp_path / "ckpt" / "model.npz"
    save_state_dict(a.state_dict(), path)
    b.load_state_dict(load_state_file(path))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and va.dtype == vb.dtype
        assert va.tobytes() == vb.tobytes()
    assert not list(path.parent.glob(".tmp-*")), "temporary file left behind"


def test_loaded_arrays_are_copies_not_aliases():
    a, b = make(0), make(1)
    state = a.state_dict()
    b.load_state_dict(state)
    b.conv1.weight.data[...] = 7
    assert not np.all(a.conv1.weight.data == 7)


def test_load_reports_every_problem_and_loads_nothing():
    a, b = make(0), make(1)
    before = {k: v.copy() for k, v in b.state_dict().items()}
    state = dict(a.state_dict())
    del state["conv1.bias"]
    state["extra.weight"] = np.zeros(1)
    state["layer1.0.weight"] = np.zeros((4, 4))
    with pytest.raises(ValueError) as err:
        b.load_state_dict(state)
    msg = str(err.value)
    assert "conv1.bias" in msg and "extra.weight" in msg and "layer1.0.weight" in msg and "(4, 4)" in msg
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_non_strict_tolerates_missing_and_unexpected_but_not_shapes():
    a, b = make(0), make(1)
    state = dict(a.state_dict())
    del state["conv1.bias"]
    state["extra"] = np.zeros(1)
    missing, unexpected = b.load_state_dict(state, strict=False)
    assert missing == ["conv1.bias"] and unexpected == ["extra"]
    np.testing.assert_array_equal(b.conv1.weight.data, a.conv1.weight.data)
    state["conv1.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict(state, strict=False)


def test_load_state_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_state_file(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_state_file(bad)


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        load_state_file(path)


def test_train_eval_and_freezing_propagate():
    m = make()
    m.eval()
    assert all(not x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())
    m.layer1.requires_grad_(False)
    assert [n for n, p in m.named_parameters() if not p.requires_grad] == [
        "layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias"
    ]
