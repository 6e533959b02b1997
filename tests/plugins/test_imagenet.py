"""The ImageNet dataset on folders of real JPEGs written by the tests, in ImageNet's own layout (one folder per
ILSVRC-2012 synset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from smoothcore import DataError
from smoothcore.data import fetch, get_dataset
from smoothcore_plugins.imagenet import synset_index

# the first, second and last ILSVRC-2012 synsets (tench, goldfish, toilet tissue)
TENCH, GOLDFISH, TISSUE = "n01440764", "n01443537", "n15075141"


def write_class_folders(root, counts, size=(300, 260), seed=0):
    """``counts``: synset folder name -> number of JPEGs of random pixels in it."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.JPEG", quality=90)
    return root


def load_val(root, monkeypatch):
    monkeypatch.setenv("IMAGENET_TEST_DIR", str(root))
    return get_dataset("imagenet").load("test")


def test_the_synset_list_is_ilsvrc_2012s_thousand_classes_in_sorted_order():
    index = synset_index()
    assert len(index) == 1000
    assert index[TENCH] == 0 and index[GOLDFISH] == 1 and index[TISSUE] == 999
    assert list(index) == sorted(index)


def test_imagenet_needs_its_variables(monkeypatch):
    monkeypatch.delenv("IMAGENET_TEST_DIR", raising=False)
    with pytest.raises(DataError, match="IMAGENET_TEST_DIR"):
        get_dataset("imagenet").load("test")


def test_imagenet_reads_class_folders_of_jpegs_with_the_paper_transforms(tmp_path, monkeypatch):
    ds = load_val(write_class_folders(tmp_path / "val", {TENCH: 2, GOLDFISH: 2}), monkeypatch)
    x, y = fetch(ds, [0, 3])
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1]
    assert torch.equal(x * 255, (x * 255).round())  # resize + crop of 8-bit images stays on the 1/255 grid


def test_labels_are_the_standard_class_indices_whatever_folders_are_present(tmp_path, monkeypatch):
    """A validation folder without the first synset, or a subset such as the last class alone, keeps each image's
    ILSVRC-2012 index: numbering the folders present would shift every label (silently wrong certificates)."""
    ds = load_val(write_class_folders(tmp_path / "val", {GOLDFISH: 2, TISSUE: 1}), monkeypatch)
    assert ds.targets == [1, 1, 999]
    assert fetch(ds, [2])[1].tolist() == [999]


def test_hidden_folders_and_stray_files_are_not_classes(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "val", {TENCH: 1, GOLDFISH: 1})
    write_class_folders(root, {".ipynb_checkpoints": 1})
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / TENCH / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    ds = load_val(root, monkeypatch)
    assert ds.targets == [0, 1]


def test_folders_that_are_not_synsets_are_refused_by_name(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "val", {TENCH: 1, "cats": 1, "dogs": 1})
    with pytest.raises(DataError, match=r"not ILSVRC-2012 synsets: 'cats', 'dogs'") as err:
        load_val(root, monkeypatch)
    assert "dataset plugin" in err.value.hint


def test_the_flat_validation_folder_of_the_download_is_refused_with_how_to_sort_it(tmp_path, monkeypatch):
    (tmp_path / "val").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(
        tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG"
    )
    with pytest.raises(DataError, match="holds no class folders") as err:
        load_val(tmp_path / "val", monkeypatch)
    assert "sorted into synset folders" in err.value.hint


def test_an_empty_class_folder_is_allowed_but_no_images_at_all_is_not(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "val", {TENCH: 1, GOLDFISH: 0})
    assert load_val(root, monkeypatch).targets == [0]
    empty = write_class_folders(tmp_path / "empty", {TENCH: 0})
    with pytest.raises(DataError, match="hold no images"):
        load_val(empty, monkeypatch)


def test_the_fingerprint_sees_another_image_list_or_labels_but_not_the_folders_location(
    tmp_path, monkeypatch
):
    a = load_val(write_class_folders(tmp_path / "a", {TENCH: 2, GOLDFISH: 1}), monkeypatch).fingerprint()
    moved = load_val(write_class_folders(tmp_path / "b", {TENCH: 2, GOLDFISH: 1}), monkeypatch).fingerprint()
    fewer = load_val(write_class_folders(tmp_path / "c", {TENCH: 2}), monkeypatch).fingerprint()
    relabelled = load_val(
        write_class_folders(tmp_path / "d", {TENCH: 2, TISSUE: 1}), monkeypatch
    ).fingerprint()
    assert a == moved
    assert len({a, fewer, relabelled}) == 3


def test_imagenet_folder_that_is_missing_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET_TEST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere \(\$IMAGENET_TEST_DIR\) is not a folder"):
        get_dataset("imagenet").load("test")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_jpeg_is_named_without_a_worker_traceback(tmp_path, monkeypatch, workers):
    from smoothcore.data import batches

    root = write_class_folders(tmp_path / "val", {TENCH: 1})
    (root / TENCH / "zbad.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = load_val(root, monkeypatch)
    with pytest.raises(DataError) as err:
        list(batches(ds, 2, shuffle=False, workers=workers))
    assert (
        "zbad.JPEG" in str(err.value) and "Traceback" not in str(err.value) and "worker" not in str(err.value)
    )


def test_grayscale_and_cmyk_jpegs_become_rgb(tmp_path, monkeypatch):
    """ImageNet holds a few of each."""
    root = tmp_path / "val" / TENCH
    root.mkdir(parents=True)
    Image.fromarray(np.full((50, 60), 77, dtype=np.uint8), mode="L").save(root / "gray.JPEG")
    Image.new("CMYK", (60, 50), (0, 0, 0, 0)).save(root / "cmyk.JPEG")
    x, _ = fetch(load_val(tmp_path / "val", monkeypatch), [0, 1])
    assert x.shape == (2, 3, 224, 224)
    assert torch.equal(x[1, 0], x[1, 1]) and torch.equal(x[1, 1], x[1, 2])  # gray: three equal channels
    assert (x[0] > 0.95).all()  # CMYK with no ink is white


def test_batches_from_a_folder_dataset_leave_the_global_generator_alone(tmp_path, monkeypatch):
    """Training resumes torch's global generator (dropout); reading folder datasets must not draw from it."""
    from smoothcore.data import batches

    ds = load_val(write_class_folders(tmp_path / "val", {TENCH: 4}, size=(40, 40)), monkeypatch)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    list(batches(ds, 2, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), before)
