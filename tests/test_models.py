"""Tests for the bundled models in ``saliency.models``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from saliency import models
from saliency.models import WEIGHTS_DIR, ModelInfo, available, held_out, load
from saliency.models.train import main, train_model

# The image and tabular models; the text model "sentiment" (test_models_text.py) and the language
# model "reverse" (test_generation_model.py) have their own tests.
NAMES = ["digits", "breast_cancer"]
HELD_OUT_SIZES = {"digits": 360, "breast_cancer": 114}


def test_available_lists_all_models() -> None:
    assert available() == [*NAMES, "sentiment", "reverse"]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_reach_stated_accuracy(name: str) -> None:
    model, info = load(name)
    x, y = held_out(name)
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).double().mean().item()
    assert accuracy >= 0.95
    assert info.held_out_accuracy == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_load_returns_fresh_model_in_eval_mode(name: str) -> None:
    first, _ = load(name)
    assert not any(m.training for m in first.modules())
    original = {k: v.clone() for k, v in first.state_dict().items()}
    with torch.no_grad():
        for p in first.parameters():
            p.zero_()
    first.train()
    second, _ = load(name)
    assert not second.training
    for key, value in second.state_dict().items():
        assert torch.equal(value, original[key])


def test_model_info_contents() -> None:
    _, digits = load("digits")
    assert digits.name == "digits"
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.feature_names is None
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.mean) == len(digits.std) == 1

    _, cancer = load("breast_cancer")
    assert cancer.class_names == ["malignant", "benign"]
    assert cancer.feature_names is not None and len(cancer.feature_names) == 30
    assert cancer.feature_names[0] == "mean radius"
    assert cancer.input_shape == (30,)
    assert len(cancer.mean) == len(cancer.std) == 30
    assert all(s > 0 for s in cancer.std)


@pytest.mark.parametrize("name", NAMES)
def test_held_out_is_deterministic_and_well_formed(name: str) -> None:
    model, info = load(name)
    x, y = held_out(name)
    x2, y2 = held_out(name)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (HELD_OUT_SIZES[name], *info.input_shape)
    assert y.shape == (HELD_OUT_SIZES[name],)
    assert set(y.tolist()) == set(range(len(info.class_names)))
    assert model(x).shape == (len(y), len(info.class_names))

    x5, y5 = held_out(name, n=5)
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])


@pytest.mark.parametrize("n", [-1, 10_000, 2.5, True])
def test_held_out_rejects_bad_n(n: object) -> None:
    with pytest.raises(ValueError, match=r"^n must be"):
        held_out("breast_cancer", n=n)  # type: ignore[arg-type]


@pytest.mark.parametrize("function", [load, held_out])
def test_unknown_name_error_names_argument_value_and_choices(function: object) -> None:
    with pytest.raises(ValueError, match=r"^name must be one of") as excinfo:
        function("mnist")  # type: ignore[operator]
    message = str(excinfo.value)
    assert "'mnist'" in message
    assert all(name in message for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_weights_file_is_small_and_self_describing(name: str) -> None:
    path = WEIGHTS_DIR / models._REGISTRY[name].filename
    assert path.stat().st_size < 500_000
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    decoded = {key: json.loads(value) for key, value in metadata.items()}
    assert decoded["name"] == name
    assert decoded["architecture"] == models._REGISTRY[name].architecture.__name__
    assert ModelInfo.from_metadata(metadata) == load(name)[1]


@pytest.mark.parametrize("name", NAMES)
def test_retraining_is_reproducible(name: str, tmp_path, capsys) -> None:
    rng_before = torch.get_rng_state()
    path_a, info_a = train_model(name, out_dir=tmp_path / "a", epochs=2, seed=0)
    path_b, info_b = train_model(name, out_dir=tmp_path / "b", epochs=2, seed=0)
    path_c, _ = train_model(name, out_dir=tmp_path / "c", epochs=2, seed=1)

    # Library code paths must not print; nor may they disturb the caller's RNG.
    assert capsys.readouterr() == ("", "")
    assert torch.equal(torch.get_rng_state(), rng_before)

    # Compare tensors and decoded metadata, not bytes: safetensors does not keep
    # metadata key order stable between runs.
    a, b, c = load_file(str(path_a)), load_file(str(path_b)), load_file(str(path_c))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert info_a == info_b
    with safe_open(str(path_a), framework="pt") as fa, safe_open(str(path_b), framework="pt") as fb:
        assert fa.metadata() == fb.metadata()
    assert sorted(p.name for p in path_a.parent.iterdir()) == [path_a.name]


def test_train_script_writes_requested_model(tmp_path, capsys) -> None:
    main(["--out", str(tmp_path), "--epochs", "1", "--model", "breast_cancer"])
    assert "breast_cancer: held-out accuracy" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["breast_cancer_mlp.safetensors"]
