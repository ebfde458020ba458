"""The Attribution result type: validation, class selection, numpy, save/load, repr."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import saliency
from saliency import Attribution


def make(b=3, k=4, shape=(2, 5), delta=True, classes=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(b, k, *shape, generator=g, dtype=dtype)
    if classes is None:
        classes = torch.arange(k).expand(b, k)
    outputs = torch.randn(b, 6, generator=g, dtype=dtype)
    d = torch.randn(b, k, generator=g, dtype=dtype) if delta else None
    params = {"steps": 7, "rule": "riemann_left", "baseline": [0.5, 1], "classes": None}
    return Attribution(values, classes, outputs, "integrated_gradients", params, d)


def test_fields_and_frozen():
    a = make()
    assert a.values.shape == (3, 4, 2, 5)
    assert a.classes.dtype == torch.long and a.classes.is_contiguous()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.method = "other"


def test_params_are_canonical_json():
    a = Attribution(
        torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, 1), "m",
        {"t": (1, 2), "n": None},
    )  # fmt: skip
    assert a.params == {"t": [1, 2], "n": None}
    assert a.classes.dtype == torch.long


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"values": torch.zeros(3, 4)}, "values: expected \\[B, K, \\*input\\]"),
        ({"values": [1, 2]}, "values: expected a torch.Tensor"),
        ({"classes": torch.zeros(3, 5, dtype=torch.long)}, "classes: expected integer ids"),
        ({"classes": torch.zeros(3, 4)}, "classes: expected integer ids"),
        ({"outputs": torch.zeros(2, 6)}, "outputs: expected \\[B, C\\] with B=3"),
        ({"delta": torch.zeros(3)}, "delta: expected shape \\[3, 4\\]"),
        ({"method": 3}, "method: expected a str"),
        ({"params": {"f": print}}, "params: must be JSON-serialisable"),
    ],
)
def test_bad_fields(change, match):
    a = make()
    fields = {f.name: getattr(a, f.name) for f in dataclasses.fields(a)}
    fields.update(change)
    with pytest.raises((TypeError, ValueError), match=match):
        Attribution(**fields)


def test_select_and_contrast():
    a = make()
    assert torch.equal(a.select(2), a.values[:, 2])
    assert torch.equal(a.select(torch.tensor(1)), a.values[:, 1])
    assert torch.equal(a.contrast(3, 0), a.values[:, 3] - a.values[:, 0])


def test_select_per_sample_rows():
    classes = torch.tensor([[2, 0], [0, 2], [2, 1]])
    a = make(k=2, classes=classes)
    picked = a.select(2)
    assert torch.equal(picked[0], a.values[0, 0])
    assert torch.equal(picked[1], a.values[1, 1])
    assert torch.equal(picked[2], a.values[2, 0])
    with pytest.raises(ValueError, match=r"class 0 was not computed for samples \[2\]"):
        a.select(0)
    with pytest.raises(ValueError, match="class 1 was not computed for samples \\[0, 1\\]"):
        a.contrast(2, 1)


def test_select_errors():
    a = make(k=2, classes=torch.tensor([[1, 1]] * 3))
    with pytest.raises(ValueError, match="class 1 has several rows"):
        a.select(1)
    with pytest.raises(TypeError, match=r"class_id: expected an int, got 1\.0"):
        a.select(1.0)
    with pytest.raises(TypeError, match="class_id: expected an int, got True"):
        a.select(True)


def test_numpy():
    a = make()
    arr = a.numpy()
    assert isinstance(arr, np.ndarray) and arr.shape == (3, 4, 2, 5)
    np.testing.assert_array_equal(arr, a.values.numpy())
    half = make(dtype=torch.bfloat16).numpy()
    assert half.dtype == np.float32 and half.shape == (3, 4, 2, 5)


@pytest.mark.parametrize("with_delta", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_save_load_round_trip(tmp_path, with_delta, dtype):
    a = make(delta=with_delta, classes=torch.tensor([[3, 1, 0, 2]] * 3), dtype=dtype)
    path = tmp_path / "a.safetensors"
    a.save(path)
    b = Attribution.load(path)
    for name in ("values", "classes", "outputs"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert (b.delta is None) == (not with_delta)
    if with_delta:
        assert torch.equal(a.delta, b.delta)
    assert b.method == a.method and b.params == a.params
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temporary file left behind


def test_save_real_result_and_overwrite(tmp_path):
    model = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    a = saliency.gradients(model, x, saliency.top_k(2), times_input=True)
    path = str(tmp_path / "grads.safetensors")
    saliency.gradients(model, x).save(path)
    a.save(path)  # replaces the previous file
    b = Attribution.load(path)
    assert torch.equal(a.values, b.values) and b.delta is None
    assert torch.equal(a.classes, b.classes)
    assert b.params == a.params and b.params["classes"] == {"top_k": 2}


def test_load_refuses_other_files(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="is not a saved Attribution"):
        Attribution.load(path)


def _crafted(a: Attribution) -> dict[str, bytes]:
    """Files an attacker or a half-finished copy could hand to load(), by the error expected."""
    from safetensors.torch import save

    tensors = {"values": a.values, "classes": a.classes, "outputs": a.outputs}
    meta = {"format": "saliency.Attribution", "version": "1", "method": "m", "params": "{}"}
    return {
        "values missing": save({"classes": a.classes, "outputs": a.outputs}, metadata=meta),
        "method, params missing": save(
            tensors, metadata={"format": meta["format"], "version": "1"}
        ),
        "params are not JSON": save(tensors, metadata={**meta, "params": "{oops"}),
        "params are a JSON list": save(tensors, metadata={**meta, "params": "[1]"}),
        "classes: expected": save({**tensors, "classes": a.classes[:1]}, metadata=meta),
        "SafetensorError.*incomplete": save(tensors, metadata=meta)[:-10],  # cut short
        "SafetensorError.*too large": (10**15).to_bytes(8, "little") + b"{}",  # huge header
        "SafetensorError.*too small": b"",
        "format version '0'": save(tensors, metadata={**meta, "version": "0"}),
    }


@pytest.mark.parametrize("case", list(_crafted(make(delta=False))))
def test_load_of_a_crafted_file_names_the_file_and_what_is_wrong(tmp_path, case):
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(_crafted(make(delta=False))[case])
    with pytest.raises(ValueError, match=case) as info:
        Attribution.load(path)
    message = str(info.value)
    assert message.startswith(f"path: {str(path)!r} cannot be read as a saved Attribution")


def test_load_of_a_newer_format_says_to_upgrade_and_save_names_a_missing_folder(tmp_path):
    from safetensors.torch import save

    a = make(delta=False)
    meta = {"format": "saliency.Attribution", "version": "2", "method": "m", "params": "{}"}
    tensors = {"values": a.values, "classes": a.classes, "outputs": a.outputs}
    path = tmp_path / "new.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    with pytest.raises(ValueError, match=r"newer saliency .* upgrade"):
        Attribution.load(path)
    with pytest.raises(FileNotFoundError, match=r"path: 'gone\.safetensors' is not a file"):
        Attribution.load("gone.safetensors")
    target = tmp_path / "missing" / "a.safetensors"
    with pytest.raises(FileNotFoundError, match=r"folder .*missing' of .* not exist") as info:
        a.save(target)
    assert ".tmp" not in str(info.value)  # the hidden temporary name was all it said
    assert not (tmp_path / "missing").exists()


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import saliency.attribution as module

    a = make()
    a.save(tmp_path / "a.safetensors")
    before = (tmp_path / "a.safetensors").read_bytes()

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):  # part of the bytes land, then the disk is full
            self.f.write(data[:10])
            raise OSError("disk full")

    real_atomic = module.atomic_write

    @contextlib.contextmanager
    def atomic_then_full(path, mode="wb"):
        with real_atomic(path, mode) as f:
            yield Full(f)

    monkeypatch.setattr(module, "atomic_write", atomic_then_full)
    with pytest.raises(OSError, match="disk full"):
        make(k=1).save(tmp_path / "a.safetensors")
    assert os.listdir(tmp_path) == ["a.safetensors"]
    assert (tmp_path / "a.safetensors").read_bytes() == before


def test_repr_is_a_summary():
    a = make()
    text = repr(a)
    assert text.startswith("Attribution(method='integrated_gradients', values=[3, 4, 2, 5] float64")
    assert "classes=[0, 1, 2, 3] for every sample" in text
    assert "outputs=[3, 6]" in text and "max |delta|" in text and "steps=7" in text
    assert "tensor(" not in text
    b = make(k=2, classes=torch.tensor([[2, 0], [0, 2], [2, 1]]), delta=False)
    assert "per sample ([3, 2]), first [2, 0]" in repr(b) and "delta=None" in repr(b)


def test_metadata_is_readable_json(tmp_path):
    from safetensors import safe_open

    a = make()
    a.save(tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["method"] == "integrated_gradients"
    assert json.loads(meta["params"])["steps"] == 7


def test_selecting_samples_keeps_rows_and_per_sample_params_aligned():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(5, 3)
    a = saliency.integrated_gradients(model, x, steps="auto")
    for index in (3, torch.tensor(3), np.int64(3), -2):
        one = a[index]
        b = int(index) % 5
        assert one.values.shape == (1, *a.values.shape[1:])
        torch.testing.assert_close(one.values[0], a.values[b])
        assert one.params["steps_used"] == [a.params["steps_used"][b]]
    picked = a[torch.tensor([True, False, True, False, True])]
    assert picked.params["steps_used"] == [a.params["steps_used"][i] for i in (0, 2, 4)]
    torch.testing.assert_close(picked.delta, a.delta[[0, 2, 4]])
    with pytest.raises(TypeError, match="samples"):
        a[True]


# -- the targets: class ids and the classes contrasts subtract ----------------------------------


def _conv():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(3 * 16, 4),
    )  # fmt: skip


@pytest.mark.parametrize(
    "method",
    [
        saliency.gradients,
        functools.partial(saliency.smoothgrad, n_samples=3, seed=0),
        functools.partial(saliency.integrated_gradients, steps=4),
        functools.partial(saliency.gradcam, layer="1"),
        "captum",
    ],
    ids=["gradients", "smoothgrad", "ig", "gradcam", "captum"],
)
def test_every_method_records_what_its_contrasts_subtract(method):
    if method == "captum":
        from captum.attr import Saliency

        method = functools.partial(saliency.from_captum, Saliency)
    model, x = _conv(), torch.randn(3, 1, 4, 4)
    plain = method(model, x, [1, 3])
    assert plain.negatives.tolist() == [[-1, -1]] * 3 and not plain.contrasted
    pairs = method(model, x, saliency.contrast([1, 3], [0, 2]))
    assert pairs.classes.tolist() == [[1, 3]] * 3
    assert pairs.negatives.tolist() == [[0, 2]] * 3 and pairs.contrasted
    assert pairs[[2, 0]].negatives.tolist() == [[0, 2]] * 2


def test_negatives_are_saved_and_files_without_them_still_load(tmp_path):
    model, x = _conv(), torch.randn(2, 1, 4, 4)
    a = saliency.gradients(model, x, saliency.contrast([1, 3], [0, 2]))
    a.save(tmp_path / "a.safetensors")
    assert torch.equal(Attribution.load(tmp_path / "a.safetensors").negatives, a.negatives)

    # A file written before negatives were stored: contrasts were described in params only.
    for name, params, want in [
        ("old_contrast", a.params, [[0, 2]] * 2),
        ("old_plain", {"classes": [1, 3]}, [[-1, -1]] * 2),
    ]:
        tensors = {"values": a.values, "classes": a.classes, "outputs": a.outputs}
        meta = {"format": "saliency.Attribution", "version": "1", "method": "gradients",
                "params": json.dumps(params)}  # fmt: skip
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=meta)
        old = Attribution.load(tmp_path / f"{name}.safetensors")
        assert old.negatives.tolist() == want


@pytest.mark.parametrize(
    ("negatives", "match"),
    [
        (torch.zeros(3, 5, dtype=torch.long), r"negatives: expected integer ids of shape \[3, 4\]"),
        (torch.zeros(3, 4), "negatives: expected integer ids"),
        (torch.full((3, 4), 6), "subtracts class 6 from class 0; expected -1 or another of the 6"),
        (torch.arange(4).expand(3, 4), "row 0 of sample 0 subtracts class 0 from class 0"),
    ],
)
def test_bad_negatives_are_named(negatives, match):
    a = make(delta=False)
    with pytest.raises(ValueError, match=match):
        Attribution(a.values, a.classes, a.outputs, a.method, a.params, negatives=negatives)


def test_metrics_track_the_difference_a_contrast_row_explains_from_the_field():
    # The metrics read Attribution.negatives, not the params: a contrast whose params say
    # nothing is still tracked as out[a] - out[b] (the curve's first point is the score at x).
    model, x = _conv(), torch.randn(3, 1, 4, 4)
    a = saliency.gradients(model, x, saliency.contrast([1, 3], [0, 2]))
    bare = Attribution(a.values, a.classes, a.outputs, a.method, {}, negatives=a.negatives)
    out = model(x).detach()
    want = torch.stack([out[:, 1] - out[:, 0], out[:, 3] - out[:, 2]], 1)
    for given in (a, bare):
        curves = saliency.audit.deletion(model, x, given, steps=4, random_order=False)
        torch.testing.assert_close(curves.curves[..., 0], want)
        score = saliency.audit.infidelity(model, x, given, n_perturb=2, seed=0)
        assert score.infidelity.shape == (3, 2)
    plain = saliency.audit.deletion(model, x, saliency.gradients(model, x, [1, 3]), steps=4)
    torch.testing.assert_close(plain.curves[..., 0], out[:, [1, 3]])
