"""The command line, through click's runner: the workflows and every bad input of the end-to-end issue."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from smoothcore.cli import cli


def invoke(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def fails(*args, match: str):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}"
    )
    assert "Traceback" not in result.output
    import re

    assert re.search(match, result.output, re.S), result.output
    return result


def test_plugins_lists_plugins_and_components_as_json():
    data = json.loads(invoke("plugins", "--json").output)
    names = {row["plugin"] for row in data["plugins"]}
    assert "smoothcore_plugins.splitting" in names
    assert data["components"]["noise"]["dssn"]["plugin"] == "smoothcore_plugins.splitting"
    assert "exact" in data["components"]["certificate"]


def test_plugins_table_shows_who_registers_what():
    out = invoke("plugins").output
    assert "smoothcore_plugins.splitting" in out and "dssn, ssn" in out


def test_plugins_table_names_a_noise_it_could_not_probe(monkeypatch):
    import types

    import smoothcore
    from smoothcore import hookimpl
    from smoothcore.plugins import restore, snapshot, use_plugins

    def needs_tail(*, sigma=None, lambd=None, dim, seed=0, device="cpu", tail):
        return smoothcore.noise("uniform", sigma=sigma, dim=dim)

    mod = types.ModuleType("acme_tail")
    mod.register_noises = hookimpl(lambda register: register("needs-tail", needs_tail))
    saved = snapshot()
    use_plugins(mod)
    try:
        monkeypatch.setenv("COLUMNS", "400")
        out = invoke("plugins").output
    finally:
        restore(saved)
    assert "not probed (failed to build at sigma 0.5): needs-tail" in out


def test_train_certify_report_on_real_data(fashion_dir, tmp_path):
    run = tmp_path / "run"
    invoke(
        "train-classifier",
        "--data-dir",
        fashion_dir,
        "--noise",
        "dssn",
        "--sigma",
        0.25,
        "--epochs",
        1,
        "--train-limit",
        1000,
        "--eval-limit",
        100,
        "--out",
        run,
    )
    out = invoke("certify", run, "--data-dir", fashion_dir, "--skip", 500, "--limit", 10).output
    assert "certify_dssn_sigma0.25.csv" in out.replace("\n", "")
    assert "--max-batch auto: forward batches of " in out and "(probed: " in out  # the default
    report = invoke("report", run, "--radii", "0,0.1,0.2", "--format", "csv").stdout.splitlines()
    assert report[0] == "run,norm,images,0,0.1,0.2,ACR"
    assert report[1].startswith("run/dssn_sigma0.25,l1,10,")
    text = invoke("report", run, "--format", "json", "--plot", tmp_path / "curve.png").stdout
    js = json.loads(text)
    assert js[0]["images"] == 10 and (tmp_path / "curve.png").stat().st_size > 1000
    assert '"run": "run/dssn_sigma0.25"' in text  # the run's path as written, not "run\\/dssn..."


def test_report_reads_reference_result_folders(golden):
    out = invoke("report", golden / "cifar_split_derandomized_3.5", "--format", "csv", "--radii", "4").output
    assert "cifar_split_derandomized_3.5,l1,10000,33.6400" in out


# -- bad input: a clear message, non-zero exit, no traceback, nothing lost ------------------------------------------
@pytest.mark.parametrize(
    "args,match",
    [
        (["--sigma", "0"], "sigma must be a finite number > 0"),
        (["--sigma", "-1"], "sigma must be a finite number > 0"),
        (["--sigma", "0.5", "--lambda", "0.8"], "give sigma or lambda, not both"),
        (["--sigma", "1e9"], "absurdly large"),
        (["--sigma", "0.5", "--noise", "gausian"], "unknown noise 'gausian'.*available: dssn, gaussian"),
        (["--sigma", "0.5", "--model", "resnet"], "unknown classifier 'resnet'.*available:"),
        (["--sigma", "0.5", "--dataset", "fmnist"], "unknown dataset 'fmnist'.*fashion-mnist"),
        (
            ["--sigma", "0.5", "--epochs", "0"],
            "epochs must be a positive integer, got 0",
        ),  # 0 is not "default"
        (["--sigma", "0.5", "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
        (["--sigma", "0.5", "--lr", "0"], r"lr must be a number in \(0, 10\], got 0"),
        (
            ["--noise", "none", "--sigma", "0.5", "--stability"],
            "--sigma, --stability given with --noise none",
        ),
    ],
)
def test_train_refuses_bad_options(tmp_path, args, match):
    fails("train-classifier", *args, "--out", tmp_path / "run", match=match)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_missing_dataset_says_where_to_get_it(tmp_path):
    fails(
        "train-classifier",
        "--sigma",
        "0.5",
        "--data-dir",
        tmp_path / "empty",
        "--out",
        tmp_path / "run",
        match="no data found.*apt-get download dataset-fashion-mnist",
    )


def test_corrupt_dataset_file_is_named(tiny_idx_dir, tmp_path):
    (tiny_idx_dir / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    fails(
        "train-classifier",
        "--sigma",
        "0.5",
        "--data-dir",
        tiny_idx_dir,
        "--out",
        tmp_path / "run",
        match="train-images-idx3-ubyte.gz",
    )


def test_an_output_folder_with_results_is_refused(run_copy, fashion_dir):
    invoke("certify", run_copy, "--data-dir", fashion_dir, "--limit", 2)
    before = (run_copy / "certify_dssn_sigma0.25.csv").read_bytes()
    fails(
        "certify", run_copy, "--data-dir", fashion_dir, "--limit", 2, match="already holds results.*--resume"
    )
    assert (run_copy / "certify_dssn_sigma0.25.csv").read_bytes() == before
    fails(
        "train-classifier",
        "--sigma",
        "0.25",
        "--data-dir",
        fashion_dir,
        "--out",
        run_copy,
        match="already holds an experiment",
    )
    assert (run_copy / "checkpoint.pt").exists()


def test_checkpoint_of_another_architecture_names_the_keys(fashion_dir, tmp_path):
    from smoothcore.loading import classifier_checkpoint
    from smoothcore.models import build_classifier

    net = build_classifier("cnn", num_classes=10, in_channels=1, image_size=28, mean=(0.3,), std=(0.3,))
    state = classifier_checkpoint(
        net, name="cnn", params={}, dataset="fashion-mnist", num_classes=10, in_channels=1, image_size=28
    )
    torch.save(state["state_dict"], tmp_path / "bare.pt")
    fails(
        "certify",
        tmp_path / "ext",
        "--checkpoint",
        tmp_path / "bare.pt",
        "--model",
        "wrn40",
        "--dataset",
        "fashion-mnist",
        "--noise",
        "dssn",
        "--sigma",
        "0.25",
        "--data-dir",
        fashion_dir,
        match="does not fit the model: missing keys",
    )


def test_certify_off_the_shelf_checkpoint(fashion_dir, tmp_path, trained_run):
    fails(
        "certify",
        tmp_path / "ext",
        "--checkpoint",
        trained_run / "checkpoint.pt",
        "--data-dir",
        fashion_dir,
        match="which noise",
    )
    assert not (tmp_path / "ext").exists()  # the folder made for --checkpoint is gone again
    out = invoke(
        "certify",
        tmp_path / "ext",
        "--checkpoint",
        trained_run / "checkpoint.pt",
        "--noise",
        "ssn",
        "--sigma",
        "0.25",
        "--n0",
        "8",
        "--n",
        "40",
        "--alpha",
        "0.01",
        "--data-dir",
        fashion_dir,
        "--limit",
        "3",
    ).output
    assert "certify_ssn_sigma0.25_n40_alpha0.01.csv" in out.replace("\n", "")
    from smoothcore.checkpoints import sha256

    manifest = json.loads((tmp_path / "ext" / "manifest.json").read_text())
    assert (
        manifest["checkpoint_sha256"] == sha256(trained_run / "checkpoint.pt")
        and manifest["layout"] == "smoothcore"
    )
    assert "torch" in manifest["versions"]


def test_non_quantised_input_to_dssn_is_refused_through_the_cli(run_copy, fashion_dir):
    """A dataset plugin whose images are off the 1/255 grid (interpolated), certified with DSSN."""
    import smoothcore
    from smoothcore import hookimpl
    from smoothcore.data import DatasetSource, get_dataset

    class SmoothedFashion:
        @staticmethod
        @hookimpl
        def register_datasets(register):
            def factory():
                base = get_dataset("fashion-mnist")

                def loader(split, data_dir):
                    ds = base.load(split, fashion_dir)
                    return torch.utils.data.TensorDataset(
                        (ds.images[:20].float() / 255 * 0.9 + 0.0501), ds.labels[:20]
                    )

                return DatasetSource("blurry", 10, (1, 28, 28), base.mean, base.std, loader)

            register("blurry", factory)

    smoothcore.plugins.use_plugins(SmoothedFashion)
    fails(
        "certify",
        run_copy,
        "--dataset",
        "blurry",
        "--limit",
        2,
        "--tag",
        "blurry",
        match="multiples of 1/255",
    )
    assert not (run_copy / "certify_blurry.csv").exists()  # a refused run leaves no empty result table behind


def test_unknown_certificate_and_unknown_command(run_copy, fashion_dir):
    fails(
        "certify",
        run_copy,
        "--certificate",
        "magic",
        "--data-dir",
        fashion_dir,
        match="unknown certificate 'magic'",
    )
    fails(
        "certify",
        run_copy,
        "--noise",
        "ssn",
        "--sigma",
        "0.25",
        "--certificate",
        "exact",
        "--data-dir",
        fashion_dir,
        match="does not apply to noise 'ssn'",
    )
    fails("certify", run_copy.parent / "not-there", match="not an experiment folder")
    fails("report", run_copy, match="holds no certification results")


def test_unknown_model_parameters_are_a_clean_error_naming_them(tiny_idx_dir, tmp_path):
    fails(
        "train-classifier",
        "--data-dir",
        tiny_idx_dir,
        "--model-param",
        "foo=1",
        "--sigma",
        0.25,
        "--epochs",
        1,
        "--out",
        tmp_path / "run",
        match="takes no parameter 'foo'.*width",
    )
    fails(
        "train-classifier",
        "--data-dir",
        tiny_idx_dir,
        "--model-param",
        "width=wide",
        "--sigma",
        0.25,
        "--epochs",
        1,
        "--out",
        tmp_path / "run",
        match="classifier 'cnn': parameter 'width' takes an integer, got 'wide'",
    )
    fails(
        "train-classifier",
        "--data-dir",
        tiny_idx_dir,
        "--model-param",
        "width=-3",
        "--sigma",
        0.25,
        "--epochs",
        1,
        "--out",
        tmp_path / "run",
        match="could not build classifier 'cnn'.*negative dimension",
    )
    assert not (tmp_path / "run").exists()


def test_a_plugin_dataset_with_labels_outside_its_classes_is_refused_before_training(tmp_path):
    from smoothcore.data import DatasetSource, ImageTensorDataset
    from smoothcore.plugins import use_plugins
    from tests.test_plugins import plugin_module

    def loader(split, data_dir):
        labels = torch.tensor([0, 1, 2, 12] * 4)
        return ImageTensorDataset(torch.zeros(16, 1, 8, 8, dtype=torch.uint8), labels, source=f"acme {split}")

    def acme():
        return DatasetSource(
            name="acme", num_classes=4, image_shape=(1, 8, 8), mean=(0.5,), std=(0.25,), loader=loader
        )

    def register_datasets(register):
        register("acme", acme)

    use_plugins(plugin_module("acme_data", register_datasets=register_datasets))
    fails(
        "train-classifier",
        "--dataset",
        "acme",
        "--sigma",
        0.25,
        "--epochs",
        1,
        "--out",
        tmp_path / "run",
        match=r"acme train: 4 labels outside the 4 classes 0\.\.3 \(for example \[12\]\)",
    )
    assert not (tmp_path / "run").exists()


def test_certify_with_radii_reports_the_forward_passes_it_saved(run_copy, fashion_dir):
    import re

    import pandas as pd

    out = invoke(
        "certify",
        run_copy,
        "--data-dir",
        fashion_dir,
        "--skip",
        50,
        "--limit",
        8,
        "--radii",
        "0.02,0.05",
        "--tag",
        "early",
    ).output.replace("\n", " ")
    m = re.search(r"forward passes: ([\d,]+) of ([\d,]+) \(([\d.]+)% saved by early decisions; ", out)
    assert m, out
    used, full = int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
    table = pd.read_csv(run_copy / "certify_early.csv")
    assert used == table["forward_passes"].sum() and full == 8 * 220 and used < full
    assert float(m.group(3)) == pytest.approx(100 * (1 - used / full), abs=0.05)
    assert "the ACR a lower bound" in out


def test_report_checks_the_plot_path_before_anything_else(golden, tmp_path):
    run = golden / "cifar_split_0.5"
    fails(
        "report", run, "--plot", tmp_path / "missing" / "x.png", match="the folder .*missing does not exist"
    )
    fails("report", run, "--plot", tmp_path / "x.txt", match=r"cannot write a plot as '\.txt'.*\.png")
    out = invoke("report", run, "--plot", tmp_path / "curves").output
    assert f"wrote {tmp_path / 'curves.png'}" in out.replace("\n", "")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_clean_classifier_needs_a_noise_to_be_certified(tiny_idx_dir, tmp_path):
    invoke(
        "train-classifier",
        "--data-dir",
        tiny_idx_dir,
        "--noise",
        "none",
        "--epochs",
        1,
        "--batch-size",
        16,
        "--eval-limit",
        16,
        "--out",
        tmp_path / "clean",
    )
    fails(
        "certify",
        tmp_path / "clean",
        "--data-dir",
        tiny_idx_dir,
        "--limit",
        2,
        match="trained without noise: which noise to certify it with.*--noise",
    )


def test_resuming_a_finished_training_says_there_is_nothing_to_do(tiny_idx_dir, tmp_path):
    args = [
        "train-classifier",
        "--data-dir",
        tiny_idx_dir,
        "--sigma",
        0.25,
        "--epochs",
        1,
        "--batch-size",
        16,
        "--eval-limit",
        16,
        "--out",
        tmp_path / "run",
    ]
    assert "(1 epoch)" in invoke(*args).output
    before = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    out = invoke(*args, "--resume").output
    assert "nothing to train" in out and "is complete (1 epoch)" in out.replace("\n", "")
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == before


def test_noise_parameters_are_checked_against_the_noise(tiny_idx_dir, tmp_path):
    common = ("--data-dir", tiny_idx_dir, "--epochs", 1, "--out", tmp_path / "run")
    fails(
        "train-classifier",
        "--sigma",
        0.25,
        "--noise-param",
        "tail=3",
        *common,
        match="noise 'dssn' takes no parameter 'tail'",
    )
    fails(
        "train-classifier",
        "--noise",
        "none",
        "--noise-param",
        "tail=3",
        *common,
        match="--noise-param given with --noise none",
    )
    fails("certify", tmp_path / "run", "--noise-param", "tail", match="expected KEY=VALUE")
    assert not (tmp_path / "run").exists()


def test_a_file_where_a_folder_should_be_is_a_clean_error(tmp_path, run_copy, tiny_idx_dir):
    (tmp_path / "afile").write_text("not a folder")
    fails(
        "train-classifier",
        "--sigma",
        "0.5",
        "--data-dir",
        tiny_idx_dir,
        "--out",
        tmp_path / "afile" / "sub",
        match=r"afile/sub.*Not a directory",
    )
    fails(
        "certify",
        tmp_path / "afile",
        "--checkpoint",
        run_copy / "checkpoint.pt",
        match=r"afile",
    )
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_comma_lists_are_read_alike_by_every_command():
    import click

    from smoothcore.cli_params import RADII, CommaList

    assert RADII.convert(" 0, 0.5,,1 ", None, None) == [0.0, 0.5, 1.0]
    assert CommaList(str, "noises").convert("dssn,ssn", None, None) == ["dssn", "ssn"]
    for bad, match in (("0,x", "radii must be comma-separated numbers"), ("-1", "non-negative")):
        with pytest.raises(click.BadParameter, match=match):
            RADII.convert(bad, None, None)
    fails("report", "somewhere", "--radii", "1,x", match="radii must be comma-separated numbers")
    fails("sweep", "--dry-run", "--sigmas", "0.5,big", match="sigmas must be comma-separated numbers")


def test_option_defaults_are_those_of_the_configurations_they_fill():
    from smoothcore.audit import AuditConfig
    from smoothcore.report import PAPER_RADII
    from smoothcore.runner import CertifyConfig
    from smoothcore.train import TrainConfig

    def defaults(command: str) -> dict:
        return {p.name: p.default for p in cli.commands[command].params}

    certify, audit, train, report = (defaults(c) for c in ("certify", "audit", "train-classifier", "report"))
    for name in ("n0", "n", "alpha", "skip", "precision", "device"):
        assert certify[name] == getattr(CertifyConfig(), name)
    assert certify["max_batch"] == CertifyConfig().max_batch == "auto"
    for name in ("budget", "n_search", "n_test", "alpha", "seed"):
        assert audit[name] == getattr(AuditConfig(), name)
    assert tuple(audit["searches"].split(",")) == AuditConfig().searches
    for name in ("dataset", "model", "noise", "momentum", "weight_decay", "stability_weight", "eval_limit"):
        assert train[name] == getattr(TrainConfig(), name)
    assert report["radii"] is None  # the rule certify's summary uses (report.default_radii)
    assert [float(r) for r in defaults("sweep")["radii"].split(",")] == list(PAPER_RADII)


def test_certify_resume_needs_nothing_but_the_run_and_tag(run_copy):
    from smoothcore.results import load_results
    from smoothcore.run_record import Certification

    first = ["certify", str(run_copy), "--noise", "ssn", "--sigma", "0.5", "--n0", "8", "--n", "40"]
    first += ["--skip", "7", "--limit", "3", "--tag", "mc", "--alpha", "0.01"]
    assert CliRunner().invoke(cli, first).exit_code == 0
    more = CliRunner().invoke(cli, ["certify", str(run_copy), "--resume", "--tag", "mc", "--limit", "5"])
    assert more.exit_code == 0, more.output
    again = [
        "certify",
        str(run_copy),
        "--resume",
        "--tag",
        "mc",
        "--sigma",
        "0.5",
    ]  # a scale given: no lambda added
    assert CliRunner().invoke(cli, again).exit_code == 0
    table = load_results(run_copy / "certify_mc.csv")
    assert table["index"].tolist() == [0, 7, 14, 21, 28]
    record = Certification.read(run_copy / "certify_mc.json")
    assert (record.noise["name"], record.n0, record.n, record.alpha, record.limit) == ("ssn", 8, 40, 0.01, 5)
    assert (
        CliRunner().invoke(cli, ["certify", str(run_copy), "--limit", "2"]).exit_code == 0
    )  # a second table
    which = CliRunner().invoke(cli, ["certify", str(run_copy), "--resume"])
    assert which.exit_code != 0 and "which one?" in which.output and "Traceback" not in which.output


def test_train_resume_needs_nothing_but_the_folder(tiny_idx_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train-classifier", "--data-dir", tiny_idx_dir, "--noise", "ssn", "--sigma", 0.25, "--epochs", 1]
    args += ["--batch-size", 16, "--lr", 0.03, "--eval-limit", 16, "--model-param", "width=8", "--out", run]
    assert "(1 epoch)" in invoke(*args).output
    out = invoke("train-classifier", "--resume", "--out", run).output
    assert "nothing to train" in out and "changed configuration" not in out
    fails("train-classifier", "--resume", "--out", run, "--lr", 0.1, match="lr: was 0.03, now 0.1")
