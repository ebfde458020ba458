"""The ``saliency`` command end to end, in temporary folders."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from saliency import models
from saliency.cli import main, parse_classes


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--samples", "3"]) == 0
    text = capsys.readouterr().out
    for method in ("gradients", "smoothgrad", "ig"):
        files = sorted((out / method).glob("*.png"))
        assert len(files) == 3 * 10
        assert {f.name for f in files} >= {"0_0.png", "2_9.png"}
        assert _valid_png(files[0]) == (96, 96)
    assert _valid_png(out / "summary.png")[0] > 96 * 10
    gaps = re.findall(r"class (\d): max ([-+.e\d]+), max relative to .* ([.\d]+)%", text)
    assert len(gaps) == 10 and all(np.isfinite(float(g[1])) for g in gaps)
    # A second run refuses to overwrite, and says how to.
    assert main(["demo", "--out", str(out), "--samples", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_python_dash_m_help():
    result = subprocess.run(
        [sys.executable, "-m", "saliency", "explain", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for option in ("--method", "--classes", "--trust-pickle", "--size", "--overwrite", "example"):
        assert option in result.stdout


@pytest.mark.parametrize(
    "text, expected", [("all", None), ("top3", "TopK(k=3)"), ("4", [4]), ("1,5, 7", [1, 5, 7])]
)
def test_parse_classes(text, expected):
    got = parse_classes(text)
    assert (repr(got) if expected == "TopK(k=3)" else got) == expected


def test_parse_classes_rejects_garbage():
    with pytest.raises(ValueError, match="--classes"):
        parse_classes("many")


# -- explain on each model form ----------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def _images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _model_files(tmp_path: Path, monkeypatch) -> dict[str, list[str]]:
    torch.manual_seed(0)
    model = Tiny().eval()
    script = tmp_path / "tiny.ts"
    torch.jit.save(torch.jit.script(model), script)
    exported = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 16, 16),)), exported)
    weights = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), weights)
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Tiny(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(3, 4, 3, padding=1)
                    self.head = nn.Linear(4, 5)

                def forward(self, x):
                    return self.head(self.conv(x).relu().mean(dim=(2, 3)))

            def tiny():
                return Tiny()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return {
        "torchscript": [str(script)],
        "export-static-batch": [str(exported)],
        "factory": ["pkg.nets:tiny", "--weights", str(weights)],
    }


@pytest.mark.parametrize("form", ["torchscript", "export-static-batch", "factory"])
def test_explain_each_model_form(form, tmp_path, monkeypatch, capsys):
    spec = _model_files(tmp_path, monkeypatch)[form]
    inputs = _images(tmp_path / "in")
    out = tmp_path / "out"
    args = [
        "explain", spec[0], str(tmp_path / "in"), "--out", str(out), "--size", "16", "16",
        "--classes", "top2", "--method", "gradients", "--save-values", *spec[1:],
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(inputs) * 2
    assert all(_valid_png(p) == (96, 96) for p in pngs)  # small inputs are enlarged
    record = json.loads((out / "inputs_000000.json").read_text())
    assert [r["input"].endswith(f"img{i}.png") for i, r in enumerate(record)] == [True] * 3
    assert len(record[0]["classes"]) == 2
    assert (out / "values_000000.safetensors").exists()


def test_explain_tabular_bundled_model(tmp_path, capsys):
    x, _ = models.held_out("breast_cancer", n=2)
    _, info = models.load("breast_cancer")
    raw = x.numpy() * np.array(info.std) + np.array(info.mean)  # the command normalises
    np.save(tmp_path / "rows.npy", raw.astype(np.float32))
    out = tmp_path / "out"
    code = main(["explain", "breast_cancer", str(tmp_path / "rows.npy"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["0_features.png", "1_features.png"]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Evil()))
    _images(tmp_path / "in", n=1)
    code = main(["explain", str(path), str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "pickle" in err.lower()
    assert not marker.exists()


def test_corrupt_image_is_skipped_and_reported(tmp_path, monkeypatch, capsys):
    spec = _model_files(tmp_path, monkeypatch)["torchscript"]
    folder = tmp_path / "in"
    _images(folder, n=2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    code = main(["explain", *spec, str(folder), "--out", str(out), "--size", "16", "16"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.png" in captured.err
    assert len(list(out.glob("*.png"))) == 2 * 3  # the two good images, top3 classes each


def test_explain_does_not_overwrite_without_flag(tmp_path, monkeypatch, capsys):
    spec = _model_files(tmp_path, monkeypatch)["torchscript"]
    _images(tmp_path / "in", n=1)
    args = ["explain", *spec, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    args += ["--size", "16", "16", "--classes", "0"]
    assert main(args) == 0
    target = tmp_path / "out" / "0_0.png"
    before = target.stat().st_mtime_ns
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert target.stat().st_mtime_ns == before
    assert main([*args, "--overwrite"]) == 0


def test_explain_image_shaped_tensor_file(tmp_path, capsys):
    x, _ = models.held_out("digits", n=2)
    _, info = models.load("digits")
    raw = x.numpy() * info.std[0] + info.mean[0]
    np.save(tmp_path / "digits.npy", raw.astype(np.float32))
    out = tmp_path / "out"
    args = ["explain", "digits", str(tmp_path / "digits.npy"), "--out", str(out), "--classes", "1"]
    assert main(args) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["0_1.png", "1_1.png"]


def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    _images(tmp_path / "in", n=1)
    (tmp_path / "taken").write_text("")
    code = main(["explain", "digits", str(tmp_path / "in"), "--out", str(tmp_path / "taken")])
    assert code == 2 and "--out" in capsys.readouterr().err


def test_inputs_of_another_shape_are_skipped_and_model_errors_are_named(
    tmp_path, monkeypatch, capsys
):
    spec = _model_files(tmp_path, monkeypatch)["torchscript"]
    folder = tmp_path / "in"
    _images(folder, n=1)
    Image.new("L", (20, 24)).save(folder / "z_gray.png")
    out = tmp_path / "out"
    code = main(["explain", *spec, str(folder), "--out", str(out), "--size", "16", "16"])
    err = capsys.readouterr().err
    assert code == 1 and "z_gray.png" in err and "--channels" in err
    code = main(["explain", *spec, str(folder / "z_gray.png"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and "MODEL" in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()  # nothing left behind


def test_duplicate_class_ids_are_refused():
    with pytest.raises(ValueError, match="--classes"):
        parse_classes("1,1")
