"""Certifying an experiment's test set (the library behind `smoothcore certify`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import smoothcore
from smoothcore import ExperimentError
from smoothcore.data import fetch, get_dataset
from smoothcore.runner import CertifyConfig, certify_experiment, execute, plan


def test_certify_writes_one_row_per_image_with_exact_counts(run_copy, fashion_dir):
    table = certify_experiment(
        run_copy, CertifyConfig(skip=50, limit=12, data_dir=str(fashion_dir), max_batch=512)
    )
    assert table["index"].tolist() == list(range(0, 600, 50))
    assert set(table.columns) >= {
        "index",
        "label",
        "prediction",
        "correct",
        "radius",
        "counts",
        "seconds",
        "certificate",
    }
    counts = np.array([list(map(int, c.split())) for c in table["counts"]])
    assert (counts.sum(axis=1) == 220).all()
    # the recorded radii are the exact certificate of the recorded counts
    noise = smoothcore.noise("dssn", sigma=0.25, dim=784)
    pred, radius = smoothcore.certify_counts(noise, torch.from_numpy(counts))
    assert np.array_equal(pred.numpy(), table["prediction"].to_numpy()) and np.allclose(
        radius.numpy(), table["radius"]
    )
    labels = (
        get_dataset("fashion-mnist")
        .load("test", fashion_dir)
        .labels[torch.from_numpy(table["index"].to_numpy().copy())]
    )
    assert np.array_equal(labels.numpy(), table["label"].to_numpy())
    meta = json.loads((run_copy / "certify_dssn_sigma0.25.json").read_text())
    assert meta["noise"]["levels"] == 220 and meta["num_images"] == 12 and meta["finished"]


def test_certify_matches_the_smoothed_classifier_api(run_copy, fashion_dir):
    table = certify_experiment(run_copy, CertifyConfig(limit=4, data_dir=str(fashion_dir)))
    model = smoothcore.load_classifier(run_copy / "checkpoint.pt")
    x, _ = fetch(get_dataset("fashion-mnist").load("test", fashion_dir), [0, 1, 2, 3])
    result = smoothcore.SmoothedClassifier(model, smoothcore.noise("dssn", sigma=0.25, dim=784), 10).certify(
        x
    )
    assert result.prediction.tolist() == table["prediction"].tolist()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("noise,extra", [("dssn", {}), ("ssn", {"n0": 8, "n": 64, "sigma": 0.25})])
def test_an_interrupted_certification_resumes_to_the_identical_table(run_copy, fashion_dir, noise, extra):
    cfg = dict(noise=noise, skip=100, limit=9, data_dir=str(fashion_dir), max_batch=256, **extra)
    full = certify_experiment(run_copy, CertifyConfig(**cfg, tag="full"))

    def stop_after_some(done, total):
        if done >= 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        certify_experiment(
            run_copy, CertifyConfig(**cfg, tag="part"), on_progress=stop_after_some, images_per_call=2
        )
    partial = pd.read_csv(run_copy / "certify_part.csv")
    assert 0 < len(partial) < 9
    resumed = certify_experiment(run_copy, CertifyConfig(**cfg, tag="part"), resume=True)
    cols = ["index", "label", "prediction", "correct", "radius", "p_lower", "counts"]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])


def test_existing_results_are_refused_unless_resumed_or_overwritten(run_copy, fashion_dir):
    certify_experiment(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    with pytest.raises(ExperimentError, match="already holds results"):
        certify_experiment(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    with pytest.raises(ExperimentError, match="changed parameters.*skip: was 1, now 3") as err:
        certify_experiment(run_copy, CertifyConfig(limit=2, skip=3, data_dir=str(fashion_dir)), resume=True)
    assert "--tag" in err.value.hint
    with pytest.raises(ExperimentError, match="changed parameters.*limit: was 2, now 1"):
        certify_experiment(run_copy, CertifyConfig(limit=1, data_dir=str(fashion_dir)), resume=True)
    assert (
        len(certify_experiment(run_copy, CertifyConfig(limit=3, data_dir=str(fashion_dir)), overwrite=True))
        == 3
    )


def test_resuming_with_a_larger_limit_extends_the_table_to_what_one_run_would_give(run_copy, fashion_dir):
    """Certify 2 images, then 5, then all of them: the table is the one a single run gives (Monte-Carlo, whose
    draws are keyed by image index), and the table's parameters say what it now holds."""
    cfg = dict(noise="ssn", sigma=0.25, n0=8, n=40, skip=1000, data_dir=str(fashion_dir))
    certify_experiment(run_copy, CertifyConfig(**cfg, limit=2, tag="grown"))
    assert len(certify_experiment(run_copy, CertifyConfig(**cfg, limit=5, tag="grown"), resume=True)) == 5
    grown = certify_experiment(run_copy, CertifyConfig(**cfg, tag="grown"), resume=True)
    single = certify_experiment(run_copy, CertifyConfig(**cfg, tag="single"))
    cols = ["index", "label", "prediction", "correct", "radius", "p_lower", "counts"]
    assert len(grown) == 10
    pd.testing.assert_frame_equal(grown[cols], single[cols])
    meta = json.loads((run_copy / "certify_grown.json").read_text())
    assert meta["limit"] is None and meta["num_images"] == 10


def test_certify_can_use_another_noise_than_training(run_copy, fashion_dir):
    run = plan(
        run_copy, CertifyConfig(noise="uniform", sigma=0.1, limit=2, n0=8, n=50, data_dir=str(fashion_dir))
    )
    assert run.tag == "uniform_sigma0.1_n50" and run.record.certificate == "standard"


def test_early_decisions_keep_the_forward_batches_full_and_the_verdicts_of_full_enumeration(
    run_copy, fashion_dir
):
    """With --radii, exact enumeration goes num_draws / 16 draws per image at a time: the runner must hand the engine
    enough images to fill max_batch (220 draws -> 14 per step -> 36 images), not max_batch // num_draws = 2."""
    common = dict(skip=25, limit=40, data_dir=str(fashion_dir), max_batch=512)
    full = certify_experiment(run_copy, CertifyConfig(**common, tag="full"))
    run = plan(run_copy, CertifyConfig(**common, radii=[0.02, 0.05], tag="early"))
    sizes: list[int] = []
    classify = run.smoothed.engine.classify
    run.smoothed.engine.classify = lambda batch: (sizes.append(batch.shape[0]), classify(batch))[1]
    early = execute(run)
    assert max(sizes) > 256 and max(sizes) <= 512
    assert early["prediction"].tolist() == full["prediction"].tolist()
    for r in (0.02, 0.05):
        assert ((early["radius"] >= r) & (early["correct"] == 1)).tolist() == (
            (full["radius"] >= r) & (full["correct"] == 1)
        ).tolist()
    assert early["forward_passes"].sum() < full["forward_passes"].sum()


def test_the_certificate_chosen_is_recorded_per_row_and_report_shows_them_side_by_side(run_copy, fashion_dir):
    from smoothcore.report import certified_accuracy_table, load_runs

    common = dict(
        noise="ssn", sigma=0.25, n0=8, n=200, alpha=0.01, skip=200, limit=6, data_dir=str(fashion_dir)
    )
    tables = {
        name: certify_experiment(run_copy, CertifyConfig(**common, certificate=name))
        for name in ("standard", "two-sided", "box")
    }
    for name, table in tables.items():
        assert set(table["certificate"]) == {name}
        if name != "standard":
            extra = [json.loads(e) for e in table["extra"]]
            assert all("p_b_upper" in e for e in extra)
    same = tables["standard"]["prediction"] >= 0
    assert (tables["two-sided"]["radius"][same] >= tables["standard"]["radius"][same] - 1e-12).all()
    assert (tables["box"]["radius"].fillna(-1) >= tables["two-sided"]["radius"].fillna(-1) - 1e-12).all()
    runs = load_runs([run_copy])
    assert sorted(r.name.split("/")[-1] for r in runs) == [
        "ssn_sigma0.25_box_n200_alpha0.01",
        "ssn_sigma0.25_n200_alpha0.01",
        "ssn_sigma0.25_two-sided_n200_alpha0.01",
    ]
    assert len(certified_accuracy_table(runs, [0.0, 0.1])) == 4  # three runs and the envelope


def test_certify_reads_the_data_where_training_read_it(run_copy, fashion_dir):
    """The experiment was trained with data_dir=fashion_dir; certify and audit without --data-dir use it."""
    run = plan(run_copy, CertifyConfig(limit=2))
    assert run.cfg.data_dir == str(fashion_dir)
    given = f"{fashion_dir}/."  # the same files through another path: what is given wins
    assert plan(run_copy, CertifyConfig(limit=2, data_dir=given)).cfg.data_dir == given


def test_a_plugin_noise_parameter_goes_from_training_to_certification_and_the_table(tmp_path, fashion_dir):
    from smoothcore import hookimpl
    from smoothcore.plugins import restore, snapshot, use_plugins
    from smoothcore.train import TrainConfig, train_classifier
    from smoothcore_plugins.uniform import UniformNoise

    class TailedUniform(UniformNoise):
        name = "tailed"

        def __init__(self, *, sigma=None, lambd=None, dim, seed=0, device="cpu", tail: float = 1.0):
            super().__init__(sigma=sigma, lambd=lambd, dim=dim, seed=seed, device=device)
            self.tail = tail

        def params(self):
            return {**super().params(), "name": self.name, "tail": self.tail}

    class Plugin:
        @staticmethod
        @hookimpl
        def register_noises(register):
            register("tailed", TailedUniform)

    saved = snapshot()
    use_plugins(Plugin)
    try:
        cfg = TrainConfig(
            dataset="fashion-mnist",
            data_dir=str(fashion_dir),
            noise="tailed",
            sigma=0.5,
            noise_params={"tail": 3.0},
            epochs=1,
            train_limit=128,
            eval_limit=32,
        )
        out = tmp_path / "tailed"
        train_classifier(cfg, out)
        run = plan(out, CertifyConfig(limit=2, n0=8, n=32))
        assert run.smoothed.noise.tail == 3.0 and run.tag == "tailed_sigma0.5_tail3_n32"
        execute(run)
        meta = json.loads((out / "certify_tailed_sigma0.5_tail3_n32.json").read_text())
        assert meta["noise_params"] == {"tail": 3.0} and meta["noise"]["tail"] == 3.0
        other = plan(out, CertifyConfig(limit=2, n0=8, n=32, noise_params={"tail": 5}))
        assert other.smoothed.noise.tail == 5 and other.tag == "tailed_sigma0.5_tail5_n32"
        with pytest.raises(smoothcore.ConfigError, match="noise 'tailed' takes no parameter 'width'"):
            plan(out, CertifyConfig(limit=2, noise_params={"width": 1}))
    finally:
        restore(saved)
    # without the plugin, the unknown name comes with the plugin the run was made with
    with pytest.raises(
        smoothcore.UnknownNameError, match=r"(?s)unknown noise 'tailed'.*made with the plugin\(s\) Plugin"
    ):
        plan(out, CertifyConfig(limit=2))
    with pytest.raises(
        smoothcore.UnknownNameError, match=r"(?s)did you mean 'gaussian'.*made with the plugin"
    ):
        plan(out, CertifyConfig(limit=2, noise="gausian"))  # a typo keeps its suggestion


def test_a_training_data_dir_that_is_gone_is_not_inherited_and_the_callers_config_is_untouched(
    run_copy, fashion_dir, monkeypatch
):
    cfg = CertifyConfig(limit=2)
    plan(run_copy, cfg)
    assert cfg.data_dir is None  # resolved for the run, not written into the caller's configuration
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "data_dir": "data/moved-away"}))
    monkeypatch.setenv("FASHION_MNIST_DIR", str(fashion_dir))
    assert plan(run_copy, CertifyConfig(limit=2)).cfg.data_dir is None  # the usual places, $FASHION_MNIST_DIR


def test_further_parameters_cannot_take_the_frameworks_own_names():
    from smoothcore.train import TrainConfig

    with pytest.raises(smoothcore.ConfigError, match="'sigma' is not a further parameter"):
        TrainConfig(noise_params={"sigma": 1.0}).validate()
    with pytest.raises(smoothcore.ConfigError, match="'num_classes' is not a further parameter"):
        TrainConfig(model_params={"num_classes": 3}).validate()
    with pytest.raises(smoothcore.ConfigError, match="'dim' is not a further parameter"):
        CertifyConfig(noise_params={"dim": 4}).validate()


def test_a_table_that_holds_no_rows_yet_is_not_in_the_way(run_copy, fashion_dir):
    """A run killed before its first image leaves at most a header: starting again needs no --overwrite."""
    from smoothcore.results import COLUMNS, header_line

    (run_copy / "certify_dssn_sigma0.25.csv").write_text(header_line(COLUMNS))
    assert len(certify_experiment(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))) == 2


PLANNED_KEYS = {
    "noise", "noise_params", "certificate", "certificate_kind", "norm", "n0", "n", "alpha", "dataset", "skip",
    "limit", "offset", "num_images", "precision", "radii", "forward_passes_full_per_image", "classifier_sha256",
    "denoiser", "denoiser_sha256", "test_fingerprint",
}  # fmt: skip


def test_the_record_beside_a_table_keeps_the_keys_it_always_had(run_copy, fashion_dir):
    certify_experiment(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    written = json.loads((run_copy / "certify_dssn_sigma0.25.json").read_text())
    assert set(written) == PLANNED_KEYS | {"started", "finished", "seconds", "discarded_rows", "versions"}


def test_a_record_written_by_an_earlier_version_loads_and_rewrites_unchanged(tmp_path):
    from smoothcore.run_record import Certification

    earlier = {  # as the paper run wrote it, less the keys the first versions did not write, plus one they did
        "alpha": 0.001, "certificate": "standard", "classifier_sha256": "4e" * 32, "dataset": "fashion-mnist",
        "denoiser": None, "denoiser_sha256": None, "finished": "2026-12-02T15:27:02+00:00", "limit": 20,
        "n": 100000, "n0": 64, "noise": {"lambda": 1.7320508075688772, "name": "ssn", "seed": 0, "sigma": 1.0},
        "norm": "l1", "num_images": 20, "precision": "fp32", "seconds": 44.731, "skip": 500,
        "started": "2026-12-02T15:26:17+00:00", "versions": {"smoothcore": "0.1.0"}, "max_batch": 1024,
    }  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(earlier))
    record = Certification.read(tmp_path / "old.json")
    assert record.noise["name"] == "ssn" and record.radii is None and record.test_fingerprint is None
    record.write(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again == {
        **{k: None for k in PLANNED_KEYS},
        **{k: v for k, v in earlier.items() if k != "max_batch"},
    }


def test_a_damaged_record_is_a_clean_error_naming_the_field(tmp_path):
    from smoothcore import DataError
    from smoothcore.run_record import Certification

    (tmp_path / "bad.json").write_text(json.dumps({"n": "many", "noise": {"name": "ssn"}}))
    with pytest.raises(DataError, match="damaged: n = 'many' is not a int"):
        Certification.read(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a JSON object"):
        Certification.read(tmp_path / "list.json")


def test_reopen_rebuilds_the_certification_a_table_records(run_copy, fashion_dir):
    from smoothcore.runner import reopen

    cfg = CertifyConfig(noise="ssn", sigma=0.25, n0=8, n=40, limit=2, data_dir=str(fashion_dir), tag="t")
    first = plan(run_copy, cfg)
    execute(first)
    again = reopen(run_copy, "t", data_dir=str(fashion_dir))
    assert again.record.noise == first.record.noise and again.certificate.name == "standard"
    assert again.record.classifier_sha256 == first.record.classifier_sha256
    assert len(again.test_set) == len(first.test_set) and again.table == first.table


def test_reopen_refuses_a_table_whose_classifier_changed(run_copy, fashion_dir):
    from smoothcore.runner import reopen

    certify_experiment(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir), tag="t"))
    path = run_copy / "certify_t.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "classifier_sha256": "0" * 64}))
    with pytest.raises(ExperimentError, match="the classifier changed since certify_t.csv was certified"):
        reopen(run_copy, "t")


def test_a_certification_loads_its_test_set_once_and_a_resume_reads_its_table_once(
    run_copy, fashion_dir, monkeypatch
):
    import smoothcore.results
    from smoothcore.data import DatasetSource

    loads, reads = [], []
    load, valid_rows = DatasetSource.load, smoothcore.results._valid_rows
    monkeypatch.setattr(
        DatasetSource, "load", lambda self, *a, **k: (loads.append(a), load(self, *a, **k))[1]
    )
    monkeypatch.setattr(smoothcore.results, "_valid_rows", lambda p: (reads.append(p), valid_rows(p))[1])
    certify_experiment(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    assert len(loads) == 1 and reads == []
    table = certify_experiment(run_copy, CertifyConfig(limit=3, data_dir=str(fashion_dir)), resume=True)
    assert len(loads) == 2 and len(reads) == 1 and len(table) == 3


@pytest.mark.parametrize(
    ("sampling", "tag"),
    [
        (None, "ssn_sigma1"),  # an exact certificate names no sample size
        ((100_000, 0.001), "ssn_sigma1_n100k"),  # the default alpha is left out
        ((10_000, 0.01), "ssn_sigma1_n10k_alpha0.01"),
        ((2_000_000, 0.001), "ssn_sigma1_n2M"),
        ((12_345, 0.05), "ssn_sigma1_n12345_alpha0.05"),
    ],
)
def test_the_default_tag_of_a_monte_carlo_table_names_its_n_and_alpha(sampling, tag):
    """Two certifications that differ only in n (or alpha) get two tables without --tag."""
    from smoothcore.planning import result_tag

    assert result_tag({"name": "ssn", "sigma": 1.0}, "standard", "standard", False, sampling=sampling) == tag
