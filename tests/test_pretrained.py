"""Pretrained classifiers by name: the shipped manifest, verified downloads from a local HTTP server (a good file, a
truncated one, a wrong one, none at all) and the cache."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import threading
from pathlib import Path

import pytest
import torch

import smoothcore
from smoothcore.errors import CheckpointError, ConfigError
from smoothcore.pretrained import (
    catalogue,
    fetch,
    get,
    git_blob_id,
    list_models,
)
from tests.test_loading import randomised_wrn

ROOT = Path(__file__).resolve().parents[1]
SHARED_MANIFEST = ROOT.parent / "shared" / "pretrained" / "levine-feizi-2021.tsv"
REPO, COMMIT = "lab/releases", "0123456789abcdef0123456789abcdef01234567"


def test_the_package_ships_the_papers_manifest_unchanged():
    shipped = ROOT / "smoothcore" / "manifests" / "levine-feizi-2021.tsv"
    assert shipped.read_bytes() == SHARED_MANIFEST.read_bytes()


def test_all_99_released_cifar10_classifiers_are_listed_with_smoothcore_names():
    models = list_models("levine-feizi-2021/*")
    assert len(models) == 99
    assert {m.noise for m in models} == {"uniform", "ssn", "dssn"}
    assert {(m.model, m.dataset) for m in models} == {("wrn40", "cifar10")}
    dssn = get("levine-feizi-2021/cifar_split_derandomized_1.0")
    assert (dssn.noise, dssn.sigma, dssn.stability, dssn.training) == ("dssn", 1.0, False, "plain")
    assert dssn.commit == "76b17a34d5afbcf7642a4d1db6ddd3604db53326"
    assert dssn.url == (
        "https://raw.githubusercontent.com/alevine0/smoothingSplittingNoise/"
        "76b17a34d5afbcf7642a4d1db6ddd3604db53326/checkpoints/cifar_split_derandomized_1.0/model_ckpt.torch"
    )
    assert get("levine-feizi-2021/cifar_uniform_0.5_stabilized").training == "stability"
    retrained = get("levine-feizi-2021/denoised/mse_retrain/cifar_split_2.0")
    assert retrained.training == "denoiser retrained" and retrained.denoiser_path


def test_an_unknown_name_is_refused_with_suggestions():
    with pytest.raises(ConfigError, match="no pretrained model") as err:
        get("levine-feizi-2021/cifar_split_derandomized_9.9")
    assert err.value.hint and "smoothcore models" in err.value.hint
    with pytest.raises(ConfigError, match="did you mean"):
        get("cifar_split_derandomized_1.0")


def test_git_blob_id_is_gits_object_id(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(bytes(range(256)) * 100)
    expected = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True)
    assert git_blob_id(f) == expected.stdout.strip()


class _Server:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1; ``short`` paths announce more bytes than they send."""

    def __init__(self, files: dict[str, bytes], short: frozenset[str] = frozenset()) -> None:
        self.files, self.short, self.requests = files, short, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (100 if self.path in server.short else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _reference_checkpoint(tmp_path: Path) -> tuple[bytes, torch.nn.Module]:
    """A WRN-40-2 saved in the reference's model_ckpt.torch layout (weights, normalisation)."""
    from smoothcore_plugins.datasets import CIFAR10_MEAN, CIFAR10_STD

    net = randomised_wrn(3)
    state = {f"model.module.{k}": v for k, v in net.state_dict().items()}
    state["norm.module.mu"] = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    state["norm.module.log_sig"] = torch.log(torch.tensor(CIFAR10_STD)).view(1, 3, 1, 1)
    path = tmp_path / "model_ckpt.torch"
    torch.save(state, path)
    return path.read_bytes(), net


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A manifest in the reference layout for files served from 127.0.0.1, a fresh cache, and the server."""
    body, net = _reference_checkpoint(tmp_path)
    good = tmp_path / "good.bin"
    good.write_bytes(body)
    blob = git_blob_id(good)
    rows = [
        ("good", "ckpt/good/model_ckpt.torch", blob, "SplitMethodDerandomized", "0.25", "False"),
        ("short", "ckpt/short/model_ckpt.torch", blob, "SplitMethod", "1.0", "False"),
        ("wrong", "ckpt/wrong/model_ckpt.torch", blob, "Uniform", "2.0", "True"),
        ("absent", "ckpt/absent/model_ckpt.torch", blob, "Uniform", "2.0", "True"),
    ]
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "lab.tsv").write_text(
        f"# Test releases (repository {REPO}, commit {COMMIT}).\n"
        "name\tpath\tgit_blob\tnoise\tsigma\tstability\tmodel\tdataset\tdenoiser_path\n"
        + "".join(
            f"{n}\t{p}\t{b}\t{noise}\t{s}\t{st}\tWideResNet\tcifar\t\n" for n, p, b, noise, s, st in rows
        )
        + f"retrained\tckpt/good/model_ckpt.torch\t{blob}\tSplitMethod\t0.5\tFalse\tWideResNet\tcifar\tden/x.pth.tar\n"
    )
    prefix = f"/{REPO}/{COMMIT}/ckpt"
    wrong = bytearray(body)
    wrong[len(wrong) // 2] ^= 0xFF
    server = _Server(
        {
            f"{prefix}/good/model_ckpt.torch": body,
            f"{prefix}/short/model_ckpt.torch": body[:-50],
            f"{prefix}/wrong/model_ckpt.torch": bytes(wrong),
            "/files/any.pt": body,
        },
        short=frozenset({f"{prefix}/short/model_ckpt.torch"}),
    )
    monkeypatch.setenv("SMOOTHCORE_MANIFESTS", str(manifests))
    monkeypatch.setenv("SMOOTHCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SMOOTHCORE_PRETRAINED_URL", server.url)
    yield server, body, net, tmp_path / "cache"
    server.close()


def _cached_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


def test_a_good_download_is_verified_cached_and_loads_as_the_classifier(lab):
    server, body, net, cache = lab
    assert "lab/good" in catalogue()
    path = fetch("lab/good")
    assert path.read_bytes() == body and path.is_relative_to(cache)
    assert fetch("lab/good") == path and len(server.requests) == 1  # the second time from the cache
    loaded = smoothcore.load_classifier(path)
    x = torch.rand(2, 3, 32, 32)
    from smoothcore_plugins.datasets import CIFAR10_MEAN, CIFAR10_STD

    mu, sd = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net((x - mu) / sd), atol=1e-5)


def test_a_download_cut_short_is_an_error_and_nothing_is_cached(lab):
    _, _, _, cache = lab
    with pytest.raises(CheckpointError, match="could not download lab/short") as err:
        fetch("lab/short")
    assert "put it at" in err.value.hint
    assert _cached_files(cache) == []


def test_a_wrong_file_does_not_verify_and_nothing_is_cached(lab):
    _, _, _, cache = lab
    with pytest.raises(CheckpointError, match="does not verify: git_blob"):
        fetch("lab/wrong")
    assert _cached_files(cache) == []


def test_a_missing_file_or_no_network_says_where_to_put_the_file(lab, monkeypatch):
    _, _, _, cache = lab
    with pytest.raises(CheckpointError, match="HTTP 404 Not Found"):
        fetch("lab/absent")
    monkeypatch.setenv("SMOOTHCORE_PRETRAINED_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(CheckpointError, match="could not download lab/good") as err:
        fetch("lab/good")
    assert str(cache) in err.value.hint and _cached_files(cache) == []


def test_a_file_put_in_the_cache_by_hand_is_used_once_it_verifies(lab, monkeypatch):
    server, body, _, cache = lab
    monkeypatch.setenv("SMOOTHCORE_PRETRAINED_URL", "http://127.0.0.1:9")
    target = cache / REPO.replace("/", "+") / COMMIT / "ckpt/good/model_ckpt.torch"
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    assert fetch("lab/good") == target and server.requests == []


def test_a_corrupted_cache_entry_is_fetched_again(lab):
    server, body, _, _ = lab
    path = fetch("lab/good")
    path.write_bytes(body[:100])
    assert fetch("lab/good").read_bytes() == body and len(server.requests) == 2


def test_any_url_with_its_sha256_is_verified_and_one_without_is_refused(lab):
    server, body, _, cache = lab
    digest = hashlib.sha256(body).hexdigest()
    path = fetch(f"{server.url}/files/any.pt#sha256={digest}")
    assert path.read_bytes() == body and path.name == "any.pt"
    with pytest.raises(CheckpointError, match="does not verify: sha256"):
        fetch(f"{server.url}/files/any.pt#sha256={'0' * 64}")
    with pytest.raises(ConfigError, match="needs its SHA-256"):
        fetch(f"{server.url}/files/any.pt")
    assert len(_cached_files(cache)) == 1


def test_hf_sources_need_the_optional_package_or_a_well_formed_path(monkeypatch):
    with pytest.raises(ConfigError, match="hf://owner/repo/path"):
        fetch("hf://owner/repo")
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(ConfigError, match="huggingface_hub"):
        fetch("hf://owner/repo/model.pt")


def test_load_classifier_takes_a_pretrained_name(lab):
    server, _, net, _ = lab
    by_name = smoothcore.load_classifier("lab/good")
    by_path = smoothcore.load_classifier(fetch("lab/good"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(by_name(x), by_path(x))
    assert len(server.requests) == 1


def test_certify_a_pretrained_name_with_the_noise_and_sigma_it_was_trained_with(lab, tmp_path):
    from click.testing import CliRunner

    from smoothcore.cli import cli
    from smoothcore.run_record import Certification
    from tests.plugins.test_datasets import write_cifar_fixture

    data = write_cifar_fixture(tmp_path / "cifar-10-batches-py", n_per_batch=4)
    run = tmp_path / "run"
    args = ["certify", str(run), "--checkpoint", "lab/good", "--data-dir", str(data), "--limit", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = Certification.read(next(run.glob("certify_*.json")))
    assert record.noise["name"] == "dssn" and record.noise["sigma"] == 0.25 and record.num_images == 2
    refused = CliRunner().invoke(cli, ["certify", str(tmp_path / "r2"), "--checkpoint", "lab/retrained"])
    assert refused.exit_code != 0 and "retrained behind a denoiser" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "r2").exists()


def test_models_lists_the_catalogue_and_filters_it():
    import json

    from click.testing import CliRunner

    from smoothcore.cli import cli

    listed = json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)
    assert len(listed) == 99 and {"name", "noise", "sigma", "training", "source"} <= set(listed[0])
    some = json.loads(CliRunner().invoke(cli, ["models", "uniform_2.0", "--json"]).output)
    assert [m["name"] for m in some] == [
        "levine-feizi-2021/cifar_uniform_2.0",
        "levine-feizi-2021/cifar_uniform_2.0_stabilized",
        "levine-feizi-2021/denoised/mse_retrain/cifar_uniform_2.0",
    ]
