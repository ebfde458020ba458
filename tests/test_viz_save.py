"""Tests for ``saliency.viz.save_overlays``: names, sizes, pixels, overwriting, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliency import Attribution, viz
from saliency.viz import save as save_module
from saliency.viz.png import write_png


def _attr(values: torch.Tensor, classes: torch.Tensor, outputs: torch.Tensor) -> Attribution:
    return Attribution(values=values, classes=classes, outputs=outputs, method="gradients")


def _attribution(b: int = 3, k: int = 2, h: int = 12, w: int = 10) -> Attribution:
    g = torch.Generator().manual_seed(0)
    return _attr(
        values=torch.randn(b, k, 3, h, w, generator=g),
        classes=torch.tensor([[2, 0]] * b)[:, :k],
        outputs=torch.randn(b, 3, generator=g),
    )


def _images(b: int = 3, h: int = 12, w: int = 10) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_files_are_valid_pngs_with_expected_names_sizes_and_pixels(tmp_path: Path) -> None:
    attribution, images = _attribution(), _images()
    names = ["cat", "dog", "sea lion"]
    paths = viz.save_overlays(attribution, images, tmp_path / "out", class_names=names, alpha=0.6)
    expected = [f"{b}_{n}.png" for b in range(3) for n in ("sea_lion", "cat")]
    assert [p.name for p in paths] == expected
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)
    for i, path in enumerate(paths):
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (10, 12)
            same = viz.overlay(images[i // 2], attribution.values[i // 2, i % 2], alpha=0.6)
            np.testing.assert_array_equal(np.asarray(picture), np.asarray(same))


def test_without_class_names_ids_are_used_and_start_offsets_indices(tmp_path: Path) -> None:
    paths = viz.save_overlays(_attribution(b=2), _images(b=2), tmp_path, start=100)
    assert [p.name for p in paths] == ["100_2.png", "100_0.png", "101_2.png", "101_0.png"]


def test_grayscale_maps_and_channels_last_images(tmp_path: Path) -> None:
    attribution = _attr(
        values=torch.randn(2, 1, 8, 8), classes=torch.tensor([[1], [4]]), outputs=torch.zeros(2, 5)
    )
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    paths = viz.save_overlays(attribution, images, tmp_path, fmt="jpg")
    assert [p.name for p in paths] == ["0_1.jpg", "1_4.jpg"]
    with Image.open(paths[0]) as picture:
        assert picture.format == "JPEG" and picture.size == (8, 8)


def test_existing_files_are_not_overwritten_by_default(tmp_path: Path) -> None:
    attribution, images = _attribution(), _images()
    (tmp_path / "1_0.png").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"1_0\.png exists; pass overwrite=True"):
        viz.save_overlays(attribution, images, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["1_0.png"]  # nothing else was written
    assert (tmp_path / "1_0.png").read_bytes() == b"keep me"
    viz.save_overlays(attribution, images, tmp_path, overwrite=True)
    with Image.open(tmp_path / "1_0.png") as picture:
        assert picture.size == (10, 12)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch, fmt: str) -> None:
    def failing_write(fp, *args, **kwargs):
        fp.write(b"half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(save_module, "write_png", failing_write)
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, **kw: failing_write(fp))
    with pytest.raises(OSError, match="disk full"):
        viz.save_overlays(_attribution(), _images(), tmp_path, fmt=fmt, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_colliding_names_raise_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"several maps would be saved as 0_a_b\.png"):
        viz.save_overlays(_attribution(), _images(), tmp_path, class_names=["a/b", "x", "a:b"])
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys) -> None:
    viz.save_overlays(_attribution(), _images(), tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "6/6" in captured.err


def test_many_maps_in_several_chunks(tmp_path: Path) -> None:
    attribution, images = _attribution(b=20, k=2, h=6, w=6), _images(b=20, h=6, w=6)
    paths = viz.save_overlays(attribution, images, tmp_path, sign="all", workers=2)
    assert len(paths) == 40 and all(p.stat().st_size > 0 for p in paths)
    with Image.open(paths[-1]) as picture:
        last = viz.overlay(images[19], attribution.values[19, 1], sign="all")
        np.testing.assert_array_equal(np.asarray(picture), np.asarray(last))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fmt": "gif"}, ValueError, "fmt='gif'"),
        ({"class_names": ["only one"]}, ValueError, "class_names has no entry for class 2"),
        ({"workers": 0}, ValueError, "workers=0"),
        ({"compress_level": 10}, ValueError, "compress_level=10"),
        ({"colour": "red"}, TypeError, "unexpected keyword arguments"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        viz.save_overlays(_attribution(), _images(), tmp_path, **kwargs)


def test_image_count_must_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="images holds 2 images; expected one per sample"):
        viz.save_overlays(_attribution(), _images(b=2), tmp_path)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 3), (9, 1, 3), (37, 53, 3)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_writer_round_trips_exactly(shape: tuple, level: int) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    write_png(buffer, pixels, level)
    with Image.open(io.BytesIO(buffer.getvalue())) as picture:
        picture.verify()  # chunk CRCs and structure
    with Image.open(buffer) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(picture), pixels)


def test_png_writer_rejects_other_arrays() -> None:
    with pytest.raises(ValueError, match=r"expected uint8 \(H, W, 3\)"):
        write_png(io.BytesIO(), np.zeros((4, 4, 3), dtype=np.float32))
