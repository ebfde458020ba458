"""Pictures of a generation's attribution: the PNG heat map, bulk PNGs, the hover view (in a real
headless Chromium) and the matplotlib figure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import saliency
from saliency import models
from saliency.generation import GenerationAttribution
from saliency.viz.colormaps import lookup_table
from saliency.viz.generation import (
    generation_image,
    html_page,
    html_view,
    plot_generation,
    save_generation_images,
)

# tests/ is not a package: load the helper beside this file by path (the name test_docs_math
# gives it, so that both share one module).
_spec = importlib.util.spec_from_file_location(
    "saliency_tests_browser", Path(__file__).with_name("_browser.py")
)
browser = sys.modules.get(_spec.name) or importlib.util.module_from_spec(_spec)
if _spec.name not in sys.modules:
    sys.modules[_spec.name] = browser  # dataclasses look their module up while it executes
    _spec.loader.exec_module(browser)


@pytest.fixture(scope="module")
def reverse():
    lm, info = models.load("reverse")
    prompts, _ = models.held_out("reverse", n=3)
    a = saliency.explain_generation(
        lm, prompts, attention_mask=(prompts != 0).long(), max_new_tokens=9,
        tokenizer=info.vocabulary,
    )  # fmt: skip
    return a, models.sources("reverse", prompts)


def tiny(scores, tokens=None, mask=None, reduce="norm"):
    scores = torch.as_tensor(scores, dtype=torch.float32)
    b, t_out, t_ctx = scores.shape
    ids = torch.arange(t_ctx).repeat(b, 1) + 5
    return GenerationAttribution(
        generated=ids[:, t_ctx - t_out :], ids=ids,
        attention_mask=torch.ones(b, t_ctx, dtype=torch.long) if mask is None else mask,
        scores=scores, tokens=tokens, params={"reduce": reduce, "target": "probability"},
    )  # fmt: skip


def cells(picture: Image.Image, rows: int, cols: int, cell: int = 4) -> np.ndarray:
    """The colour of every cell of a picture drawn without labels (``cell < 8``): the grid
    starts 4 pixels from the left, below the title line (font 11 + 8) and a 4-pixel margin."""
    pixels = np.asarray(picture)
    y0, x0 = 11 + 8 + 4, 4
    ys = y0 + cell * np.arange(rows) + cell // 2
    xs = x0 + cell * np.arange(cols) + cell // 2
    return pixels[np.ix_(ys, xs)]


def test_image_rows_are_generated_tokens_and_columns_the_context(reverse):
    a, _ = reverse
    picture = generation_image(a, 0, cell=4)
    real = int(a.attention_mask[0].sum())
    steps = int(a.real_steps[0].sum())
    grid = cells(picture, steps, real)
    unseen = np.all(grid == (225, 225, 225), axis=-1)
    # Row t sees the real columns before its own token: the unseen cells form a triangle.
    prompt = real - steps
    want = np.arange(real)[None, :] >= prompt + np.arange(steps)[:, None]
    assert np.array_equal(unseen, want)
    labelled = generation_image(a, 0, cell=10)
    assert labelled.width > real * 10 and labelled.height > steps * 10


def test_each_row_reaches_the_full_colour_on_its_own_scale():
    scores = [[[1e-6, 3e-6, 0.0, 0.0], [2.0, 1.0, 4.0, 0.0]]]  # rows six orders apart
    a = tiny(scores)
    top = tuple(lookup_table("Reds")[255])
    grid = cells(generation_image(a, cell=4, percentile=None), 2, 4)
    assert tuple(grid[0, 1]) == top and tuple(grid[1, 2]) == top
    assert tuple(grid[0, 2]) == (225, 225, 225)  # step 0's own token: unseen
    shared = cells(generation_image(a, cell=4, percentile=None, normalize="all"), 2, 4)
    assert tuple(shared[1, 2]) == top and tuple(shared[0, 1]) == tuple(lookup_table("Reds")[0])
    signed = tiny([[[-1.0, 0.5, 0.0]]], reduce="sum")
    grid = cells(generation_image(signed, cell=4, percentile=None), 1, 3)
    bwr = lookup_table("bwr", True)
    assert tuple(grid[0, 0]) == tuple(bwr[0]) and tuple(grid[0, 1]) == tuple(bwr[191])


def test_zero_maps_wide_grids_and_bad_options():
    a = tiny(torch.zeros(1, 3, 6))
    assert generation_image(a).size[0] > 0  # an all-zero map is a valid picture
    wide = tiny(torch.rand(1, 4, 600))
    assert generation_image(wide).width <= 2400  # cells shrink; labels left out when tiny
    with pytest.raises(ValueError, match="normalize: expected one of"):
        generation_image(a, normalize="column")
    with pytest.raises(ValueError, match="sample: expected an int in \\[0, 1\\)"):
        generation_image(a, 3)
    with pytest.raises(ValueError, match="cell: expected a positive int"):
        generation_image(a, cell=0)


def test_bulk_pngs_match_the_images(reverse, tmp_path):
    a, _ = reverse
    paths = save_generation_images(a, tmp_path / "maps", cell=9)
    assert [p.name for p in paths] == ["0.png", "1.png", "2.png"]
    for b, path in enumerate(paths):
        again = np.asarray(generation_image(a, b, cell=9))
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), again)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["0.png", "1.png", "2.png"]


def test_encoder_decoder_pictures_show_the_source_first():
    b, t_out, src = 1, 2, 3
    a = GenerationAttribution(
        generated=torch.tensor([[8, 9]]), ids=torch.tensor([[0, 8, 9]]),
        attention_mask=torch.ones(1, 3, dtype=torch.long), scores=torch.rand(b, t_out, 3),
        source_ids=torch.tensor([[4, 5, 6]]), source_mask=torch.ones(1, src, dtype=torch.long),
        source_scores=torch.rand(b, t_out, src),
        tokens=[["<s>", "x", "y"]], source_tokens=[["a", "b", "c"]],
    )  # fmt: skip
    assert generation_image(a, cell=10).width > generation_image(tiny(torch.rand(1, 2, 3)),
                                                                 cell=10).width  # fmt: skip
    view = html_view(a)
    assert ">source<" in view and view.index(">a<") < view.index(">x<")


def test_html_escapes_tokens_and_fetches_nothing(tmp_path):
    nasty = ["</script><b>", "a & b", '"q"', "\ud83d"]
    a = tiny(torch.rand(1, 2, 4), tokens=[nasty])
    view = html_view(a)
    assert "</script><b>" not in view and "&lt;/script&gt;&lt;b&gt;" in view
    assert "a &amp; b" in view and "&quot;q&quot;" in view
    path = tmp_path / "view.html"
    page = a.html(path)
    assert path.read_text(encoding="utf-8") == page and "Content-Security-Policy" in page
    assert a._repr_html_() == html_view(a)


def test_the_notebook_viewer_shows_a_generation_result(reverse, tmp_path):
    a, _ = reverse
    view = saliency.viz.view(a)
    assert view._repr_html_() == html_view(a) and view.html() == html_page(a)
    assert repr(view) == "View(gradients: 3 samples, 9 generated tokens)"
    assert view.save(tmp_path / "g.html").read_text(encoding="utf-8") == html_page(a)
    picked = saliency.viz.view(a, samples=[2, 0])
    assert picked.html() == html_page(a[[2, 0]])
    with pytest.raises(TypeError, match=r"^labels, x: not used for a generation result"):
        saliency.viz.view(a, torch.zeros(3, 4), labels=[0, 1, 2])
    with pytest.raises(ValueError, match="samples: expected indices below 3"):
        saliency.viz.view(a, samples=[3])


def test_hovering_a_generated_token_lights_up_its_source(reverse, tmp_path):
    if reason := browser.unavailable():
        pytest.skip(reason)
    a, sources = reverse
    path = tmp_path / "view.html"
    html_page(a, path)
    step = 2
    source = int(sources[0, step])  # the prompt column the third generated letter copies
    script = f"""(() => {{
      const box = document.querySelector('.sample');
      const spans = [...box.querySelectorAll('span.t')];
      const before = spans.map(s => s.style.background);
      box.querySelector('span.g[data-r="{step}"]').dispatchEvent(new MouseEvent('mouseenter'));
      const lit = spans.map(s => [s.textContent, s.style.background, s.classList.contains('later'),
                                  Number(s.title || 0)]);
      box.querySelector('span.g[data-r="{step}"]').dispatchEvent(new MouseEvent('mouseleave'));
      return {{before, lit, after: spans.map(s => s.style.background)}};
    }})()"""
    result = browser.evaluate(path, script)
    assert not result.page_errors and not result.console_errors and not result.blocked
    value = result.value
    assert all(not b for b in value["before"]) and all(not b for b in value["after"])
    lit = value["lit"]
    # Spans are the real tokens in order; padding is left out, so span j is the j-th real column.
    real = torch.nonzero(a.attention_mask[0]).flatten().tolist()
    scores = [title for _, _, _, title in lit]
    top = max(range(len(scores)), key=lambda j: scores[j])
    assert real[top] == source and lit[top][0] == a.tokens[0][source]
    own = a.columns[step].item()
    assert all(later for (_, _, later, _), col in zip(lit, real, strict=True) if col > own)
    torch.testing.assert_close(
        torch.tensor(scores[: real.index(own)]),
        a.scores[0, step, real[: real.index(own)]],
        rtol=1e-3, atol=1e-3 * float(a.scores[0, step].abs().max()),
    )  # fmt: skip


def test_the_same_view_shown_twice_in_a_notebook_answers_in_both(reverse, tmp_path):
    # Two outputs of one result carry the same element id; each script must take its own.
    if reason := browser.unavailable():
        pytest.skip(reason)
    from saliency.viz.html import page

    a, _ = reverse
    path = tmp_path / "twice.html"
    path.write_text(page("twice", html_view(a) + html_view(a)), encoding="utf-8")
    script = """(() => {
      const views = [...document.querySelectorAll('.sv-gen')];
      const lit = (view) => [...view.querySelector('.sample').querySelectorAll('span.t')]
        .filter((s) => s.style.background).length;
      const hover = (view) => view.querySelector('span.g[data-r="2"]')
        .dispatchEvent(new MouseEvent('mouseenter'));
      const leave = (view) => view.querySelector('span.g[data-r="2"]')
        .dispatchEvent(new MouseEvent('mouseleave'));
      hover(views[1]);
      const second = [lit(views[0]), lit(views[1])];
      leave(views[1]);
      hover(views[0]);
      const first = [lit(views[0]), lit(views[1])];
      return {ids: views.map((v) => v.id), second, first};
    })()"""
    result = browser.evaluate(path, script)
    assert not result.page_errors and not result.console_errors
    value = result.value
    assert value["ids"][0] == value["ids"][1]  # the same id: the case to handle
    assert value["second"][0] == 0 and value["second"][1] > 0
    assert value["first"][0] > 0 and value["first"][1] == 0


def test_matplotlib_figure(reverse):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    a, _ = reverse
    fig = plot_generation(a, 1)
    ax = fig.axes[0]
    assert ax.get_yticklabels()[0].get_text() == a.tokens[1][a.columns[0]]
    assert len(ax.get_xticklabels()) == int(a.attention_mask[1].sum())
    assert len(fig.axes) == 2  # with its colour bar
    assert a.plot(0).axes[0].get_title().startswith("sample 0")
