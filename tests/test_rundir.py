"""Run directories are never reused or mixed, and --resume keeps the run's configuration (issue 14: 2, 3)."""

import json

import pytest
from coco_files import fingerprint

from minimask import train as T
from minimask.train import Interrupted, TrainConfig, train

TINY = dict(num_train_images=4, num_val_images=2, image_size=64, min_size=64, max_size=64, width=16,
            batch_size=2, iterations=2, milestones=(4,), warmup_iters=1, checkpoint_every=1, log_every=1,
            eval_limit=1, num_workers=1)
FLAGS = [a for k, v in TINY.items() for a in (f"--{k.replace('_', '-')}", ",".join(map(str, v))
                                               if isinstance(v, tuple) else str(v))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def done_run(tmp_path, data_dir):
    out = tmp_path / "run"
    train(TrainConfig(data_dir=data_dir, output_dir=str(out), **TINY), progress=False)
    return out


# --- problem 2: a run directory is never reused or mixed ----------------------------------------------

def test_default_run_directory_is_never_reused(tmp_path, monkeypatch, data_dir, capsys):
    monkeypatch.chdir(tmp_path)
    assert T.main(FLAGS + ["--data-dir", data_dir]) == 0
    first = fingerprint(tmp_path / "runs" / "shapes")
    assert T.main(FLAGS + ["--data-dir", data_dir]) == 0
    assert "this run writes to runs/shapes-2" in capsys.readouterr().out
    assert fingerprint(tmp_path / "runs" / "shapes") == first
    assert (tmp_path / "runs" / "shapes-2" / "model_final.npz").is_file()


def test_output_dir_holding_a_run_is_refused(done_run, data_dir):
    before = fingerprint(done_run)
    with pytest.raises(ValueError, match=f"{done_run} already holds a run.*--resume.*--overwrite"):
        train(TrainConfig(data_dir=data_dir, output_dir=str(done_run), **TINY), progress=False)
    assert fingerprint(done_run) == before


def test_overwrite_deletes_only_the_files_the_run_wrote(done_run, data_dir):
    (done_run / "my_notes.txt").write_text("keep me")
    (done_run / "eval" / "my_plot.png").write_bytes(b"mine")
    train(TrainConfig(data_dir=data_dir, output_dir=str(done_run), overwrite=True, **{**TINY, "iterations": 1}),
          progress=False)
    assert (done_run / "my_notes.txt").read_text() == "keep me"
    assert (done_run / "eval" / "my_plot.png").read_bytes() == b"mine"
    assert not (done_run / "checkpoint_0000002.npz").exists()   # the old run's, deleted
    assert [json.loads(line)["iteration"] for line in (done_run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_new_run_never_overwrites_a_file_it_did_not_write(tmp_path, data_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own config"}')
    with pytest.raises(ValueError, match="config.json"):
        train(TrainConfig(data_dir=data_dir, output_dir=str(out), **TINY), progress=False)
    assert (out / "config.json").read_text() == '{"my": "own config"}'


# --- problem 3: --resume keeps the run's configuration ---------------------------------------------

@pytest.fixture
def interrupted(tmp_path, data_dir):
    out = tmp_path / "run"
    flags = FLAGS + ["--data-dir", data_dir, "--output-dir", str(out), "--lr", "0.01"]
    with pytest.raises(Interrupted):
        train(T.config_from_args(flags), progress=False, interrupt_at=1)
    return out, flags


@pytest.mark.parametrize("flag, value, field, old", [
    ("--lr", "0.05", "lr", "0.01"), ("--batch-size", "1", "batch_size", "2"), ("--width", "8", "width", "16")])
def test_resume_refuses_a_changed_setting_naming_both_values(interrupted, flag, value, field, old):
    out, flags = interrupted
    config = (out / "config.json").read_text()
    with pytest.raises(ValueError, match=rf"{field}: the run has {old}, now {value}"):
        T.main(flags + ["--resume", flag, value])
    assert (out / "config.json").read_text() == config


def test_resume_takes_the_run_configuration_and_records_what_changed(interrupted, data_dir):
    out, _ = interrupted
    # the run was started with --lr 0.01; resuming without --lr keeps it, --iterations may grow
    assert T.main(FLAGS + ["--data-dir", data_dir, "--output-dir", str(out), "--resume", "--iterations", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["iterations"]) == (0.01, 3)
    assert (out / "checkpoint_0000003.npz").is_file()


def test_evaluate_and_predict_never_write_over_a_users_file(done_run, tmp_path, data_dir):
    from minimask import evaluate, predict

    ckpt = str(done_run / "model_final.npz")
    assert evaluate.main(["--checkpoint", ckpt]) == 0                 # eval/ of its own run: rewritten
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text("my results")
    (mine / "000001.png").write_bytes(b"my picture")
    with pytest.raises(ValueError, match="results.json exists and is not listed in"):
        evaluate.main(["--checkpoint", ckpt, "--output-dir", str(mine)])
    with pytest.raises(ValueError, match="000001.png exists and is not listed in"):
        predict.main([f"{data_dir}/images/val/000001.png", "--checkpoint", ckpt, "--output-dir", str(mine)])
    assert (mine / "results.json").read_text() == "my results" and (mine / "000001.png").read_bytes() == b"my picture"


def test_overwrite_never_follows_a_manifest_outside_its_folder(tmp_path):
    from minimask.rundir import RunDir, choose_run_dir

    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"files": ["config.json", "../outside.txt", str(outside)]}))
    assert isinstance(choose_run_dir(str(run), "", overwrite=True, log=lambda *a: None), RunDir)
    assert outside.read_text() == "not the run's" and not (run / "config.json").exists()
