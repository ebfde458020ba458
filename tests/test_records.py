"""Method and metric records: one door each, read by the namespace, audit.run, the fit checks,
the command and the report."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saliency
import saliency.audit
from saliency import Attribution, models
from saliency.audit import records as metric_records
from saliency.audit.datasets import methods as method_specs
from saliency.methods import records as method_records
from saliency.methods.records import MethodRecord, Option

DOCS = Path(__file__).resolve().parent.parent / "docs"
FAST = {"strategy": "loop", "report": False}


@pytest.fixture(scope="module")
def digits():
    model, _ = models.load("digits")
    x, y = models.held_out("digits", 12)
    return model, x, y


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# -- the records as declared are the records as imported -------------------------------------


def test_declared_method_records_are_the_imported_ones():
    declared, imported = method_records.declared(), method_records.methods()
    assert [r.name for r in declared] == [r.name for r in imported]
    fields = ("aliases", "summary", "doc", "options", "provides", "loses", "engine", "seed")
    for light, real in zip(declared, imported, strict=True):
        for name in (*fields, "needs_layer"):
            assert getattr(light, name) == getattr(real, name), (real.name, name)
        assert light.function == real.function.__name__


def test_declared_metric_records_are_the_imported_ones():
    declared, imported = metric_records.declared(), metric_records.metrics()
    assert [r.name for r in declared] == [r.name for r in imported]
    fields = ("explanation", "doc", "columns", "random", "needs", "rows", "inputs")
    for light, real in zip(declared, imported, strict=True):
        for name in (*fields, "not_in_runs"):
            assert getattr(light, name) == getattr(real, name), (real.name, name)


@pytest.mark.parametrize("record", method_records.methods(), ids=lambda r: r.name)
def test_each_method_is_named_as_in_python_and_has_its_page(record):
    assert record.function.__name__ == record.name
    assert getattr(saliency, record.name) is record.function
    assert getattr(saliency.methods, record.name) is record.function
    assert record.name in saliency.__all__
    assert (DOCS / record.doc).is_file()
    assert set(record.provides) <= set(method_records.PROVIDES)
    for lost in record.loses.values():
        assert set(lost) <= set(record.provides)


@pytest.mark.parametrize("record", metric_records.metrics(), ids=lambda r: r.name)
def test_each_metric_is_in_the_namespace_and_has_its_page(record):
    assert record.function.__name__ == record.name
    assert getattr(saliency.audit, record.name) is record.function
    assert getattr(saliency.audit, record.result.__name__) is record.result
    page, _, anchor = record.doc.partition("#")
    assert (DOCS / page).is_file()
    if anchor:  # the heading exists on the page (mkdocs' anchors: lower case, dashes)
        headings = [line.lstrip("#").strip() for line in (DOCS / page).read_text().splitlines()]
        assert anchor in [h.lower().replace(" ", "-") for h in headings if h]
    assert set(record.needs) <= set(method_records.PROVIDES)


def test_importing_saliency_imports_no_torch_until_a_name_is_used():
    code = (
        "import sys, saliency, saliency.methods.records, saliency.audit.records\n"
        "from saliency.audit import records\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert records.names(light=True) and saliency.methods.records.names(light=True)\n"
        "assert 'torch' not in sys.modules, 'torch imported by the declared records'\n"
        "print(saliency.gradients.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "saliency.methods._gradients"


def test_unknown_names_say_so_with_the_nearest():
    with pytest.raises(AttributeError, match="no attribute 'gradient'"):
        saliency.gradient  # noqa: B018
    with pytest.raises(ValueError, match="unknown method 'smothgrad'; did you mean 'smoothgrad'"):
        method_records.method("smothgrad")
    with pytest.raises(ValueError, match="unknown metric 'deleton'; did you mean 'deletion'"):
        metric_records.metric("deleton")


# -- audit.run -----------------------------------------------------------------------------------


def test_every_name_audit_run_offers_runs(digits, tmp_path):
    model, x, y = digits
    names = method_specs.names()
    assert {"gradients", "smoothgrad", "integrated_gradients", "ig"} <= set(names)
    for name in names:
        run = saliency.audit.run(
            model, (x[:4], y[:4]), out_dir=tmp_path / name, methods=name, metrics=["norms"],
            classes=[0, 3], **FAST,
        )  # fmt: skip
        assert name in run.summary["methods"]


def test_a_method_that_needs_a_layer_is_refused_by_name_saying_how(digits, tmp_path):
    model, x, y = digits
    assert "gradcam" not in method_specs.names()
    with pytest.raises(ValueError, match=r"'gradcam' needs the layer .*functools.partial"):
        saliency.audit.run(model, (x, y), out_dir=tmp_path, methods="gradcam", **FAST)
    assert not tmp_path.joinpath("shards").exists()


def test_gradcam_in_a_run_gets_the_pinned_strategy_and_the_same_bytes(
    digits, tmp_path, monkeypatch
):
    model, x, y = digits
    cam = functools.partial(saliency.gradcam, layer="features.3")
    methods = {"cam": cam, "g": saliency.gradients}
    args = dict(methods=methods, metrics=["norms", "class_sensitivity"], batch_size=6)
    first = saliency.audit.run(model, (x, y), out_dir=tmp_path / "a", report=False, **args)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["strategy"] == {"cam": "loop", "g": "loop"}
    assert manifest["config"]["strategy"] == "auto"
    saliency.audit.run(model, (x, y), out_dir=tmp_path / "b", report=False, **args)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert "cam" in first.summary["methods"]

    # and the strategy really reaches the calls
    seen, original = [], method_specs.call

    def watch(spec, *a, **kw):
        seen.append((spec.name, kw["strategy"]))
        return original(spec, *a, **kw)

    monkeypatch.setattr(method_specs, "call", watch)
    saliency.audit.run(model, (x, y), out_dir=tmp_path / "c", report=False, **args)
    assert sorted(set(seen)) == [("cam", "loop"), ("g", "loop")]


@pytest.mark.parametrize(
    "methods, metric, match",
    [
        (
            {"cam": functools.partial(saliency.gradcam, layer="features.3")},
            "deletion",
            r"'deletion' cannot measure method 'cam' \(gradcam\): it needs maps of the input's "
            r"own shape.*methods that do: .*gradients",
        ),
        (
            {"g": functools.partial(saliency.gradients, layer="features.0")},
            "deletion",
            r"gradients with layer does not give",
        ),
        (
            {"g": functools.partial(saliency.gradients, abs=True)},
            "margins",
            r"needs plain input gradients .* gradients with abs does not give",
        ),
        ({"ig": saliency.integrated_gradients}, "margins", r"methods that do: gradients\)"),
    ],
)
def test_the_fit_checks_read_the_records(digits, tmp_path, methods, metric, match):
    model, x, y = digits
    with pytest.raises(ValueError, match=match):
        saliency.audit.run(model, (x, y), out_dir=tmp_path, methods=methods, metrics=[metric],
                           **FAST)  # fmt: skip


# -- a toy method and a toy metric, through their records alone --------------------------------


def toy_method(model, x, classes=None, *, scale=2.0, output="logits", max_memory=None, **kw):
    """Gradients times a scale: a method defined outside the package."""
    a = saliency.gradients(model, x, classes, output=output, max_memory=max_memory, **kw)
    params = {**a.params, "scale": scale}
    return Attribution(a.values * scale, a.classes, a.outputs, "toy_method", params)


def toy_metric(attribution):
    """The largest absolute value of each row."""
    return {"peak": attribution.values.detach().flatten(2).abs().amax(-1)}


TOY_METHOD = MethodRecord(
    name="toy_method",
    function=toy_method,
    summary="gradients times a scale (a test's method)",
    doc="methods/gradients.md",
    options=(Option(name="scale", type=float, default=2.0, help="the factor (toy)"),),
    engine=False,
)
TOY_METRIC = metric_records.MetricRecord(
    name="toy_metric",
    function=toy_metric,
    explanation="the largest absolute value of each map (a test's metric)",
    doc="audit/runs.md",
    columns={"peak": "higher"},
)


@pytest.fixture
def toys():
    with method_records.registered(TOY_METHOD), metric_records.registered(TOY_METRIC):
        yield
    assert method_records.find("toy_method") is None


def test_a_registered_method_and_metric_reach_the_namespace_command_run_and_report(
    digits, tmp_path, capsys, toys
):
    from saliency.cli import main

    # the namespace
    assert saliency.toy_method is toy_method and saliency.methods.toy_method is toy_method
    assert saliency.audit.toy_metric is toy_metric
    assert "toy_method" in method_specs.names()

    # the command's help, and the command itself with the method's own option
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    text = capsys.readouterr().out
    assert "toy_method" in text and "--scale" in text and "(a test's metric)" in text
    model, x, y = digits
    data = tmp_path / "digits.pt"
    _, info = models.load("digits")
    torch.save({"x": x * info.std[0] + info.mean[0], "y": y}, data)  # raw pixels, as files hold
    args = ["audit", "digits", str(data), "--out", str(tmp_path / "cli"), "--no-progress",
            "--method", "toy_method", "--scale", "3", "--metrics", "toy_metric"]  # fmt: skip
    assert main(args) == 0
    assert "toy_method toy_metric.peak: mean" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    peak = summary["methods"]["toy_method"]["columns"]["toy_metric.peak"]
    grads = saliency.gradients(model, x).values.flatten(2).abs().amax(-1)
    assert peak["all"]["max"] == pytest.approx(3 * float(grads.max()), rel=1e-5)
    assert "toy_metric.peak" in (tmp_path / "cli" / "report.html").read_text()

    # audit.run by name, beside a method of the package, and the report
    run = saliency.audit.run(
        model, (x, y), out_dir=tmp_path / "run", methods=["toy_method", "gradients"],
        metrics=["toy_metric", "deletion"], batch_size=6, strategy="loop",
    )  # fmt: skip
    columns = run.summary["methods"]["toy_method"]["columns"]
    assert columns["toy_metric.peak"]["better"] == "higher"
    # the metric measured what the method gave: twice the gradients' peak (scale's default)
    grads = run.summary["methods"]["gradients"]["columns"]["toy_metric.peak"]["all"]
    assert columns["toy_metric.peak"]["all"]["max"] == pytest.approx(2 * grads["max"], rel=1e-6)
    assert columns["deletion.auc"]["better"] == "lower"
    html = run.report.read_text()
    assert "toy_metric.peak" in html and "toy_method" in html


def test_unregistered_they_are_gone_from_the_command(capsys):
    from saliency.cli import main

    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    assert "toy_method" not in capsys.readouterr().out
    with pytest.raises(AttributeError):
        saliency.toy_method  # noqa: B018


def test_registering_refuses_taken_names_and_non_records():
    with pytest.raises(ValueError, match="'gradients' is taken"):
        method_records.register(
            MethodRecord(name="gradients", function=toy_method, summary="", doc="")
        )
    with pytest.raises(ValueError, match="'ig' is taken"):
        method_records.register(
            MethodRecord(name="mine", aliases=("ig",), function=toy_method, summary="", doc="")
        )
    with pytest.raises(TypeError, match="expected a MetricRecord"):
        metric_records.register(TOY_METHOD)
    with pytest.raises(ValueError, match="'sideways'"):
        metric_records.MetricRecord(
            name="m", function=toy_metric, explanation="", doc="", columns={"a": "sideways"}
        )


def test_a_metric_whose_result_lacks_a_declared_column_is_named(digits, tmp_path):
    model, x, y = digits
    broken = metric_records.MetricRecord(
        name="broken_metric", function=toy_metric, explanation="", doc="", columns={"top": None}
    )
    with metric_records.registered(broken), pytest.raises(ValueError, match="no field 'top'"):
        saliency.audit.run(model, (x, y), out_dir=tmp_path, metrics=["broken_metric"], **FAST)


def test_the_random_baseline_and_directions_for_the_report():
    road = metric_records.metric("road")
    assert road.better() == {"auc": "lower", "normalized_auc": "lower"}
    assert road.better({"order": "lerf"}) == {"auc": "higher", "normalized_auc": "higher"}
    for record in metric_records.metrics():
        assert record.explanation and "\n" not in record.explanation
        for column, baseline in record.random.items():
            assert record.columns[baseline] is None and record.columns[column] is not None


def test_a_runs_score_of_a_contrast_row_is_the_difference_it_explains(digits, tmp_path):
    model, x, y = digits
    run = saliency.audit.run(
        model, (x, y), out_dir=tmp_path, classes=saliency.contrast([3, 5], [8, 0]),
        metrics=["norms"], **FAST,
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "shards").joinpath(
        "000000.jsonl").read_text().splitlines()]  # fmt: skip
    out = model(x).detach()
    for row in rows:
        b, a = row["index"], row["class"]
        minus = {3: 8, 5: 0}[a]
        assert row["score"] == pytest.approx(float(out[b, a] - out[b, minus]), rel=1e-5)
    assert run.summary["explained"] == len(x)


def test_every_record_is_in_the_docs_a_reader_looks_at():
    # The code needs nothing but the record; the docs still list each method and metric, and
    # this says which page to extend when one is added.
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    api, cli, runs = ((DOCS / p).read_text() for p in ("api.md", "cli.md", "audit/runs.md"))
    for record in method_records.methods():
        assert record.doc in nav, f"mkdocs.yml: add {record.doc} to the nav"
        assert f"::: saliency.{record.name}" in api, f"docs/api.md: add saliency.{record.name}"
        row = next((line for line in cli.splitlines() if line.startswith(f"| `{record.name}`")),
                   None)  # fmt: skip
        assert row is not None, f"docs/cli.md: add {record.name} to the table of methods"
        for option in record.options:
            assert f"`{option.flag}`" in row, (
                f"docs/cli.md: {record.name}'s row lacks {option.flag}"
            )
    for record in metric_records.metrics():
        page = record.doc.partition("#")[0]
        assert page in nav, f"mkdocs.yml: add {page} to the nav"
        assert f"- {record.name}\n" in api, f"docs/api.md: add {record.name} to saliency.audit"
        if record.not_in_runs is None:
            assert f"`{record.name}`" in cli, f"docs/cli.md: add {record.name} to --metrics"
            assert f"`{record.name}`" in runs, f"docs/audit/runs.md: add {record.name}"
