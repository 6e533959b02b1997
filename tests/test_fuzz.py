"""Fuzzing the CLI and the public API with random and malformed arguments and files: every failure is a clean
error (SmoothcoreError in Python; a message and exit status 2 on the command line), never a traceback or a partial
result. ``SMOOTHCORE_FUZZ_EXAMPLES=300`` runs a deeper search than the suite's 40 examples per test.

The examples are fixed (tests/conftest.py's Hypothesis profile) and bounded: an option that sets how much work a
run does (images, draws, batch size) is capped, so no drawn value can turn a one-image run into a full test set."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import smoothcore
from smoothcore import SmoothcoreError
from smoothcore.cli import cli

FUZZ = settings(max_examples=int(__import__("os").environ.get("SMOOTHCORE_FUZZ_EXAMPLES", 40)))

numbers = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e9]),
)
junk = st.one_of(
    numbers.map(str), st.text(max_size=12), st.sampled_from(["", "nan", "-inf", "../../etc", "1,2,x", "auto"])
)

CERTIFY_OPTIONS = [
    "--noise",
    "--sigma",
    "--lambda",
    "--noise-seed",
    "--certificate",
    "--n0",
    "--n",
    "--alpha",
    "--skip",
    "--limit",
    "--max-batch",
    "--precision",
    "--device",
    "--dataset",
    "--radii",
    "--tag",
    "--checkpoint",
    "--denoiser",
    "--model",
]
TRAIN_OPTIONS = [
    "--dataset",
    "--model",
    "--model-param",
    "--noise",
    "--sigma",
    "--lambda",
    "--epochs",
    "--batch-size",
    "--lr",
    "--weight-decay",
    "--momentum",
    "--stability-weight",
    "--seed",
    "--train-limit",
    "--eval-limit",
    "--precision",
    "--device",
    "--denoiser",
    "--finetune",
    "--save-every",
]


# the most work a fuzzed certify option may ask for: images, Monte-Carlo draws, noisy images per forward pass
WORK_BOUNDS = {"--limit": 2, "--n": 64, "--n0": 16, "--max-batch": 2048}


def bounded(option: str, value: str) -> str:
    """``value`` for ``option`` as drawn, except that a number above the option's work bound (as click would read
    it: Python's ``int``, which also takes ``1_000`` and other scripts' digits) becomes the bound."""
    if option not in WORK_BOUNDS:
        return value
    try:
        number = int(value)
    except ValueError:
        return value  # junk: click refuses it
    return str(min(number, WORK_BOUNDS[option]))


def test_fuzzed_work_options_are_bounded():
    assert bounded("--limit", "173673041614") == "2"
    assert bounded("--limit", "1_000") == "2" and bounded("--n", "\u0661\u0660\u0660\u0660") == "64"
    assert (
        bounded("--limit", "-3") == "-3" and bounded("--limit", "x") == "x" and bounded("--sigma", "9") == "9"
    )


def garbage_file(tmp_path, data: bytes, suffix: str):
    path = tmp_path / f"junk{abs(hash(data)) % 10**6}{suffix}"
    path.write_bytes(data)
    return str(path)


def assert_clean(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), (result.exit_code, result.output)


@FUZZ
@given(
    picks=st.lists(st.tuples(st.sampled_from(CERTIFY_OPTIONS), junk), max_size=4),
    blob=st.binary(max_size=300),
)
def test_certify_with_random_options_fails_cleanly(run_copy, fashion_dir, tmp_path, picks, blob):
    args = [
        "certify",
        str(run_copy),
        "--data-dir",
        str(fashion_dir),
        "--limit",
        "1",
        "--n",
        "16",
        "--n0",
        "4",
        "--overwrite",
    ]
    for opt, value in picks:
        if opt in ("--checkpoint", "--denoiser"):
            value = garbage_file(tmp_path, blob, ".pt")
        args += [opt, bounded(opt, value)]
    before = {p.name: p.stat().st_size for p in run_copy.glob("certify_*.csv")}
    result = CliRunner().invoke(cli, args)
    assert_clean(result)
    if result.exit_code != 0:
        after = {p.name: p.stat().st_size for p in run_copy.glob("certify_*.csv")}
        assert set(after) <= set(before)  # a refused run leaves no new table behind


@FUZZ
@given(
    picks=st.lists(st.tuples(st.sampled_from(TRAIN_OPTIONS), junk), min_size=1, max_size=3),
    blob=st.binary(max_size=200),
)
def test_train_with_random_options_fails_cleanly(tiny_idx_dir, tmp_path, picks, blob):
    args = [
        "train-classifier",
        "--data-dir",
        str(tiny_idx_dir),
        "--sigma",
        "0.3",
        "--epochs",
        "1",
        "--eval-limit",
        "8",
        "--out",
        str(tmp_path / "run"),
        "--overwrite",
    ]
    for opt, value in picks:
        if opt in ("--denoiser", "--finetune"):
            value = garbage_file(tmp_path, blob, ".pt")
        if opt == "--epochs":
            value = str(value)[:1]
        args += [opt, value]
    assert_clean(CliRunner().invoke(cli, args))


@FUZZ
@given(
    blob=st.binary(max_size=2000),
    suffix=st.sampled_from([".pt", ".pth.tar", ".safetensors", ".csv", ".npy", ""]),
)
def test_garbage_files_are_clean_errors_everywhere(tmp_path, blob, suffix):
    path = garbage_file(tmp_path, blob, suffix)
    for load in (smoothcore.load_classifier, smoothcore.load_denoiser):
        with pytest.raises(SmoothcoreError):
            load(path)
    assert_clean(CliRunner().invoke(cli, ["report", path]))
    folder = tmp_path / "results"
    folder.mkdir(exist_ok=True)
    (folder / "radius_l1.npy").write_bytes(blob)
    assert_clean(CliRunner().invoke(cli, ["report", str(folder)]))


@FUZZ
@given(
    name=st.sampled_from(["uniform", "ssn", "dssn", "gaussian", "laplace", "nope"]),
    sigma=st.one_of(st.none(), numbers),
    lambd=st.one_of(st.none(), numbers),
    dim=st.one_of(numbers, st.none()),
    seed=st.one_of(st.integers(-5, 2**40), st.none()),
)
def test_noise_construction_with_random_parameters(name, sigma, lambd, dim, seed):
    try:
        noise = smoothcore.noise(
            name, sigma=sigma, lambd=lambd, dim=dim, seed=seed if seed is not None else 0
        )
    except SmoothcoreError:
        return
    assert noise.dim == dim and (math.isfinite(getattr(noise, "sigma", 1.0)))


@FUZZ
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
    fill=numbers,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8]),
    name=st.sampled_from(["dssn", "ssn"]),
)
def test_certify_with_random_tensors(shape, fill, dtype, name):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    smoothed = smoothcore.SmoothedClassifier(
        model, smoothcore.noise(name, sigma=0.2, dim=16), 3, max_batch=64
    )
    try:
        value = float(fill)
        x = (
            torch.full(shape, value if math.isfinite(value) else value, dtype=torch.float64).to(dtype)
            if dtype.is_floating_point
            else torch.full(
                shape, int(value) if math.isfinite(value) and abs(value) < 255 else 0, dtype=dtype
            )
        )
    except (RuntimeError, OverflowError, ValueError):
        return
    try:
        result = smoothed.certify(x, n0=4, n=8)
    except SmoothcoreError:
        return
    assert len(result.prediction) == x.shape[0]


@FUZZ
@given(counts=st.lists(st.lists(st.integers(-3, 40), min_size=1, max_size=4), min_size=1, max_size=3))
def test_certify_counts_with_random_counts(counts):
    noise = smoothcore.noise("dssn", lambd=13 / 510 + 1e-9, dim=4)
    try:
        tensor = torch.tensor(counts)
    except (ValueError, TypeError):
        return
    try:
        prediction, radius = smoothcore.certify_counts(noise, tensor)
    except SmoothcoreError:
        return
    assert (tensor.sum(1) == 13).all() and (radius >= 0).all()


EXPERIMENT_FILES = [
    "config.json",
    "manifest.json",
    "certify_dssn_sigma0.25.json",
    "certify_dssn_sigma0.25.csv",
    "checkpoint.pt",
]


def damage(path, how: str, blob: bytes, data) -> None:
    """Damage ``path`` the way a crash, a full disk, a careless edit or an attacker would."""
    import json

    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "replace":
        path.write_bytes(blob)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "edit-json" and path.suffix == ".json":
        obj = json.loads(raw)
        if isinstance(obj, dict) and obj:
            key = data.draw(st.sampled_from(sorted(obj)))
            obj[key] = data.draw(
                st.one_of(st.none(), numbers, st.text(max_size=8), st.lists(st.integers(), max_size=2))
            )
        path.write_text(json.dumps(obj, default=str))
    else:
        path.write_bytes(raw + blob)  # appended junk


@pytest.fixture
def certified_run(run_copy, fashion_dir):
    from smoothcore.runner import CertifyConfig, certify_experiment

    certify_experiment(run_copy, CertifyConfig(limit=2, data_dir=str(fashion_dir)))
    return run_copy


@settings(max_examples=int(__import__("os").environ.get("SMOOTHCORE_FUZZ_EXAMPLES", 25)))
@given(
    target=st.sampled_from(EXPERIMENT_FILES),
    how=st.sampled_from(["truncate", "replace", "empty", "edit-json", "append"]),
    blob=st.binary(max_size=200),
    data=st.data(),
)
def test_damaged_experiment_files_are_clean_errors(
    certified_run, fashion_dir, tmp_path_factory, target, how, blob, data
):
    import shutil

    folder = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(certified_run, folder)
    damage(folder / target, how, blob, data)
    for args in (
        ["report", folder],
        ["certify", folder, "--data-dir", fashion_dir, "--limit", 3, "--resume"],
        ["audit", folder, "--data-dir", fashion_dir, "--limit", 1, "--budget", 2, "--no-tightness"],
    ):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        if args[0] == "audit" and result.exit_code == 1 and "violation" in result.output.lower():
            continue  # an edited radius that the audit then breaks is the audit doing its job
        assert_clean(result)


DENOISER_OPTIONS = [
    "--arch",
    "--arch-param",
    "--noise",
    "--sigma",
    "--lambda",
    "--objective",
    "--classifier",
    "--epochs",
    "--batch-size",
    "--lr",
    "--optimizer",
    "--lr-step",
    "--lr-gamma",
    "--sgd-after",
    "--sgd-lr",
    "--weight-decay",
    "--train-limit",
    "--eval-limit",
    "--device",
]
SWEEP_OPTIONS = [
    "--recipe",
    "--dataset",
    "--model",
    "--noises",
    "--sigmas",
    "--stability",
    "--epochs",
    "--train-option",
    "--certify-option",
    "--radii",
]
AUDIT_OPTIONS = [
    "--tag",
    "--limit",
    "--searches",
    "--budget",
    "--n-search",
    "--n-test",
    "--alpha",
    "--seed",
    "--max-batch",
    "--device",
]


@FUZZ
@given(
    picks=st.lists(st.tuples(st.sampled_from(DENOISER_OPTIONS), junk), min_size=1, max_size=3),
    blob=st.binary(max_size=200),
)
def test_train_denoiser_with_random_options_fails_cleanly(tiny_idx_dir, tmp_path, picks, blob):
    args = [
        "train-denoiser",
        "--data-dir",
        str(tiny_idx_dir),
        "--sigma",
        "0.3",
        "--epochs",
        "1",
        "--eval-limit",
        "8",
        "--train-limit",
        "16",
        "--arch-param",
        "depth=3",
        "--arch-param",
        "channels=4",
        "--out",
        str(tmp_path / "den"),
        "--overwrite",
    ]
    for opt, value in picks:
        if opt == "--classifier":
            value = garbage_file(tmp_path, blob, ".pt")
        if opt in ("--epochs", "--train-limit", "--batch-size"):
            value = str(value)[:2]
        args += [opt, value]
    assert_clean(CliRunner().invoke(cli, args))


@FUZZ
@given(
    picks=st.lists(st.tuples(st.sampled_from(SWEEP_OPTIONS), junk), min_size=1, max_size=3),
    blob=st.binary(max_size=300),
)
def test_sweep_with_random_options_fails_cleanly(tmp_path, picks, blob):
    args = ["sweep", "--dry-run", "--out", str(tmp_path / "sweep")]
    for opt, value in picks:
        if opt == "--recipe":
            value = garbage_file(tmp_path, blob, data_suffix(blob))
        args += [opt, value]
    assert_clean(CliRunner().invoke(cli, args))


def data_suffix(blob: bytes) -> str:
    return ".toml" if len(blob) % 2 else ".json"


@FUZZ
@given(picks=st.lists(st.tuples(st.sampled_from(AUDIT_OPTIONS), junk), min_size=1, max_size=3))
def test_audit_with_random_options_fails_cleanly(certified_run, fashion_dir, picks):
    args = [
        "audit",
        str(certified_run),
        "--data-dir",
        str(fashion_dir),
        "--limit",
        "1",
        "--budget",
        "2",
        "--no-tightness",
    ]
    for opt, value in picks:
        if opt in ("--limit", "--budget", "--n-search", "--n-test"):
            value = str(value)[:2]
        args += [opt, value]
    result = CliRunner().invoke(cli, args)
    if result.exit_code == 1 and "violation" in result.output.lower():
        return
    assert_clean(result)
