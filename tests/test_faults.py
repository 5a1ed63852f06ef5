"""kill -9 during checkpoint writes, then --resume: the resumed run ends with the uninterrupted run's weights.

The small version of benchmarks/faults.py (which injects 20+ kills and prints the table): two kills
at seeded random points of checkpoint writes, in one chain of resumes, on a tiny model.
"""

import numpy as np
import pytest
from coco_files import fingerprint
from fault_injection import final_weights, kill_points, run, same_weights, unreadable_checkpoints

from minimask.shapes import ShapesConfig, generate_shapes

FLAGS = ["--num-train-images", "4", "--num-val-images", "1", "--image-size", "64", "--min-size", "64",
         "--max-size", "64", "--width", "8", "--base-width", "8", "--batch-size", "2", "--iterations", "4",
         "--milestones", "3", "--warmup-iters", "1", "--checkpoint-every", "1", "--log-every", "1",
         "--eval-limit", "1", "--num-workers", "1"]


def test_kills_during_checkpoint_writes_then_resume_reproduce_the_run(tmp_path):
    data = tmp_path / "data"
    for split, n in (("train", 4), ("val", 1)):
        generate_shapes(data, split, num_images=n, seed=0, config=ShapesConfig(image_size=64))
    flags = FLAGS + ["--data-dir", str(data)]
    base = run(flags + ["--output-dir", str(tmp_path / "base")], cwd=tmp_path)
    assert base.returncode == 0, base.stderr
    size = (tmp_path / "base" / "checkpoint_0000001.npz").stat().st_size

    out = tmp_path / "killed"
    out.mkdir()
    (out / "my_notes.txt").write_text("the user's own file, beside the run")
    user_files = {"data": fingerprint(data), "notes": (out / "my_notes.txt").read_text()}
    kills = kill_points(np.random.default_rng(14), 2, writes=4, size=size)
    for i, kill in enumerate(kills):
        p = run(flags + ["--output-dir", str(out)] + (["--resume"] if i else []), kill=kill, cwd=tmp_path)
        assert p.returncode == -9, (kill, p.stdout[-2000:], p.stderr[-2000:])
        assert unreadable_checkpoints(out) == []
    p = run(flags + ["--output-dir", str(out), "--resume"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not list(out.glob(".tmp-*")), "half-written temporary files were left behind"
    assert same_weights(final_weights(out), final_weights(tmp_path / "base"))
    assert fingerprint(data) == user_files["data"] and (out / "my_notes.txt").read_text() == user_files["notes"]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
