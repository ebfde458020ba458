"""The ``saliency`` command end to end, in temporary folders."""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import saliency
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
    assert all(float(g[2]) <= 1.0 for g in gaps), gaps  # adaptive IG: every row within 1 %
    assert "Every row is within 1% of F(x) - F(baseline)" in text
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
    record = json.loads((out / "inputs_000000.json").read_text())["inputs"]
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


def test_explain_resumes_and_refuses_other_settings_without_flag(tmp_path, monkeypatch, capsys):
    spec = _model_files(tmp_path, monkeypatch)["torchscript"]
    _images(tmp_path / "in", n=3)
    args = ["explain", *spec, str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    args += ["--size", "16", "16", "--classes", "0", "--batch-size", "2"]
    assert main(args) == 0
    target = tmp_path / "out" / "0_0.png"
    before = target.stat().st_mtime_ns
    capsys.readouterr()
    # the same command again: every batch is complete, nothing is written
    assert main(args) == 0
    assert "(3 already done, kept)" in capsys.readouterr().out
    assert target.stat().st_mtime_ns == before
    # other settings: refused, naming the option that changed, in the command's words
    assert main([*args, "--method", "ig"]) == 2
    err = capsys.readouterr().err
    assert "--method: 'gradients' then, 'ig' now" in err and "--overwrite" in err
    assert "overwrite=True" not in err and target.stat().st_mtime_ns == before
    assert main([*args, "--method", "ig", "--overwrite"]) == 0
    assert target.stat().st_mtime_ns != before


def test_explain_refuses_files_it_did_not_write(tmp_path, capsys):
    x, _ = models.held_out("digits", n=1)
    np.save(tmp_path / "one.npy", (x.numpy() * 0.376 + 0.305).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "0_3.png").write_bytes(b"someone else's")
    args = ["explain", "digits", str(tmp_path / "one.npy"), "--out", str(out), "--classes", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out / '0_3.png'} exists; use --overwrite" in err and "overwrite=True" not in err
    assert (out / "0_3.png").read_bytes() == b"someone else's"


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


# -- inputs the model cannot take, options in messages, Ctrl-C, resume -----------------------------


def _raw_digits(n: int) -> np.ndarray:
    """Held-out digits as the command reads them: pixels in [0, 1], normalised by the command."""
    x, _ = models.held_out("digits", n=n)
    _, info = models.load("digits")
    return (x.numpy() * info.std[0] + info.mean[0]).astype(np.float32)


def test_explain_skips_a_nan_row_by_file_and_row_and_goes_on(tmp_path, capsys):
    rows = _raw_digits(5)
    rows[2, 0, 3, 3] = np.nan
    rows[0, 0, 0, 0] = np.inf  # the first input too: the first batch settles the classes
    np.save(tmp_path / "rows.npy", rows)
    out = tmp_path / "out"
    args = ["explain", "digits", str(tmp_path / "rows.npy"), "--out", str(out)]
    assert main([*args, "--classes", "1", "--batch-size", "4"]) == 1
    captured = capsys.readouterr()
    assert f"{tmp_path / 'rows.npy'}[2]: the input holds NaN or inf" in captured.err
    assert f"{tmp_path / 'rows.npy'}[0]: the input holds NaN or inf" in captured.err
    assert "Explained 3 input(s)" in captured.out
    assert len(list(out.glob("*_1.png"))) == 3
    inputs = [r["input"] for f in sorted(out.glob("inputs_*.json"))
              for r in json.loads(f.read_text())["inputs"]]  # fmt: skip
    assert [name.rsplit("[", 1)[1] for name in inputs] == ["1]", "3]", "4]"]


def test_explain_names_options_not_python_arguments(tmp_path, capsys):
    np.save(tmp_path / "rows.npy", _raw_digits(2))
    base = ["explain", "digits", str(tmp_path / "rows.npy"), "--out", str(tmp_path / "out")]
    assert main([*base, "--classes", "top20"]) == 2
    err = capsys.readouterr().err
    assert "--classes top20 asks for more classes than the model's 10 outputs" in err
    assert "top_k" not in err and "classes=" not in err
    assert main([*base, "--classes", "3,12"]) == 2
    assert "--classes 3,12: 12 out of range for the model's 10 outputs" in capsys.readouterr().err
    assert main([*base, "--max-memory", "lots"]) == 2
    assert "--max-memory: could not read 'lots'" in capsys.readouterr().err
    assert main([*base, "--max-memory", "10"]) == 2
    err = capsys.readouterr().err
    assert "--max-memory 10 B is too small" in err and "max_memory" not in err
    assert not (tmp_path / "out").exists()


def _interrupt_when(command: list[str], ready, timeout: float = 90.0):
    """Run the command in a subprocess, press Ctrl-C (SIGINT) once ``ready()``; its result.

    The child gets SIGINT's default disposition first: a shell starts background jobs with it
    ignored, and Python then installs no KeyboardInterrupt handler (a test run started with
    ``&`` would see the command finish instead of being interrupted).
    """
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"ended before Ctrl-C: {process.communicate()[1][-2000:]}")
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def test_explain_ctrl_c_says_what_was_saved_and_a_rerun_resumes(tmp_path):
    np.save(tmp_path / "rows.npy", _raw_digits(12))
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "saliency", "explain", "digits", str(tmp_path / "rows.npy"),
        "--out", str(out), "--method", "smoothgrad", "--n-samples", "150", "--batch-size", "4",
        "--classes", "2",
    ]  # fmt: skip
    code, _, err = _interrupt_when(command, lambda: (out / "inputs_000000.json").exists())
    assert code == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    saved = int(re.search(r"the outputs of (\d+) input\(s\) are saved", err).group(1))
    assert 4 <= saved < 12 and "run the same command again to resume" in err
    first = (out / "0_2.png").stat().st_mtime_ns
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"({saved} already done, kept)" in done.stdout
    assert (out / "0_2.png").stat().st_mtime_ns == first
    assert len(list(out.glob("*_2.png"))) == 12


# -- audit --------------------------------------------------------------------------------------


def _digits_file(path: Path, n: int, nan_row: int | None = None) -> Path:
    x = _raw_digits(n)
    if nan_row is not None:
        x[nan_row] = np.nan
    _, y = models.held_out("digits", n=n)
    save_file({"x": torch.from_numpy(x), "y": y}, path)
    return path


def test_audit_bundled_digits_for_a_newcomer(tmp_path, capsys):
    out = tmp_path / "audit"
    args = ["audit", "digits", "digits", "--out", str(out), "--metrics", "norms", "--no-progress"]
    assert main([*args, "--batch-size", "120"]) == 0
    text = capsys.readouterr().out
    assert "Audited 360 of 360 samples (accuracy 98.1%)" in text
    assert f"Report: {out / 'report.html'}" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 360 and sum(map(sum, summary["confusion"])) == 360
    assert main([*args, "--batch-size", "120"]) == 0  # resumed: nothing left to do
    assert "0 shard(s) computed here, 3 resumed" in capsys.readouterr().out
    assert main([*args, "--batch-size", "60"]) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "config.batch_size: 120 then, 60 now" in err
    assert "--overwrite" in err and "overwrite=True" not in err


def test_audit_tensor_file_skips_and_names_a_nan_sample(tmp_path, capsys):
    data = _digits_file(tmp_path / "digits.safetensors", 12, nan_row=5)
    out = tmp_path / "out"
    args = ["audit", "digits", str(data), "--out", str(out), "--metrics", "norms", "--no-report"]
    assert main([*args, "--batch-size", "8", "--no-progress", "--classes", "label"]) == 1
    captured = capsys.readouterr()
    assert f"{data}[5]: the input holds NaN or inf" in captured.err
    assert "Audited 11 of 12 samples" in captured.out
    rows = [json.loads(line) for f in sorted((out / "shards").glob("*.jsonl"))
            for line in f.read_text().splitlines()]  # fmt: skip
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert all(r["class"] == r["label"] for r in rows)


def test_audit_image_folder_labels_from_folder_names(tmp_path, capsys):
    x = _raw_digits(6)
    _, y = models.held_out("digits", n=6)
    for i, (image, label) in enumerate(zip(x, y.tolist(), strict=True)):
        folder = tmp_path / "data" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "data" / str(y[0].item()) / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = ["audit", "digits", str(tmp_path / "data"), "--out", str(out), "--metrics", "norms"]
    assert main([*args, "--no-progress", "--classes", "top2"]) == 1
    captured = capsys.readouterr()
    assert "labels: folder names = the model's classes" in captured.out
    assert "broken.png: " in captured.err and "not a readable image" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["explained"] == 6 and summary["accuracy"] == 1.0
    assert main(["audit", "digits", str(tmp_path / "data"), "--out", str(out / "x"),
                 "--classes", "top20"]) == 2  # fmt: skip
    assert "--classes top20 asks for more classes than the model's 10 outputs" in (
        capsys.readouterr().err
    )


def test_audit_ctrl_c_exits_130_and_the_same_command_resumes(tmp_path):
    data = _digits_file(tmp_path / "digits.safetensors", 20)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "saliency", "audit", "digits", str(data), "--out", str(out),
        "--method", "smoothgrad", "--n-samples", "100", "--batch-size", "4", "--metrics",
        "norms", "--no-report", "--no-progress",
    ]  # fmt: skip

    def some_shards() -> bool:
        return len(list((out / "shards").glob("*.done.json"))) >= 1 if out.exists() else False

    code, _, err = _interrupt_when(command, some_shards)
    assert code == 130 and "Traceback" not in err
    assert re.search(r"interrupted; \d+ of 5 shards are saved in .*: run the same command", err)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = int(re.search(r"computed here, (\d+) resumed", done.stdout).group(1))
    assert resumed >= 1


def test_audit_pt_file_is_read_without_running_code(tmp_path, capsys):
    x, y = torch.from_numpy(_raw_digits(6)), models.held_out("digits", n=6)[1]
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    out = tmp_path / "out"
    args = ["audit", "digits", str(tmp_path / "data.pt"), "--out", str(out), "--metrics", "norms"]
    assert main([*args, "--no-report", "--no-progress"]) == 0
    assert "(accuracy 100.0%)" in capsys.readouterr().out

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": x, "y": Evil()}, tmp_path / "evil.pt")
    args[2] = str(tmp_path / "evil.pt")
    assert main([*args, "--out", str(tmp_path / "o2")]) == 2
    assert "weights_only=True" in capsys.readouterr().err and not marker.exists()


def test_a_text_model_is_pointed_at_the_python_api(tmp_path, capsys):
    assert main(["explain", "sentiment", str(tmp_path / "none.png"), "--out", str(tmp_path)]) == 2
    assert "text model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain", "audit"])
def test_a_language_model_is_pointed_at_explain_generation(tmp_path, capsys, command):
    inputs = "reverse" if command == "audit" else str(tmp_path / "none.png")
    assert main([command, "reverse", inputs, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "MODEL: 'reverse' is a language model" in err and "explain_generation" in err
    assert not (tmp_path / "out").exists()  # refused before anything is written


# -- audit: regressions ---------------------------------------------------------------------------


def _digit_folders(root: Path, n: int, names: dict[int, str] | None = None) -> list[int]:
    """Held-out digits as PNGs in one folder per label (named by ``names``); the labels."""
    x = _raw_digits(n)
    _, y = models.held_out("digits", n=n)
    for i, (image, label) in enumerate(zip(x, y.tolist(), strict=True)):
        folder = root / (names or {}).get(label, str(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    return y.tolist()


def test_audit_folder_labels_ignore_empty_folders_and_refuse_half_matches(tmp_path, capsys):
    data = tmp_path / "data"
    labels = _digit_folders(data, 6)
    (data / "empty").mkdir()  # sorts after the digits: it must not renumber them
    out = tmp_path / "out"
    args = ["--metrics", "norms", "--no-progress", "--no-report"]
    assert main(["audit", "digits", str(data), "--out", str(out), *args]) == 0
    captured = capsys.readouterr()
    assert "labels: folder names = the model's classes; folders without images left out: " in (
        captured.out
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == 1.0
    rows = [json.loads(line) for line in (out / "shards" / "000000.jsonl").read_text().splitlines()]
    assert sorted({r["label"] for r in rows}) == sorted(set(labels))

    # a folder with images that is not one of the model's classes, beside ones that are
    stray = tmp_path / "stray"
    _digit_folders(stray, 6, names={labels[0]: "cats"})
    assert main(["audit", "digits", str(stray), "--out", str(tmp_path / "o2"), *args]) == 2
    err = capsys.readouterr().err
    assert "['cats'] are not" in err and "the model's class names" in err
    assert not (tmp_path / "o2").exists()

    from saliency.audit.datasets.files import open_data

    with pytest.raises(ValueError, match=r"folders \[.*\] are class ids but \['cats'\] are not"):
        open_data(stray)  # no class names: numbers beside a name
    names = {label: f"class-{label}" for label in labels}
    named = tmp_path / "named"
    _digit_folders(named, 6, names=names)
    (named / "zzz-empty").mkdir()
    opened = open_data(named)
    assert opened.labels_from.startswith("folders in sorted order")
    assert opened.class_names == sorted(names.values())  # the empty folder is no class


def test_audit_mean_for_other_channels_is_refused_not_hidden(tmp_path, capsys):
    data = tmp_path / "data"
    _digit_folders(data, 4)
    out = tmp_path / "out"
    code = main(
        ["audit", "digits", str(data), "--out", str(out), "--mean", "0.5", "0.5", "0.5",
         "--no-progress"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "--mean: 3 values for the images in" in err and "1 channels" in err
    assert "can be explained" not in err and not out.exists()


def test_audit_metrics_and_classes_that_do_not_fit_are_refused_at_the_door(tmp_path, capsys):
    data = _digits_file(tmp_path / "digits.safetensors", 8)
    base = ["audit", "digits", str(data), "--no-progress", "--no-report"]

    # one class per sample: the default metrics leave class_sensitivity out
    assert main([*base, "--out", str(tmp_path / "label"), "--classes", "label"]) == 0
    columns = json.loads((tmp_path / "label" / "summary.json").read_text())["methods"]
    assert "deletion.auc" in columns["gradients"]["columns"]
    assert not any("class_sensitivity" in c for c in columns["gradients"]["columns"])
    capsys.readouterr()

    # asked for explicitly, it is refused in the command's words, before anything is written
    out = tmp_path / "x"
    refused = [
        (["--classes", "label", "--metrics", "class_sensitivity"], "--classes label gives 1"),
        (["--classes", "1,5", "--metrics", "margins"], "needs all 10 classes of the model "
         "(--classes all), but --classes 1,5 gives 2"),
        (["--metrics", "completeness"], "'completeness' fits none of --method gradients: it "
         "needs the completeness gap"),
        (["--classes", "top0"], "--classes: topN needs N >= 1"),
    ]  # fmt: skip
    for extra, message in refused:
        assert main([*base, "--out", str(out), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err, err
        assert "classes=" not in err and "top_k" not in err and "saliency." not in err
        assert not out.exists()

    # a metric that fits one of the methods is measured for that one
    both = ["--method", "gradients", "ig", "--steps", "4", "--metrics", "completeness"]
    assert main([*base, "--out", str(tmp_path / "ig"), *both]) == 0
    assert "completeness: measured for ig only" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ig" / "summary.json").read_text())["methods"]
    assert "completeness.gap" in summary["ig"]["columns"]
    assert not any("completeness" in c for c in summary["gradients"]["columns"])

    # road needs images: refused before any shard, progress bar or file
    road = ["audit", "breast_cancer", "breast_cancer", "--out", str(out), "--metrics", "road"]
    assert main(road) == 2
    err = capsys.readouterr().err
    assert "--metrics: 'road' needs images [C, H, W]" in err and "sample/s" not in err
    assert not out.exists()


def test_parse_classes_refuses_top0():
    with pytest.raises(ValueError, match=r"--classes: topN needs N >= 1 .* got 'top0'"):
        parse_classes("top0")


# -- help, names and errors in the user's words ------------------------------------------------


@pytest.mark.parametrize("command", [[], ["explain"], ["audit"], ["demo"]])
def test_help_imports_no_torch_and_lists_what_the_records_hold(command):
    # Timing-free: what --help imports, not how long it takes.
    code = (
        "import sys\n"
        "from saliency.cli import main\n"
        f"try:\n    main({[*command, '--help']!r})\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'numpy', 'PIL') if m in sys.modules]\n"
        "print('IMPORTED', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text, imported = done.stdout.rsplit("IMPORTED", 1)
    assert imported.strip() == "[]"
    if command != ["demo"]:
        for model in models.available():  # sentiment included
            assert model in text
    if command in (["explain"], ["audit"]):
        from saliency.methods import records

        for record in records.methods():
            assert record.name in text and record.summary.split()[0] in text
            for option in record.options:
                assert option.flag in text
    if command == ["audit"]:
        from saliency.audit import records

        for name in records.names(in_runs=True):
            assert name in text
        assert "randomization_test" not in text


def test_python_dash_m_help_imports_no_torch():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "saliency", "audit", "--help"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0 and "--metrics" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "saliency.cli.parser" in imported
    assert not {"torch", "matplotlib", "numpy"} & imported


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "digit", "a.png", "--out", "o"],
         "MODEL: 'digit' is neither a bundled model nor a file; did you mean 'digits'?"),
        (["explain", "model.pt", "a.png", "--out", "o"],
         "MODEL: 'model.pt' is neither a bundled model nor a file (bundled models: "),
        (["audit", "digits", "digit", "--out", "o"],
         "DATA: 'digit' is neither a bundled data set nor a file or folder; did you mean "
         "'digits'?"),
        (["explain", "digits", "a.png", "--method", "smothgrad", "--out", "o"],
         "--method: unknown method 'smothgrad'; did you mean 'smoothgrad'?"),
        (["audit", "digits", "digits", "--out", "o", "--method", "integrated_gradient"],
         "--method: unknown method 'integrated_gradient'; did you mean 'integrated_gradients'?"),
        (["audit", "digits", "digits", "--metrics", "deleton", "--out", "o"],
         "--metrics: unknown metric 'deleton'; did you mean 'deletion'?"),
        (["audit", "digits", "digits", "--metrics", "randomization_test", "--out", "o"],
         "--metrics: 'randomization_test' is not a per-sample metric"),
        (["explian", "digits"], "unknown command 'explian'; did you mean 'explain'?"),
        (["explain", "digits", "a.png", "--method", "gradcam", "--out", "o"],
         "--layer: gradcam needs the module whose output Grad-CAM weighs"),
        (["explain", "digits", "a.png", "--steps", "8", "--out", "o"],
         "--steps: only integrated_gradients takes it, not gradients"),
    ],
)  # fmt: skip
def test_misspelt_names_get_one_line_with_the_nearest(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with contextlib.suppress(SystemExit):  # argparse's own errors exit; ours return 2
        assert main(args) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "usage:" not in captured.err
    assert captured.out == "" and not (tmp_path / "o").exists()


def test_a_missing_model_file_is_named_in_the_users_words(tmp_path, capsys):
    # an existing file that is not a model: the library's words, with the command's names
    (tmp_path / "model.pt").write_bytes(b"not a model")
    assert main(["explain", str(tmp_path / "model.pt"), "a.png", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "MODEL: " in err and "spec" not in err


def test_method_names_and_aliases_are_those_of_python(tmp_path, capsys):
    np.save(tmp_path / "rows.npy", _raw_digits(2))
    base = ["explain", "digits", str(tmp_path / "rows.npy"), "--classes", "3", "--steps", "8",
            "--save-values"]  # fmt: skip
    for word in ("integrated_gradients", "ig"):
        assert main([*base, "--method", word, "--out", str(tmp_path / word)]) == 0
    capsys.readouterr()
    long, short = (saliency.Attribution.load(tmp_path / w / "values_000000.safetensors")
                   for w in ("integrated_gradients", "ig"))  # fmt: skip
    assert long.method == short.method == "integrated_gradients"
    assert torch.equal(long.values, short.values) and long.params["steps"] == 8


def test_gradcam_from_the_command_with_its_layer(tmp_path, capsys):
    np.save(tmp_path / "rows.npy", _raw_digits(2))
    args = ["explain", "digits", str(tmp_path / "rows.npy"), "--classes", "3", "--save-values",
            "--method", "gradcam", "--layer", "features.3",
            "--out", str(tmp_path / "cam")]  # fmt: skip
    assert main(args) == 0
    a = saliency.Attribution.load(tmp_path / "cam" / "values_000000.safetensors")
    model, _ = models.load("digits")
    x, _ = models.held_out("digits", n=2)  # what the command reads, normalised
    want = saliency.gradcam(model, x, [3], layer="features.3")
    torch.testing.assert_close(a.values, want.values)
    assert len(list((tmp_path / "cam").glob("*_3.png"))) == 2
    capsys.readouterr()
    bad = [*args[:-1], str(tmp_path / "bad")]
    bad[bad.index("features.3")] = "features.9"
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("saliency explain: error: --layer: the model has no module named")


def test_repeated_method_and_metric_flags_add_up(tmp_path):
    from saliency.cli.parser import build_parser

    args = build_parser("").parse_args(
        ["audit", "digits", "digits", "--out", str(tmp_path), "--metric", "deletion",
         "--metric", "class_sensitivity", "--method", "gradients", "--method", "ig"]
    )  # fmt: skip
    assert args.metrics == ["deletion", "class_sensitivity"]  # "--metric" abbreviates --metrics
    assert args.method == ["gradients", "ig"]
    plain = build_parser("").parse_args(["audit", "digits", "digits", "--out", str(tmp_path)])
    assert plain.metrics is None and plain.method is None  # the defaults are the command's
