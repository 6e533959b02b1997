"""One writer at a time: result tables and experiment folders are locked while a process works on them, and what
interrupted sharded runs leave behind is folded back, never counted twice."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from smoothcore import ConfigError, ExperimentError
from smoothcore.experiment import Experiment
from smoothcore.locking import Lock
from smoothcore.results import ResultWriter, load_results
from smoothcore.runner import CertifyConfig, execute, plan

COMPARED = ["index", "label", "prediction", "correct", "radius", "counts"]


def test_a_lock_is_exclusive_names_its_holder_and_is_free_again_once_released(tmp_path):
    first = Lock(tmp_path / ".lock", "the thing")
    with pytest.raises(
        ExperimentError, match=rf"the thing is in use by another smoothcore process \(pid {os.getpid()}\)"
    ):
        Lock(tmp_path / ".lock", "the thing")
    first.release()
    with Lock(tmp_path / ".lock", "the thing"):
        pass


def test_a_table_being_written_by_another_process_is_neither_appended_to_nor_replaced(run_copy, fashion_dir):
    run = plan(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    execute(run)
    before = run.table.read_bytes()
    with Lock(run.lock_path, "held elsewhere"):  # what another certify of this table holds while it runs
        for options in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(ExperimentError, match="in use by another smoothcore process"):
                execute(plan(run_copy, CertifyConfig(limit=3, data_dir=str(fashion_dir))), **options)
        assert run.table.read_bytes() == before
    assert len(execute(plan(run_copy, CertifyConfig(limit=3, data_dir=str(fashion_dir))), resume=True)) == 3


def test_resume_and_overwrite_together_are_refused(run_copy, fashion_dir, tmp_path):
    with pytest.raises(ConfigError, match="--resume or --overwrite, not both"):
        execute(
            plan(run_copy, CertifyConfig(limit=1, data_dir=str(fashion_dir))), resume=True, overwrite=True
        )
    with pytest.raises(ConfigError, match="not both"):
        Experiment(tmp_path / "x").prepare({"a": 1}, resume=True, overwrite=True)


def test_an_experiment_is_trained_by_one_process_at_a_time(tmp_path):
    exp = Experiment(tmp_path / "run")
    exp.prepare({"epochs": 2})
    with pytest.raises(ExperimentError, match="the experiment .*run is in use by another smoothcore process"):
        Experiment(tmp_path / "run").prepare({"epochs": 2}, resume=True)
    exp.unlock()
    assert Experiment(tmp_path / "run").prepare({"epochs": 2}, resume=True) is False  # no training state yet


def test_overwriting_an_experiment_removes_its_denoisers_and_shards(tmp_path):
    exp = Experiment(tmp_path / "den")
    exp.prepare({"kind": "denoiser", "sigma": 0.5})
    exp.unlock()
    stale = [tmp_path / "den" / n for n in ("denoiser.pt", "denoiser_best.pt", ".certify_a.rank1of2.csv")]
    for p in stale:
        p.write_bytes(b"old")
    fresh = Experiment(tmp_path / "den")
    fresh.prepare({"kind": "denoiser", "sigma": 1.0}, overwrite=True)
    fresh.unlock()
    assert not any(p.exists() for p in stale)


def _rows(table: pd.DataFrame, indices: list[int]) -> list[dict]:
    rows = table[table["index"].isin(indices)].to_dict("records")
    return [
        {k: (None if isinstance(v, float) and v != v and k != "radius" else v) for k, v in r.items()}
        for r in rows
    ]


def test_resume_folds_in_the_shards_of_an_interrupted_sharded_run_each_image_once(run_copy, fashion_dir):
    """A sharded run killed mid-way leaves rank shards (here of 2 ranks, one row in both, as after a rerun with
    another world size); resuming in one process keeps their rows, certifies the rest, lists every image once
    and removes the shards: the table equals an uninterrupted run's."""
    cfg = dict(noise="ssn", sigma=0.25, n0=8, n=40, skip=1000, limit=6, data_dir=str(fashion_dir))
    whole = execute(plan(run_copy, CertifyConfig(**cfg, tag="whole")))
    idx = whole["index"].tolist()
    part = plan(run_copy, CertifyConfig(**cfg, tag="part"))
    shutil.copy(run_copy / "certify_whole.json", part.meta_path)
    for name, mine in ((".certify_part.rank0of2.csv", idx[0:3:2]), (".certify_part.rank1of3.csv", idx[0:2])):
        with ResultWriter(run_copy / name, resume=False) as w:
            for row in _rows(whole, mine):
                w.write(row)
    resumed = execute(part, resume=True)
    pd.testing.assert_frame_equal(resumed[COMPARED], whole[COMPARED])
    assert not part.shards()


def test_a_fresh_run_or_overwrite_discards_stale_shards(run_copy, fashion_dir):
    run = plan(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir), tag="t"))
    (run_copy / ".certify_t.rank0of2.csv").write_text("stale\n")
    assert len(execute(run)) == 2 and not run.shards()


def test_resuming_rows_whose_parameters_are_lost_is_refused(run_copy, fashion_dir):
    run = plan(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    execute(run)
    run.meta_path.unlink()
    with pytest.raises(ExperimentError, match="its parameters .* are missing") as err:
        execute(plan(run_copy, CertifyConfig(limit=2, noise_seed=3, data_dir=str(fashion_dir))), resume=True)
    assert "--overwrite" in err.value.hint


def test_a_resumed_run_records_the_time_of_all_its_parts(run_copy, fashion_dir):
    run = plan(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    execute(run)
    meta = json.loads(run.meta_path.read_text())
    meta["seconds"] = 1000.0
    run.meta_path.write_text(json.dumps(meta))
    execute(plan(run_copy, CertifyConfig(limit=3, data_dir=str(fashion_dir))), resume=True)
    assert json.loads(run.meta_path.read_text())["seconds"] >= 1000.0
    assert len(load_results(run.table)) == 3
