"""Data sets from files (``saliency audit DATA``): what is a sample, a class, or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import saliency.audit
from saliency.audit.datasets.files import open_data


def _image(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def test_hidden_files_and_folders_are_no_samples(tmp_path):
    for label in ("0", "1"):
        _image(tmp_path / label / "a.png")
        # Jupyter's checkpoints, a dotfile, a hidden folder deeper down: copies, not samples
        _image(tmp_path / label / ".ipynb_checkpoints" / "a-checkpoint.png")
        _image(tmp_path / label / ".a.png")
        _image(tmp_path / label / "sub" / ".cache" / "b.png")
        _image(tmp_path / label / "sub" / "c.png")
    _image(tmp_path / ".ipynb_checkpoints" / "x.png")  # a hidden class folder
    data = open_data(tmp_path)
    assert [Path(n).relative_to(tmp_path).as_posix() for n in data.names] == [
        "0/a.png", "0/sub/c.png", "1/a.png", "1/sub/c.png"
    ]  # fmt: skip
    assert data.class_names == ["0", "1"] and len(data.dataset) == 4


@pytest.mark.parametrize(
    "folders, match",
    [
        (["3", "03"], r"folders '03' and '3' both name class 3"),
        (["3", "\u0663"], "folders '3' and '\u0663' both name class 3"),  # Arabic-Indic three
        (["1", "\u00b2"], r"folders \['1'\] are class ids but \['\u00b2'\] are not"),
    ],
)
def test_class_folders_that_collide_or_are_no_number_are_refused(tmp_path, folders, match):
    for name in folders:
        _image(tmp_path / name / "a.png")
    with pytest.raises(ValueError, match=match):
        open_data(tmp_path)


def test_digits_of_another_script_are_class_ids(tmp_path):
    for name in ("\u0660", "\u0662"):  # Arabic-Indic 0 and 2
        _image(tmp_path / name / "a.png")
    data = open_data(tmp_path)
    assert data.labels_from == "folder names = class ids"
    assert [int(data.dataset[i][1]) for i in range(2)] == [0, 2]


def test_an_unreadable_first_image_is_skipped_and_named_not_fatal(tmp_path):
    folder = tmp_path / "data"
    (folder / "0").mkdir(parents=True)
    (folder / "0" / "a.png").write_bytes(b"not a png at all")  # sorts first
    _image(folder / "0" / "b.png", 10)
    _image(folder / "1" / "c.png", 200)
    data = open_data(folder)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    run = saliency.audit.run(
        model, data.dataset, out_dir=tmp_path / "out", metrics=["norms"], report=False
    )
    assert list(run.skipped) == [0] and run.summary["explained"] == 2
    assert data.names[0].endswith("a.png") and "not a readable image" in data.errors[0]

    for name in ("a.png", "b.png"):
        (folder / "0" / name).write_bytes(b"broken")
    (folder / "1" / "c.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"none of the 3 images can be read \(the first, .*a\.png"):
        open_data(folder)


def test_tensor_files_that_are_not_numbers_are_refused_by_name(tmp_path):
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy' holds Python objects .* np\.save"):
        open_data(objects)
    words = tmp_path / "words.npy"
    np.save(words, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match=r"words\.npy' holds <U1 values; expected numbers"):
        open_data(words)
    cut = tmp_path / "cut.npy"
    np.save(cut, np.zeros((4, 3), dtype=np.float32))
    cut.write_bytes(cut.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"cut\.npy' cannot be read as \.npy"):
        open_data(cut)
    damaged = tmp_path / "damaged.safetensors"
    save_file({"x": torch.zeros(4, 3)}, damaged)
    damaged.write_bytes(damaged.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"damaged\.safetensors' cannot be read as safetensors"):
        open_data(damaged)
    big_endian = tmp_path / "big.npy"
    np.save(big_endian, np.arange(6, dtype=">f4").reshape(2, 3))
    x = open_data(big_endian).dataset[1]
    assert x.tolist() == [3.0, 4.0, 5.0]
