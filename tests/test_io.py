"""Model and input loading for the command: every model form, refusals, and bad inputs."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import sys
import uuid
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from safetensors.torch import save_file
from torch import nn

from saliency.io import (
    InputError,
    LoadedModel,
    UnsafeFileError,
    find_inputs,
    iter_inputs,
    load_inputs,
    load_model,
)

# --------------------------------------------------------------------------------- models


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    ).eval()


class OpensFile:
    """Unpickling this calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def x():
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_bundled_model_comes_with_its_metadata():
    loaded = load_model("digits")
    assert isinstance(loaded, LoadedModel)
    assert loaded.format == "bundled" and loaded.input_shape == (1, 8, 8)
    assert loaded.class_names == tuple(str(i) for i in range(10))
    assert len(loaded.mean) == len(loaded.std) == 1
    assert not loaded.model.training
    with pytest.raises(ValueError, match="weights"):
        load_model("digits", weights="w.safetensors")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_round_trip(tmp_path, x):
    model = small_cnn()
    torch.jit.save(torch.jit.script(model.train()), tmp_path / "cnn.pt")
    loaded = load_model(tmp_path / "cnn.pt")
    assert loaded.format == "torchscript" and not loaded.model.training
    torch.testing.assert_close(loaded.model(x), model.eval()(x))


def test_export_with_dynamic_batch(tmp_path, x):
    model = small_cnn()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x[:4],), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "dynamic.pt2")
    loaded = load_model(str(tmp_path / "dynamic.pt2"))
    assert loaded.format == "export" and loaded.input_shape == (1, 8, 8)
    assert loaded.model.batch_size is None and not loaded.model.training
    for n in (3, 6):
        torch.testing.assert_close(loaded.model(x[:n]), model(x[:n]))


def test_export_with_static_batch_runs_any_batch(tmp_path):
    model = small_cnn()
    torch.export.save(torch.export.export(model, (torch.randn(4, 1, 8, 8),)), tmp_path / "s.pt2")
    loaded = load_model(tmp_path / "s.pt2")
    assert loaded.model.batch_size == 4 and "static batch 4" in loaded.source
    loaded.model.eval()  # accepted (GraphModule.eval() alone raises); training is refused
    with pytest.raises(NotImplementedError, match="fixed"):
        loaded.model.train()
    for n in (0, 3, 4, 10):
        x = torch.randn(n, 1, 8, 8)
        torch.testing.assert_close(loaded.model(x), model(x))
    # Input gradients through the padded chunks equal the original model's.
    x = torch.randn(10, 1, 8, 8, requires_grad=True)
    (ours,) = torch.autograd.grad(loaded.model(x)[:, 2].sum(), x)
    (theirs,) = torch.autograd.grad(model(x)[:, 2].sum(), x)
    torch.testing.assert_close(ours, theirs)


def test_export_in_training_mode_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
    torch.export.save(
        torch.export.export(model.train(), (torch.randn(4, 1, 8, 8),)), tmp_path / "t.pt2"
    )
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        load_model(tmp_path / "t.pt2")


@pytest.mark.parametrize("entry", ["data/sample_inputs/model.pt", "data/weights/weight_0"])
def test_export_archive_with_code_in_a_pickle_is_refused(tmp_path, entry):
    """torch.export.load itself unpickles some entries fully; the archive is checked first."""
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(small_cnn(), (torch.randn(4, 1, 8, 8),)), clean)
    marker = tmp_path / "marker"
    payload = io.BytesIO()
    torch.save(((OpensFile(marker),), {}), payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith(entry):
                data = payload.getvalue()
            elif info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                for meta in config["config"].values():
                    # torch loads a weight marked as pickled with weights_only=False.
                    meta["use_pickle"] = meta["use_pickle"] or entry.endswith(meta["path_name"])
                data = json.dumps(config).encode()
            dst.writestr(info, data)
    with pytest.raises(UnsafeFileError, match=rf"arbitrary code.*{entry}.*trust_pickle"):
        load_model(evil)
    assert not marker.exists()
    # The file really is dangerous: trusting it runs the payload (whether or not it then loads).
    with contextlib.suppress(ValueError):
        load_model(evil, trust_pickle=True)
    assert marker.exists()


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module on sys.path with ``build()`` returning a fresh small CNN; yields its name."""
    name = f"factory_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),\n"
        "                         nn.Linear(4 * 8 * 8, 5))\n"
        "not_callable = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("form", ["safetensors", "state_dict"])
def test_factory_with_weights(tmp_path, factory_module, x, form):
    model = small_cnn(seed=7)
    weights = tmp_path / f"weights.{form}"
    if form == "safetensors":
        save_file(model.state_dict(), weights)
    else:
        torch.save(model.state_dict(), weights)
    loaded = load_model(f"{factory_module}:build", weights=weights)
    assert loaded.format == "factory" and not loaded.model.training
    assert str(weights) in loaded.source
    torch.testing.assert_close(loaded.model(x), model(x))


def test_factory_errors_name_the_problem(tmp_path, factory_module):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.safetensors.*do not fit"):
        load_model(f"{factory_module}:build", weights=wrong)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_model(f"{factory_module}:build", weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="no attribute 'nope'"):
        load_model(f"{factory_module}:nope")
    with pytest.raises(ValueError, match="not a callable"):
        load_model(f"{factory_module}:not_callable")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_here'"):
        load_model("no_such_module_here:build")


def test_malicious_pickle_is_refused_without_running_it(tmp_path, factory_module):
    marker = tmp_path / "marker"
    as_torch = tmp_path / "model.pt"
    torch.save(OpensFile(marker), as_torch)
    as_pickle = tmp_path / "model.pkl"
    as_pickle.write_bytes(pickle.dumps(OpensFile(marker), protocol=4))
    for path in (as_torch, as_pickle):
        with pytest.raises(UnsafeFileError, match=r"arbitrary code.*TorchScript.*trust_pickle"):
            load_model(path)
    with pytest.raises(UnsafeFileError, match="open"):
        load_model(as_torch)
    with pytest.raises(UnsafeFileError, match="weights"):
        load_model(f"{factory_module}:build", weights=as_torch)
    assert not marker.exists()


def test_trusted_pickle_of_a_full_model_loads(tmp_path, x):
    model = small_cnn()
    torch.save(model.train(), tmp_path / "full.pt")
    with pytest.raises(UnsafeFileError, match="Sequential"):
        load_model(tmp_path / "full.pt")
    loaded = load_model(tmp_path / "full.pt", trust_pickle=True)
    assert loaded.format == "pickle" and not loaded.model.training
    torch.testing.assert_close(loaded.model(x), model.eval()(x))


def test_weights_alone_or_unknown_files_get_clear_errors(tmp_path):
    model = small_cnn()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    save_file(model.state_dict(), tmp_path / "sd.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"definitely not a model")
    for name in ("sd.pt", "sd.safetensors"):
        with pytest.raises(ValueError, match=rf"{name}.*package\.module:factory"):
            load_model(tmp_path / name)
    with pytest.raises(ValueError, match=r"junk\.bin.*not a model file"):
        load_model(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt.*does not exist"):
        load_model(tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="weights: only used with"):
        load_model(tmp_path / "sd.pt", weights=tmp_path / "sd.pt")
    with pytest.raises(TypeError, match="spec"):
        load_model(model)
    with pytest.raises(ValueError, match="device"):
        load_model("digits", device="toaster")


# --------------------------------------------------------------------------------- inputs


def pixels(h: int, w: int, c: int | None, seed: int = 0) -> np.ndarray:
    shape = (h, w) if c is None else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_png_loads_exactly_and_keeps_its_pixels(tmp_path):
    rgb = pixels(5, 7, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (sample,) = load_inputs([tmp_path / "a.png"]).samples
    assert sample.name == str(tmp_path / "a.png") and sample.tensor.dtype == torch.float32
    assert sample.tensor.shape == (3, 5, 7)
    np.testing.assert_array_equal(sample.image, rgb)
    torch.testing.assert_close(sample.tensor, torch.from_numpy(rgb).permute(2, 0, 1) / 255)


def test_jpeg_and_grayscale_rgb_conversion(tmp_path):
    gray = pixels(6, 6, None)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(pixels(6, 6, 3)).save(tmp_path / "colour.jpg", quality=95)
    by_own = {s.path.name: s for s in load_inputs([tmp_path]).samples}
    assert by_own["gray.png"].tensor.shape == (1, 6, 6)
    assert by_own["colour.jpg"].tensor.shape == (3, 6, 6)
    as_rgb = load_inputs([tmp_path / "gray.png"], channels=3).samples[0]
    assert as_rgb.image.shape == (6, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(as_rgb.image[:, :, c], gray)
    as_gray = load_inputs([tmp_path / "colour.jpg"], channels=1).samples[0]
    expected = np.asarray(Image.open(tmp_path / "colour.jpg").convert("L"))
    np.testing.assert_array_equal(as_gray.image[:, :, 0], expected)


def test_resize_normalise_and_defaults_from_shape(tmp_path):
    Image.fromarray(pixels(20, 30, 3)).save(tmp_path / "big.png")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    (s,) = load_inputs([tmp_path / "big.png"], size=(8, 12), mean=mean, std=std).samples
    assert s.tensor.shape == (3, 8, 12) and s.image.shape == (8, 12, 3)
    raw = torch.from_numpy(s.image).permute(2, 0, 1) / 255
    torch.testing.assert_close(
        s.tensor, (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    )
    # The model's input shape supplies channels and size; explicit arguments win.
    (s,) = load_inputs([tmp_path / "big.png"], shape=(1, 8, 8)).samples
    assert s.tensor.shape == (1, 8, 8)
    (s,) = load_inputs([tmp_path / "big.png"], shape=(1, 8, 8), size=(4, 4)).samples
    assert s.tensor.shape == (1, 4, 4)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    deep = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    (s,) = load_inputs([tmp_path / "deep.png"]).samples
    np.testing.assert_array_equal(s.image[0, :, 0], [0, 1, 128, 255])


def test_folders_expand_sorted_non_recursive_unless_asked(tmp_path):
    for name in ("b.png", "a.PNG", ".hidden.png", "sub/c.png", ".cache/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels(2, 2, None)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an input")
    files, errors = find_inputs([tmp_path])
    assert [f.name for f in files] == ["a.PNG", "b.png"] and errors == []
    files, _ = find_inputs([tmp_path, tmp_path / "b.png"], recursive=True)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.PNG", "b.png", "sub/c.png"]
    (tmp_path / "empty").mkdir()
    _, errors = find_inputs([tmp_path / "empty", tmp_path / "missing.png"])
    assert [(e.path.name, e.message) for e in errors] == [
        ("empty", "folder holds no image or tensor files"),
        ("missing.png", "no such file or folder"),
    ]
    with pytest.raises(TypeError, match="paths"):
        find_inputs(str(tmp_path))


def test_npy_batches_and_single_samples(tmp_path):
    rows = np.arange(3 * 30, dtype=np.float64).reshape(3, 30)
    np.save(tmp_path / "rows.npy", rows)
    np.save(tmp_path / "one.npy", rows[0])
    np.save(tmp_path / "image.npy", np.ones((1, 8, 8), dtype=np.uint8))
    loaded = load_inputs([tmp_path / "rows.npy", tmp_path / "one.npy"], mean=1.0, std=2.0)
    assert [s.name for s in loaded.samples] == [
        f"{tmp_path / 'rows.npy'}[{i}]" for i in range(3)
    ] + [str(tmp_path / "one.npy")]
    assert all(s.image is None and s.tensor.dtype == torch.float32 for s in loaded.samples)
    torch.testing.assert_close(
        loaded.samples[1].tensor, torch.from_numpy((rows[1] - 1) / 2).float()
    )
    # With the model's input shape, a single [1, 8, 8] input is not a batch of one-row images.
    (s,) = load_inputs([tmp_path / "image.npy"], shape=(1, 8, 8)).samples
    assert s.name == str(tmp_path / "image.npy") and s.tensor.shape == (1, 8, 8)
    # Per-feature statistics broadcast along the first dimension.
    mean = np.arange(30.0)
    (s,) = load_inputs([tmp_path / "one.npy"], shape=(30,), mean=mean).samples
    torch.testing.assert_close(s.tensor, torch.from_numpy(rows[0] - mean).float())
    (error,) = load_inputs([tmp_path / "rows.npy"], shape=(1, 8, 8)).errors
    assert error.path == tmp_path / "rows.npy" and "expected one input [1, 8, 8]" in error.message


def test_safetensors_inputs_single_or_by_key(tmp_path):
    save_file({"x": torch.ones(2, 4)}, tmp_path / "one.safetensors")
    save_file({"x": torch.ones(2, 4), "y": torch.zeros(4)}, tmp_path / "two.safetensors")
    loaded = load_inputs([tmp_path / "one.safetensors", tmp_path / "two.safetensors"])
    assert [s.name.rsplit("/", 1)[-1] for s in loaded.samples] == [
        "one.safetensors[0]",
        "one.safetensors[1]",
    ]
    (error,) = loaded.errors
    assert error.path.name == "two.safetensors" and "name the one to explain with key" in (
        error.message
    )
    (s,) = load_inputs([tmp_path / "two.safetensors"], key="y").samples
    assert s.tensor.shape == (4,)
    (error,) = load_inputs([tmp_path / "one.safetensors"], key="y").errors
    assert "no tensor 'y'" in error.message


def test_bad_files_are_reported_by_name_and_the_rest_load(tmp_path):
    Image.fromarray(pixels(4, 4, 3)).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "text.jpg").write_text("hello")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    Image.fromarray(pixels(4, 4, 3)).save(tmp_path / "truncated.png")
    data = (tmp_path / "truncated.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    loaded = load_inputs([tmp_path, tmp_path / "gone.png"])
    assert [s.path.name for s in loaded.samples] == ["good.png"]
    failed = {e.path.name: e.message for e in loaded.errors}
    assert set(failed) == {"corrupt.png", "text.jpg", "objects.npy", "truncated.png", "gone.png"}
    assert "not a readable image" in failed["text.jpg"]
    assert all(isinstance(e, InputError) for e in loaded.errors)
    path, message = loaded.errors[0]  # a plain (path, message) pair for the command to print
    assert isinstance(path, type(tmp_path)) and isinstance(message, str)


def test_images_over_the_decompression_bomb_limit_are_refused_undecoded(tmp_path, monkeypatch):
    Image.fromarray(pixels(12, 12, 3)).save(tmp_path / "warn_zone.png")  # 144 px: 1x-2x limit
    Image.fromarray(pixels(20, 20, 3)).save(tmp_path / "error_zone.png")  # 400 px: over 2x
    Image.fromarray(pixels(8, 8, 3)).save(tmp_path / "fine.png")  # 64 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_inputs([tmp_path])
    assert [s.path.name for s in loaded.samples] == ["fine.png"]
    failed = {e.path.name: e.message for e in loaded.errors}
    assert set(failed) == {"warn_zone.png", "error_zone.png"}
    assert all("decompression" in m and "refused without decoding" in m for m in failed.values())
    assert set(decoded) == {(8, 8)}


def test_invalid_arguments_fail_before_any_file_is_read(tmp_path):
    paths = [tmp_path / "never-read.png"]
    cases = [
        ({"channels": 3, "mean": (0.5, 0.5)}, "mean, std: got 2 values for images with 3"),
        ({"mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0)}, "got 3 and 2 values"),
        ({"mean": (0.5, 0.5), "shape": (3, 8, 8)}, "got 2 values for images with 3"),
        ({"std": 0.0}, "std: expected positive"),
        ({"mean": float("nan")}, "mean: expected a number"),
        ({"mean": "abc"}, "mean: expected a number"),
        ({"size": (8,)}, "size: expected"),
        ({"channels": 2}, "channels: expected 1"),
        ({"shape": (0, 3)}, "shape: expected"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            load_inputs(paths, **kwargs)


def test_statistics_of_the_wrong_length_for_a_tensor_file_are_its_error(tmp_path):
    np.save(tmp_path / "rows.npy", np.zeros((2, 30), dtype=np.float32))
    loaded = load_inputs([tmp_path / "rows.npy"], mean=[0.0] * 4)
    assert loaded.samples == [] and len(loaded.errors) == 1
    assert "30 channels or features" in loaded.errors[0].message


def test_iter_inputs_checks_arguments_at_the_call_and_streams(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        iter_inputs([tmp_path], channels=4)  # raised here, not at the first next()
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 5, 5), dtype=np.float32))
    Image.fromarray(pixels(5, 5, 3)).save(tmp_path / "b.png")
    items = list(iter_inputs([tmp_path], shape=(4, 5, 5)))
    assert [type(i).__name__ for i in items] == ["Sample", "Sample", "InputError"]
    assert "one input has shape [4, 5, 5]" in items[2].message


def test_palette_image_with_transparency_loads_quietly(tmp_path):
    img = Image.fromarray(pixels(4, 4, 3)).convert("P")
    img.save(tmp_path / "p.png", transparency=bytes([0, 128] + [255] * 254))
    # PIL warns when such a palette image goes straight to RGB.
    assert isinstance(Image.open(tmp_path / "p.png").info["transparency"], bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (s,) = load_inputs([tmp_path / "p.png"]).samples
    assert s.tensor.shape == (3, 4, 4)


def test_raw_inputs_of_bundled_models_load_as_the_models_expect(tmp_path):
    """Raw files plus the LoadedModel's statistics reproduce the bundled held-out tensors."""
    from saliency import models
    from saliency.models import data

    cancer = load_model("breast_cancer")
    np.save(tmp_path / "cancer.npy", data.raw_split("breast_cancer").x_held_out[:16])
    inputs = load_inputs(
        [tmp_path / "cancer.npy"], shape=cancer.input_shape, mean=cancer.mean, std=cancer.std
    )
    expected, _ = models.held_out("breast_cancer", n=16)
    torch.testing.assert_close(torch.stack([s.tensor for s in inputs.samples]), expected)

    digits = load_model("digits")
    raw = data.raw_split("digits").x_held_out[:16].reshape(16, 8, 8)
    for i, image in enumerate(raw):  # 0..16 ink levels written as 8-bit grayscale PNGs
        Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).save(tmp_path / f"{i:02}.png")
    inputs = load_inputs([tmp_path], shape=digits.input_shape, mean=digits.mean, std=digits.std)
    x = torch.stack([s.tensor for s in inputs.samples])
    expected, _ = models.held_out("digits", n=16)
    torch.testing.assert_close(x, expected, atol=0.01, rtol=0)
    assert torch.equal(digits.model(x).argmax(1), digits.model(expected).argmax(1))
