"""The audit report: what it says, checked against the run's own rows (shards/*.jsonl), and what
a reader sees and does in a real headless Chromium (filters, sorting, every picture loaded)."""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import json
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import saliency.audit
from saliency import models, viz
from saliency.audit import records
from saliency.audit.datasets import report as report_module
from saliency.audit.datasets.report_pictures import Painter, kind_of
from saliency.audit.datasets.report_rows import spread


def _browser():
    path = Path(__file__).resolve().parent / "_browser.py"
    spec = importlib.util.spec_from_file_location("_browser", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_browser", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _need_browser():
    browser = _browser()
    if reason := browser.unavailable():
        pytest.skip(reason)
    return browser


_WRONG = {5: 0, 11: 2}  # samples given a wrong label, so that the report has mistakes to show


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model, info = models.load("digits")
    x, y = models.held_out("digits", 16)
    y = y.clone()
    for s, label in _WRONG.items():
        y[s] = label
    out = tmp_path_factory.mktemp("audit")
    saliency.audit.run(
        model, (x, y), out_dir=out, metrics=["deletion", "class_sensitivity"], batch_size=8,
        metric_options={"deletion": {"steps": 8}}, class_names=info.class_names,
        mean=info.mean, std=info.std, strategy="loop",
    )  # fmt: skip
    rows = [json.loads(line) for f in sorted(out.glob("shards/*.jsonl")) for line in f.open()]
    return out, x, y, info, rows


@pytest.fixture(scope="module")
def report(run) -> Path:
    return run[0] / "report.html"


def _table(text: str, cls: str) -> str:
    start = text.index(f"<table class='{cls}'>")
    return text[start : text.index("</table>", start)]


def _explorer_data(text: str) -> dict:
    found = re.search(r"<script type='application/json' class='rp-data'>(.*?)</script>", text)
    return json.loads(found.group(1))


def test_report_opens_offline_with_every_picture_loaded(report, tmp_path):
    browser = _need_browser()
    page = browser.evaluate(
        report,
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])",
        screenshot=tmp_path / "report.png",
        viewport=(1280, 900),
    )
    images = page.value
    # mean maps with their mean inputs, worst and best cards, and every sample in the explorer
    assert len(images) >= 2 * 16
    assert all(done and width > 0 and height > 0 for done, width, height in images)
    assert page.requests == [report.resolve().as_uri()]  # the page itself, nothing else
    assert not page.blocked and not page.failed
    assert not page.console_errors and not page.page_errors


def test_report_header_reads_as_words(run, report):
    text = report.read_text()
    assert 'http-equiv="Content-Security-Policy"' in text and "default-src 'none'" in text
    assert re.findall(r"<(?:link|script) [^>]*src=", text) == []
    assert re.findall(r" src=[\"'](?!data:)", text) == []  # every picture inlined
    header = text[text.index("<header>") : text.index("</header>")]
    for raw in ("null", "{'", "{&#x27;", "sha256:"):
        assert raw not in header
    summary = json.loads((report.parent / "summary.json").read_text())
    right = sum(summary["confusion"][i][i] for i in range(10))
    for said in (
        "DigitsCNN",
        "16 samples of shape 1\u00d78\u00d78 (float32), with labels",
        "16 of 16 samples (none skipped)",
        f"{summary['accuracy']:.1%} ({right} of 16 correct)",
        "gradients (engine strategy: loop)",
        "every class of the model (10)",
        "logits (the model&#x27;s raw outputs)",
        "gradients: deletion (steps=8), class_sensitivity",
    ):
        assert said in header, said


def test_each_metric_says_what_it_measures_and_how_it_compares_with_random(run, report):
    _, _, _, _, rows = run
    text = report.read_text()
    table = _table(text, "rp-metrics")
    for metric in ("deletion", "class_sensitivity"):
        info = report_module.metric_info(metric)
        assert info.measures.replace("'", "&#x27;") in table
        assert f"docs/{info.docs}" in table and records.metric(metric).doc == info.docs
    assert "lower is better" in table
    # the map against its random order, counted here from the run's own rows
    every = rows
    beaten = sum(r["deletion.auc"] < r["deletion.random_auc"] for r in every)
    predicted = [r for r in every if r["class"] == r["predicted"]]
    beaten_p = sum(r["deletion.auc"] < r["deletion.random_auc"] for r in predicted)
    assert f"<b>{beaten_p / len(predicted):.0%}</b> ({beaten_p} of {len(predicted)}" in table
    assert f"<b>{beaten / len(every):.0%}</b> ({beaten} of {len(every)}" in table


def test_worst_samples_spread_over_classes_and_are_each_class_worst(run, report):
    _, _, _, _, rows = run
    text = report.read_text()
    start = text.index("deletion.auc <small>")
    block = text[start : text.index("</details>", start)]
    worst = block[: block.index("most faithful")]
    cards = re.findall(r"data-sample='(\d+)'.*?class (\d): (-?[\d.e+-]+)</span>", worst)
    # Expected, from the run's JSON rows: each class's three highest rows, then worst first,
    # one per class (10 shown over 10 classes) and each sample once.
    by_class = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append((-r["deletion.auc"], r["index"], r["class"]))
    kept = sorted(item for c in by_class.values() for item in sorted(c)[:3])
    expected, classes, samples = [], set(), set()
    for value, sample, c in kept:
        if c not in classes and sample not in samples:
            expected.append((sample, c, -value))
            classes.add(c)
            samples.add(sample)
    assert [(int(s), int(c)) for s, c, _ in cards] == [(s, c) for s, c, _ in expected][:10]
    assert [float(v) for _, _, v in cards] == pytest.approx(
        [v for _, _, v in expected][:10], rel=1e-3
    )
    assert len({c for _, c, _ in cards}) == len(cards) >= 8  # spread: not all of one class


def test_mean_maps_have_headers_and_the_mean_input_under_each_map(run, report):
    out, x, _, info, _ = run
    text = report.read_text()
    table = _table(text, "rp-means")
    heads = re.findall(r"<th>([^<]*)</th>", table)
    assert heads[:11] == ["true \\ predicted", *info.class_names]
    summary = json.loads((out / "summary.json").read_text())
    cells = summary["methods"]["gradients"]["maps"]["cells"]
    found = re.findall(r"<td class='rp-cell' title='([^']*)'><img[^>]*><img class='rp-in' "
                       r"alt='mean input' src='data:image/png;base64,([^']*)'>", table)  # fmt: skip
    assert len(found) == len(cells)
    # a cell holding one mislabelled sample: its mean input is that sample's picture
    label, pred, _ = next(c for c in cells if c[0] == _WRONG[5] and c[2] == 1)
    title = f"true {label}, predicted {pred} (1)"
    data = dict(found)[title]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))
    expected = viz.input_pictures(x[5:6], mean=info.mean, std=info.std)[0, 0].numpy() * 255
    np.testing.assert_allclose(shown, expected, atol=1.0)


def test_explorer_filters_and_sorts_in_a_browser(run, report, tmp_path):
    browser = _need_browser()
    _, _, y, _, rows = run
    data = _explorer_data(report.read_text())
    column = [c["key"] for c in data["columns"]].index("deletion.normalized_auc")
    assert data["sort"] == column  # the first sort: a faithfulness metric, worst first
    script = """() => {
      const ex = document.querySelector('.rp-explorer');
      const set = (cls, v) => { const s = ex.querySelector(cls); s.value = v;
                                s.dispatchEvent(new Event('change')); };
      const cards = () => Array.from(ex.querySelectorAll('.rp-card'))
                               .map(c => Number(c.getAttribute('data-sample')));
      const out = {initial: cards(), count: ex.querySelector('.rp-count').textContent,
                   noscript: ex.querySelectorAll('.rp-noscript').length};
      set('.rp-f-true', '2'); out.true2 = cards();
      set('.rp-f-true', ''); set('.rp-f-correct', '0'); out.wrong = cards();
      set('.rp-f-correct', '1'); set('.rp-f-pred', '7'); out.right7 = cards();
      set('.rp-f-correct', ''); set('.rp-f-pred', '');
      set('.rp-sort', 'COLUMN'); set('.rp-order', 'best'); out.best = cards();
      out.values = Array.from(ex.querySelectorAll('.rp-card .rp-value')).map(v => v.textContent);
      set('.rp-sort', '-1'); out.byIndex = cards();
      return out;
    }""".replace("COLUMN", str(column))
    page = browser.evaluate(report, script, screenshot=tmp_path / "explorer.png")
    assert not page.console_errors and not page.page_errors
    seen = page.value
    assert seen["noscript"] == 0 and seen["count"] == "16 of 16 listed samples match."
    predicted = {r["index"]: r["predicted"] for r in rows}
    at_predicted = {
        r["index"]: r["deletion.normalized_auc"] for r in rows if r["class"] == r["predicted"]
    }
    worst_first = sorted(at_predicted, key=lambda s: (-at_predicted[s], s))
    assert seen["initial"] == worst_first
    assert seen["true2"] == [s for s in worst_first if int(y[s]) == 2]
    wrong = [s for s in worst_first if int(y[s]) != predicted[s]]
    assert sorted(seen["wrong"]) == sorted(wrong) and set(_WRONG) <= set(wrong)
    assert seen["right7"] == [s for s in worst_first if predicted[s] == 7 == int(y[s])]
    assert seen["best"] == worst_first[::-1] or seen["best"] == sorted(
        at_predicted, key=lambda s: (at_predicted[s], s)
    )
    assert [float(v) for v in seen["values"]] == pytest.approx(
        [at_predicted[s] for s in seen["best"]], rel=1e-3
    )
    assert seen["byIndex"] == list(range(16))


def test_report_escapes_class_names(run, tmp_path):
    out, x, y, info, _ = run
    out = Path(shutil.copytree(out, tmp_path / "run"))  # the other tests read the original
    model, _ = models.load("digits")
    hostile = [f"<img src=x onerror=alert({i})>" for i in range(10)]
    (out / "report.html").unlink()
    saliency.audit.run(
        model, (x, y), out_dir=out, metrics=["deletion", "class_sensitivity"], batch_size=8,
        metric_options={"deletion": {"steps": 8}}, class_names=hostile,
        mean=info.mean, std=info.std, strategy="loop",
    )  # fmt: skip
    text = (out / "report.html").read_text()
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(3)&gt;" in text
    data = _explorer_data(text)
    assert data["names"]["3"] == hostile[3]  # JSON, drawn with textContent by the page
    assert "\\u003cimg" in text


def test_spread_caps_each_class_and_shows_each_sample_once():
    rows = [(10.0 - i, i % 4, 0, 0) for i in range(8)]  # samples 0-3 twice, all class 0
    rows += [(1.0, 9, 1, 1), (0.5, 8, 2, 2)]
    picks = spread(rows, 4)
    assert [p[1] for p in picks] == [0, 1, 9, 8]  # at most ceil(4 / 3) = 2 of class 0
    assert spread([], 3) == []


def test_sequences_are_drawn_as_coloured_tokens_and_images_as_map_over_input():
    assert (
        kind_of([16], "torch.int64") == "sequence"
        and kind_of([3, 4, 4], "torch.float32") == "image"
    )
    words = {1: "good", 2: "<b>", 3: "film"}
    painter = Painter(
        "sequence", mean=None, std=None,
        tokens=lambda ids: [[words[int(t)] for t in row if int(t)] for row in ids],
    )  # fmt: skip
    html = painter.card_picture(
        torch.tensor([1, 2, 3, 0]), torch.tensor([[1.0], [-2.0], [0.0], [0.0]])
    )
    spans = re.findall(
        r'<span style="background:#([0-9a-f]{6});[^"]*" title="([^"]*)">([^<]*)</span>', html
    )
    assert [s[2] for s in spans] == ["good", "&lt;b&gt;", "film"]  # padding not drawn, escaped
    assert spans[1][0] == "0000ff" and spans[2][0] == "ffffff"  # most negative blue, zero white
    assert spans[0][1] == "good: 1"
    image = Painter("image", mean=None, std=None, tokens=None)
    html = image.card_picture(torch.rand(1, 8, 8), torch.randn(1, 8, 8))
    assert html.index("rp-map") < html.index("rp-in")  # the map, then the input under it


def test_metric_info_falls_back_for_metrics_without_a_record():
    info = report_module.metric_info("no_such_metric")
    assert info.name == "no_such_metric" and info.docs == ""
    assert report_module.metric_info("deletion").reference == ("auc", "random_auc")


def test_a_token_run_pictures_tokens_and_draws_no_mean_maps(tmp_path):
    model, info = models.load("sentiment")
    ids, labels = models.held_out("sentiment", 8)
    embedding = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
    method = functools.partial(saliency.gradients, layer=embedding)
    saliency.audit.run(
        model, (ids, labels), out_dir=tmp_path, methods={"embedding_gradients": method},
        metrics=["norms"], class_names=info.class_names, batch_size=4,
    )  # fmt: skip
    text = (tmp_path / "report.html").read_text()
    assert "None for token ids" in text and "rp-means" not in text.split("</style>")[1]
    data = _explorer_data(text)
    assert sorted(data["pictures"], key=int) == [str(i) for i in range(8)]
    first = data["pictures"]["0"]
    shown = re.findall(r">(#\d+)</span>", first)
    assert shown == [f"#{int(t)}" for t in ids[0]]  # token ids, as no strings were given


def test_a_large_run_pictures_mistakes_first_and_lists_every_sample(run, tmp_path, monkeypatch):
    browser = _need_browser()
    out, x, y, info, _ = run
    out = Path(shutil.copytree(out, tmp_path / "run"))
    monkeypatch.setattr(report_module, "_PICTURED", 6)  # as if the run were large
    monkeypatch.setattr(report_module.samples, "SHOWN", 1)  # worst and best: 1 per column
    (out / "report.html").unlink()
    model, _ = models.load("digits")
    saliency.audit.run(
        model, (x, y), out_dir=out, metrics=["deletion", "class_sensitivity"], batch_size=8,
        metric_options={"deletion": {"steps": 8}}, class_names=info.class_names,
        mean=info.mean, std=info.std, strategy="loop",
    )  # fmt: skip
    path = out / "report.html"
    data = _explorer_data(path.read_text())
    assert len(data["rows"]) == 16  # every sample listed
    pictured = {int(s) for s in data["pictures"]}
    # six chosen (the mistakes first), and those the worst and best lists drew anyway
    assert 6 <= len(pictured) < 16 and set(_WRONG) <= pictured
    script = """() => {
      const ex = document.querySelector('.rp-explorer');
      const cards = () => ex.querySelectorAll('.rp-card').length;
      const box = ex.querySelector('.rp-f-pictures');
      const first = [cards(), box.checked];
      box.checked = false; box.dispatchEvent(new Event('change'));
      return [...first, cards(), ex.querySelectorAll('.rp-nopic').length];
    }"""
    page = browser.evaluate(path, script)
    assert not page.console_errors and not page.page_errors
    assert page.value == [len(pictured), True, 16, 16 - len(pictured)]
