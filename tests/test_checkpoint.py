"""Corrupt checkpoints are named, --resume falls back past them, kill leftovers are cleaned (issue 14: 5)."""

import shutil

import numpy as np
import pytest

from minimask import evaluate, predict
from minimask.train import Interrupted, TrainConfig, train

TINY = dict(num_train_images=4, num_val_images=2, image_size=64, min_size=64, max_size=64, width=16,
            batch_size=2, iterations=3, milestones=(4,), warmup_iters=1, checkpoint_every=1, log_every=1,
            eval_limit=1, num_workers=1)


def truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def bitflip(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF      # inside the arrays: the zip's CRC-32 of that member no longer matches
    p.write_bytes(bytes(data))


def empty(p):
    p.write_bytes(b"")


CORRUPTIONS = {"truncated": truncate, "bit-flipped": bitflip, "empty": empty}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("full")
    train(TrainConfig(data_dir=data_dir, output_dir=str(out), **TINY), progress=False)
    return out


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_evaluate_and_predict_name_a_corrupt_checkpoint(kind, full_run, tmp_path, data_dir):
    bad = tmp_path / "checkpoint_0000003.npz"
    shutil.copy(full_run / "checkpoint_0000003.npz", bad)
    CORRUPTIONS[kind](bad)
    with pytest.raises(ValueError, match=f"{bad}: "):
        evaluate.main(["--checkpoint", str(bad), "--output-dir", str(tmp_path / "ev")])
    image = f"{data_dir}/images/val/000001.png"
    with pytest.raises(ValueError, match=f"{bad}: "):
        predict.main([image, "--checkpoint", str(bad), "--output-dir", str(tmp_path / "pr")])


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_resume_falls_back_to_the_newest_readable_checkpoint(kind, full_run, tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    cfg = TrainConfig(data_dir=data_dir, output_dir=str(out), **TINY)
    with pytest.raises(Interrupted):
        train(cfg, progress=False, interrupt_at=2)
    CORRUPTIONS[kind](out / "checkpoint_0000002.npz")
    (out / ".tmp-k9x_2abc.npz").write_bytes(b"PK\x03\x04 half a checkpoint")   # what a kill leaves
    (out / ".tmp-mine.npz").write_bytes(b"not minimask's name pattern")          # a user's file: kept
    train(cfg.replace(resume=True), progress=False)
    said = capsys.readouterr().out
    assert f"{out / 'checkpoint_0000002.npz'}: " in said and f"falling back to {out / 'checkpoint_0000001.npz'}" in said
    assert not (out / ".tmp-k9x_2abc.npz").exists() and (out / ".tmp-mine.npz").exists()
    with np.load(out / "model_final.npz") as a, np.load(full_run / "model_final.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in b.files if k != "meta")


def test_resume_with_no_readable_checkpoint_names_them_all(tmp_path, data_dir):
    out = tmp_path / "run"
    cfg = TrainConfig(data_dir=data_dir, output_dir=str(out), **TINY)
    with pytest.raises(Interrupted):
        train(cfg, progress=False, interrupt_at=2)
    for name in ("checkpoint_0000001.npz", "checkpoint_0000002.npz"):
        truncate(out / name)
    with pytest.raises(ValueError, match=r"(?s)checkpoint_0000002\.npz.*checkpoint_0000001\.npz"):
        train(cfg.replace(resume=True), progress=False)
