"""The notebook viewer (``saliency.viz.view``): its data, and what a reader sees and can do in a
real headless Chromium (select a sample and a class, point at a pixel or a token)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch

import saliency
from saliency import models, viz
from saliency.viz import html as shell


def _data(html: str) -> dict:
    found = re.search(r'<script type="application/json" class="sv-data">(.*?)</script>', html)
    return json.loads(found.group(1))


def _decode(table: dict) -> np.ndarray:
    codes = np.frombuffer(base64.b64decode(table["codes"]), dtype="<i2")
    return codes * table["scale"] / 32767


@pytest.fixture(scope="module")
def digits():
    model, info = models.load("digits")
    x, y = models.held_out("digits", 12)
    a = saliency.gradients(model, x, strategy="loop")
    # a hostile class name: markup, a quote and a lone surrogate must arrive as text
    names = list(info.class_names)
    names[3] = '<img src=x onerror="alert(1)">\ud83d'
    return a, x, y, names, info


def test_view_carries_every_map_in_the_order_a_reader_wants(digits) -> None:
    a, x, y, names, info = digits
    y = y.clone()
    y[5] = (a.outputs[5].argmax() + 1) % 10  # one wrong prediction: its true class comes second
    v = viz.view(a, x, labels=y, class_names=names, mean=info.mean, std=info.std)
    data = _data(v.html())
    assert data["kind"] == "image" and data["signed"] and len(data["samples"]) == 12
    maps = a.values.sum(2).numpy()  # channels summed, as heat maps reduce them
    for b, entry in enumerate(data["samples"]):
        predicted = int(a.outputs[b].argmax())
        assert entry["predicted"] == predicted and entry["label"] == int(y[b])
        assert entry["classes"][0] == predicted
        if int(y[b]) != predicted:
            assert entry["classes"][1] == int(y[b])
        assert sorted(entry["classes"]) == list(range(10))  # every class, none lost
        rest = entry["scores"][2 if int(y[b]) != predicted else 1 :]
        assert rest == sorted(rest, reverse=True)
        for c, table, clip in zip(entry["classes"], entry["maps"], entry["clip"], strict=True):
            shown = _decode(table).reshape(8, 8)
            tolerance = float(np.abs(maps[b, c]).max()) / 3e4  # 16-bit codes of the largest
            np.testing.assert_allclose(shown, maps[b, c], atol=tolerance)
            assert clip == pytest.approx(np.percentile(np.abs(maps[b, c]), 99), rel=1e-5)
    assert data["samples"][5]["classes"][1] == int(y[5])


def test_view_escapes_every_string_and_fetches_nothing(digits, tmp_path) -> None:
    a, x, y, names, info = digits
    v = viz.view(a, x, labels=y, class_names=names, mean=info.mean, std=info.std)
    page = v.html()
    assert "<img src=x" not in page and "\ud83d" not in page
    assert re.findall(r"(?:src|href)=[\"'](?!data:)", page) == []  # no resource but data: URIs
    path = v.save(tmp_path / "view.html")
    assert path.read_text(encoding="utf-8") == page
    assert viz.view(a, x, labels=y, class_names=names, mean=info.mean, std=info.std).html() == page
    with pytest.raises(ValueError, match=r"expected an \.html file"):
        v.save(tmp_path / "view.png")


def test_view_in_a_browser_selects_samples_and_classes_and_reads_values(
    browser, digits, tmp_path
) -> None:
    a, x, y, names, info = digits
    v = viz.view(a, x, labels=y, class_names=names, mean=info.mean, std=info.std)
    path = v.save(tmp_path / "view.html")
    # Sample 4, the third class in its list; point at the pixel of its largest value.
    b = 4
    entry = _data(v.html())["samples"][b]
    k = 2
    c = entry["classes"][k]
    m = a.values[b, c, 0].numpy()
    row, col = np.unravel_index(np.argmax(np.abs(m)), m.shape)
    script = """async () => {
      const root = document.querySelector('.sv-view');
      const pick = (sel, value) => { sel.value = value; sel.dispatchEvent(new Event('change')); };
      pick(root.querySelector('.sv-sample'), '{b}');
      const classes = Array.from(root.querySelector('.sv-class').options).map(o => o.textContent);
      root.querySelectorAll('.sv-thumb')[{k}].click();
      const canvas = root.querySelector('.sv-map');
      const r = canvas.getBoundingClientRect();
      const at = (r, row, col) => ({clientX: r.left + (col + 0.5) * r.width / canvas.width,
                                    clientY: r.top + (row + 0.5) * r.height / canvas.height});
      const point = at(r, {row}, {col});
      canvas.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, ...point}));
      const hovered = root.querySelector('.sv-readout').textContent;
      const pixel = Array.from(canvas.getContext('2d').getImageData({col}, {row}, 1, 1).data);
      const input = root.querySelector('.sv-input');
      await input.decode();
      const under = at(input.getBoundingClientRect(), 7, 0);
      input.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, ...under}));
      const onInput = root.querySelector('.sv-readout').textContent;
      return {classes, hovered, pixel, onInput,
              info: root.querySelector('.sv-info').textContent,
              selected: root.querySelector('.sv-class').value,
              thumbs: root.querySelectorAll('.sv-thumb').length,
              ticks: Array.from(root.querySelectorAll('.sv-ticks span')).map(s => s.textContent),
              input: input.complete && input.naturalWidth,
              static: getComputedStyle(root.querySelector('.sv-static')).display,
              title: document.title};
    }"""
    for name, value in {"b": b, "k": k, "row": row, "col": col}.items():
        script = script.replace("{" + name + "}", str(value))
    page = browser.evaluate(path, script, screenshot=tmp_path / "view.png", viewport=(1280, 900))
    seen = page.value
    assert not page.console_errors and not page.page_errors
    assert page.requests == [path.resolve().as_uri()] and not page.blocked and not page.failed
    predicted, label = int(a.outputs[b].argmax()), int(y[b])
    assert seen["classes"][0].startswith(f"{names[predicted]} (predicted")
    assert len(seen["classes"]) == 10 and seen["thumbs"] == 10
    assert seen["selected"] == str(k)
    assert f"True class: {names[label]}" in seen["info"]
    assert f"Map of class {names[c]}" in seen["info"]
    value = float(m[row, col])
    sign = "\u2212" if value < 0 else "+"
    assert seen["hovered"] == f"Class {names[c]}, row {row}, column {col}: {sign}{abs(value):.3g}"
    assert seen["onInput"].startswith(f"Class {names[c]}, row 7, column 0: ")
    # the largest magnitude is beyond the 99th percentile: drawn at the end of the colour table
    lut = np.asarray(_data(v.html())["lut"]).reshape(256, 3)
    assert seen["pixel"][:3] == lut[0 if value < 0 else 255].tolist()
    clip = np.percentile(np.abs(m), 99)
    assert seen["ticks"] == [f"\u2212{clip:.3g}", "0", f"+{clip:.3g}"]
    assert seen["input"] == 8 and seen["static"] == "none"
    assert "<img" not in seen["title"]


def test_two_views_in_one_notebook_page_work_apart(browser, digits, tmp_path) -> None:
    a, x, y, _, _ = digits
    first = viz.view(a, x, labels=y)._repr_html_()
    second = a[6:9]._repr_html_()  # an Attribution alone in a cell: no inputs
    path = tmp_path / "notebook.html"
    path.write_text(shell.page("notebook", first + "<hr>" + second), encoding="utf-8")
    script = """() => {
      const roots = document.querySelectorAll('.sv-view');
      const s = roots[1].querySelector('.sv-sample');
      s.value = '2'; s.dispatchEvent(new Event('change'));
      return Array.from(roots).map(r => ({
        ids: r.id, sample: r.querySelector('.sv-sample').value,
        options: r.querySelector('.sv-sample').options.length,
        inputs: r.querySelectorAll('.sv-input').length,
        note: r.querySelector('.sv-figure .sv-note') ? 'note' : ''}));
    }"""
    page = browser.evaluate(path, script)
    assert not page.console_errors and not page.page_errors
    one, two = page.value
    assert one["ids"] != two["ids"]
    assert (one["sample"], one["options"], one["inputs"]) == ("0", 12, 1)
    assert (two["sample"], two["options"], two["inputs"], two["note"]) == ("2", 3, 0, "note")


def test_the_same_view_shown_twice_answers_in_both(browser, digits, tmp_path) -> None:
    # One result shown in two cells: the same id twice; each script must take its own copy.
    a, x, y, _, _ = digits
    view = viz.view(a, x, labels=y)._repr_html_()
    path = tmp_path / "twice.html"
    path.write_text(shell.page("twice", view + "<hr>" + view), encoding="utf-8")
    script = """() => {
      const roots = document.querySelectorAll('.sv-view');
      const s = roots[1].querySelector('.sv-sample');
      s.value = '4'; s.dispatchEvent(new Event('change'));
      return Array.from(roots).map(r => ({id: r.id,
        info: r.querySelector('.sv-info').textContent,
        static: getComputedStyle(r.querySelector('.sv-static')).display}));
    }"""
    page = browser.evaluate(path, script)
    assert not page.console_errors and not page.page_errors
    one, two = page.value
    assert one["id"] == two["id"]
    assert one["static"] == two["static"] == "none"  # both scripts ran, each on its own view
    assert "#4" in two["info"] and "#4" not in one["info"], (one["info"], two["info"])


def test_token_view_colours_tokens_and_reads_their_scores(browser, tmp_path) -> None:
    scores = torch.tensor([[[0.5, -2.0, 0.0, 1.0], [1.0, 0.25, -0.5, 0.0]]])
    a = saliency.Attribution(
        values=scores, classes=torch.tensor([[0, 1]]), outputs=torch.tensor([[0.2, 1.3]]),
        method="integrated_gradients",
    )  # fmt: skip
    words = ["the", "<b>bad</b>", "\ud800", "[PAD]"]
    v = viz.view(a, tokens=words, skip="[PAD]", class_names=["neg", "pos"], labels=[1])
    data = _data(v.html())
    assert data["kind"] == "sequence"
    entry = data["samples"][0]
    assert entry["classes"] == [1, 0] and entry["tokens"] == ["the", "<b>bad</b>", "\ufffd"]
    path = v.save(tmp_path / "tokens.html")
    script = """() => {
      const root = document.querySelector('.sv-view');
      const spans = root.querySelectorAll('.sv-token');
      spans[1].dispatchEvent(new MouseEvent('mouseenter'));
      const first = root.querySelector('.sv-readout').textContent;
      root.querySelectorAll('.sv-thumb')[1].click();
      const spans2 = root.querySelectorAll('.sv-token');
      spans2[1].dispatchEvent(new MouseEvent('mouseenter'));
      return {texts: Array.from(spans2).map(s => s.textContent), first,
              second: root.querySelector('.sv-readout').textContent,
              bold: root.querySelectorAll('.sv-tokens b').length,
              colours: Array.from(spans2).map(s => getComputedStyle(s).backgroundColor)};
    }"""
    page = browser.evaluate(path, script)
    assert not page.console_errors and not page.page_errors
    seen = page.value
    assert seen["texts"] == ["the", "<b>bad</b>", "\ufffd"] and seen["bold"] == 0
    assert seen["first"] == "\u201c<b>bad</b>\u201d (position 1): +0.25"
    assert seen["second"] == "\u201c<b>bad</b>\u201d (position 1): \u22122"
    assert seen["colours"][1] == "rgb(0, 0, 255)"  # the most negative score: bwr's blue end


def test_view_keeps_the_page_small_for_large_images() -> None:
    g = torch.Generator().manual_seed(0)
    a = saliency.Attribution(
        values=torch.randn(16, 10, 3, 224, 224, generator=g),
        classes=torch.arange(10).repeat(16, 1),
        outputs=torch.randn(16, 10, generator=g),
        method="gradients",
    )
    x = torch.rand(16, 3, 224, 224, generator=g)
    v = viz.view(a, x, samples=range(8), max_classes=5)
    data = _data(v.html())
    assert (data["height"], data["width"], data["block"]) == (112, 112, 2)
    first = a.values[0].sum(1)[data["samples"][0]["classes"][0]]
    block = first.reshape(112, 2, 112, 2).mean((1, 3)).numpy()
    shown = _decode(data["samples"][0]["maps"][0]).reshape(112, 112)
    np.testing.assert_allclose(shown, block, atol=2e-3 * abs(block).max())
    assert len(data["samples"]) == 8 and all(len(e["classes"]) == 5 for e in data["samples"])
    assert len(v.html()) < 2_500_000


def test_view_refuses_what_it_cannot_show(digits) -> None:
    a, x, y, _, _ = digits
    with pytest.raises(ValueError, match=r"labels: expected one integer class id per sample"):
        viz.view(a, x, labels=y[:3])
    with pytest.raises(ValueError, match=r"x: expected the 12 images the maps explain"):
        viz.view(a, x[:, :, :4])
    with pytest.raises(ValueError, match="samples: expected indices below 12"):
        viz.view(a, x, samples=[12])
    bad = saliency.Attribution(
        values=a.values.clone(), classes=a.classes, outputs=a.outputs, method="gradients"
    )
    bad.values[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        viz.view(bad)
    assert bad._repr_html_() is None  # Jupyter falls back to the picture or the text
    with pytest.raises(TypeError, match=r"expected a saliency\.Attribution"):
        viz.view(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"saliency\.token_scores first"):
        viz.view(a, tokens=["a"] * 8)
