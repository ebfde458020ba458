"""Token pictures: colours against the image pictures' own normalisation and colour maps."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import saliency
from saliency.tokens import token_scores
from saliency.viz import token_pictures
from saliency.viz.colormaps import colorize
from saliency.viz.normalization import normalize
from saliency.viz.token_pictures import TokenPicture, tokens

WORDS = ["the", "film", "was", "not", "good", "[PAD]"]


def attribution(b: int = 2, k: int = 3, t: int = 6, seed: int = 0) -> saliency.Attribution:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, k, t, generator=g)
    classes = torch.stack([torch.randperm(4, generator=g)[:k] for _ in range(b)])
    outputs = torch.randn(b, 4, generator=g)
    return saliency.Attribution(values, classes, outputs, "gradients")


def expected_colors(scores: np.ndarray, sign: str = "all", cmap: str = "bwr", **kw) -> np.ndarray:
    """The oracle: one line as a 1 x n map, normalised and coloured like an image map."""
    norm = normalize(np.asarray(scores, dtype=np.float32)[None], sign=sign, **kw)
    return colorize(norm, cmap, signed=sign == "all")[0]


def backgrounds(html: str) -> list[tuple[int, int, int]]:
    return [
        tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))
        for h in re.findall(r"background-color:#([0-9a-f]{6})", html)
    ]


@pytest.mark.parametrize(
    ("options", "cmap"),
    [({}, "bwr"), ({"sign": "absolute", "cmap": "viridis", "clip": None}, "viridis")],
)
def test_colours_are_the_colour_map_of_the_normalised_scores(options, cmap):
    a = attribution()
    picture = tokens(a, [WORDS, WORDS], **options)
    assert len(picture.lines) == 6
    html = picture._repr_html_()
    oracle_kw = {k: v for k, v in options.items() if k != "cmap"}
    seen = []
    for line in picture.lines:
        scores = a.values[line.sample, list(a.classes[line.sample]).index(line.class_id)].numpy()
        expected = expected_colors(scores, cmap=cmap, **oracle_kw)
        np.testing.assert_array_equal(line.colors, expected)
        np.testing.assert_array_equal(line.scores, scores)
        seen.extend(map(tuple, expected.tolist()))
    assert backgrounds(html) == seen
    # Every line's tooltip carries its score.
    first = picture.lines[0]
    assert f"{first.scores[0]:.4g}" in html.split("</span>")[1]


def test_labels_name_the_class_and_its_output():
    a = attribution(b=1, k=2)
    names = {i: f"class-{i}" for i in range(4)}
    picture = tokens(a, WORDS, class_names=names)
    for line, c in zip(picture.lines, a.classes[0].tolist(), strict=True):
        assert line.label == f"class-{c}: {float(a.outputs[0, c]):.3g}"
    chosen = tokens(a, WORDS, classes=int(a.classes[0, 1]))
    assert [line.class_id for line in chosen.lines] == [int(a.classes[0, 1])]
    batch = tokens(attribution(), [WORDS, WORDS])
    assert batch.lines[3].label.startswith("#1 ")


def test_skipped_tokens_are_hidden_and_left_out_of_the_normalisation():
    scores = np.array([0.2, -0.5, 0.1, 0.0, 0.4, 9.0], dtype=np.float32)  # [PAD] would dominate
    for skip in ("[PAD]", {"[PAD]", "[CLS]"}, lambda t: t.startswith("[")):
        line = tokens(scores, WORDS, skip=skip).lines[0]
        assert line.tokens == tuple(WORDS[:5]) and line.positions == (0, 1, 2, 3, 4)
        np.testing.assert_array_equal(line.colors, expected_colors(scores[:5]))
    html = tokens(scores, WORDS, skip="[PAD]").html()
    assert "PAD" not in html and len(backgrounds(html)) == 5
    empty = tokens(scores, WORDS, skip=lambda t: True)
    assert empty.lines[0].tokens == () and empty.image().size[0] == 800


def test_tokens_and_labels_are_escaped_and_the_page_is_self_contained():
    words = ["<script>alert(1)</script>", 'say "hi"', "a&b", "<img src=x onerror=y>"]
    picture = tokens(np.arange(4.0), words, class_names=['<b>"x"</b>'])
    page = picture.html()
    for bad in ("<script", "<img", "<b>", "http", "<link", "url("):
        assert bad not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&amp;b" in page
    assert "say &quot;hi&quot;" in page and "&lt;b&gt;&quot;x&quot;&lt;/b&gt;" in page
    assert picture.lines[0].tokens[0] == words[0]  # escaped in HTML only


def test_lone_surrogates_are_shown_as_replacement_characters(tmp_path):
    # A byte-level tokenizer decoded with surrogateescape hands out half characters, which
    # UTF-8 cannot encode: saving the page raised UnicodeEncodeError.
    words = ["ok", "\udc80", "\ud83d\ude00", "caf\u00e9"]
    picture = tokens(np.arange(4.0), words, class_names=["\ud800x"])
    path = picture.save(tmp_path / "t.html")
    page = path.read_bytes().decode("utf-8")  # strict: every byte is valid UTF-8
    assert "\ufffd" in page and "\U0001f600" in page and "caf\u00e9" in page
    assert "\ufffdx" in page  # the class name too
    assert picture.lines[0].tokens[1] == "\udc80"  # the data keep what they were given


def test_all_zero_scores_give_a_valid_neutral_picture():
    picture = tokens(torch.zeros(2, 4), ["a", "b", "c", "d"])
    white = (255, 255, 255)  # bwr's middle
    assert all(tuple(c) == white for line in picture.lines for c in line.colors)
    assert backgrounds(picture.html()) == [white] * 8
    assert picture.image().mode == "RGB"
    sequential = tokens(torch.zeros(4), ["a", "b", "c", "d"], sign="absolute")
    np.testing.assert_array_equal(
        sequential.lines[0].colors, expected_colors([0] * 4, "absolute", "inferno")
    )


def test_accepted_forms():
    values = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    words = list("abcde")
    one = tokens(values[1], words)  # [T]
    rows = tokens(values, words)  # [K, T]: row k is class k
    picked = tokens(torch.from_numpy(values), words, classes=[2, 0])
    batch = tokens(values[None].repeat(2, 0), [words, words])  # [B, K, T]
    assert [line.class_id for line in rows.lines] == [0, 1, 2]
    assert [line.class_id for line in picked.lines] == [2, 0]
    np.testing.assert_array_equal(picked.lines[0].colors, rows.lines[2].colors)
    np.testing.assert_array_equal(one.lines[0].colors, rows.lines[1].colors)
    assert len(batch.lines) == 6 and batch.lines[4].sample == 1
    reduced = token_scores(
        saliency.Attribution(
            torch.randn(1, 2, 5, 3), torch.tensor([[1, 0]]), torch.zeros(1, 2), "m"
        )
    )
    assert [line.class_id for line in tokens(reduced, words).lines] == [1, 0]


ERRORS = [
    (
        {
            "scores": saliency.Attribution(
                torch.ones(1, 1, 6, 2), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1), "m"
            )
        },
        ValueError,
        "saliency.token_scores",
    ),
    ({"scores": np.ones((1, 1, 1, 6))}, ValueError, r"scores: expected \[T\]"),
    ({"scores": np.array([1.0, np.nan, 0, 0, 0, 0])}, ValueError, "scores: holds NaN"),
    ({"tokens": [*WORDS, "extra"]}, ValueError, "tokens: sample 0 has 7 tokens for 6 scores"),
    ({"tokens": "the film"}, TypeError, "tokens: expected a list"),
    ({"tokens": [1, 2, 3, 4, 5, 6]}, TypeError, "tokens: expected strings, got 1"),
    ({"tokens": [WORDS, WORDS]}, ValueError, "tokens: expected 1 lists"),
    ({"classes": 3}, ValueError, "classes: class 3 was not computed for sample 0"),
    ({"classes": "a"}, TypeError, "classes: expected None"),
    ({"sign": "both"}, ValueError, "sign='both'"),
    ({"cmap": "nope"}, ValueError, "cmap='nope'"),
    ({"skip": 3}, TypeError, "skip: expected a token string"),
]


@pytest.mark.parametrize(("change", "error", "match"), ERRORS)
def test_errors(change, error, match):
    call = {"scores": np.ones(6), "tokens": WORDS, **change}
    with pytest.raises(error, match=match):
        tokens(call.pop("scores"), call.pop("tokens"), **call)


def test_png_is_written_atomically_and_reads_back(tmp_path, monkeypatch):
    picture = tokens(attribution(), [WORDS, WORDS], skip="[PAD]")
    drawn = np.asarray(picture.image(width=300))
    assert drawn.shape[1] == 300
    for line in picture.lines:  # every token's colour is in the picture
        for color in line.colors:
            assert (drawn == color).all(-1).any()
    path = picture.save(tmp_path / "tokens.png", width=300)
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), drawn)
    page = picture.save(tmp_path / "tokens.html")
    assert picture.html() in page.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.html", "tokens.png"]

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(token_pictures, "write_png", fail)
    with pytest.raises(OSError, match="disk full"):
        picture.save(tmp_path / "other.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.html", "tokens.png"]
    with pytest.raises(ValueError, match=r"path: expected a \.png or \.html"):
        picture.save(tmp_path / "tokens.jpg")


def test_rows_wrap_at_the_width():
    picture = tokens(np.ones(40), [f"token{i}" for i in range(40)])
    assert isinstance(picture, TokenPicture)
    wide, narrow = picture.image(width=2000), picture.image(width=200)
    assert narrow.height > 3 * wide.height
    with pytest.raises(ValueError, match="width: expected an int"):
        picture.image(width=10)


def test_fewer_tokens_than_scores_leave_the_padding_undrawn():
    scores = np.arange(6.0)
    picture = tokens(scores, WORDS[:4])  # tokenizers often drop trailing padding
    assert picture.lines[0].tokens == tuple(WORDS[:4])
    np.testing.assert_array_equal(picture.lines[0].scores, scores[:4])
