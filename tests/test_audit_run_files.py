"""Data sets from files (``saliency audit DATA``): what is a sample, a class, or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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
