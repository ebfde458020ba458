"""Redraw the Generation page's pictures and its table of known answers:
``MPLBACKEND=Agg python docs/img/make_generation_pictures.py``.

- generation-reverse.png: gradients and Integrated Gradients of the bundled language model
  "reverse" for one held-out prompt, every generated letter by every context token.
- generation-hover.png: the hover view in headless Chromium, the third generated letter hovered.
- The table between ``<!-- hits:start -->`` and ``<!-- hits:end -->`` in docs/generation.md: how
  often each method's top-scored context token is the true source, on the first 200 held-out
  prompts (``hit_rates``; tests/test_generation_docs.py checks the page against it).

Everything is deterministic: bundled weights, held-out prompts, fixed seeds.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

import saliency  # noqa: E402
from saliency import models  # noqa: E402
from saliency.viz.generation import generation_image, html_page  # noqa: E402

PAGE = REPO / "docs" / "generation.md"
N = 200
METHODS = {  # the rows of the table: label, method, options
    "gradients": ("gradients", {}),
    "gradient x input": ("x_input", {}),
    "Integrated Gradients (adaptive steps, zero baseline)": (
        "integrated_gradients",
        {"steps": "auto"},
    ),
    "SmoothGrad (8 copies, noise 0.15, seed 0)": ("smoothgrad", {"n_samples": 8, "seed": 0}),
}


def explain(n: int, method: str, **options):
    lm, info = models.load("reverse")
    prompts, _ = models.held_out("reverse", n=n)
    return saliency.explain_generation(
        lm, prompts, attention_mask=(prompts != 0).long(), max_new_tokens=9, method=method,
        tokenizer=info.vocabulary, **options,
    )  # fmt: skip


def hit_rates(n: int = N, methods: dict = METHODS) -> list[list[str]]:
    """Rows ``[method, hits (norm), hits (sum), chance]`` in percent: the share of generated
    letters whose top-scored context token is the prompt letter it copies."""
    prompts, _ = models.held_out("reverse", n=n)
    sources = models.sources("reverse", prompts)
    known = sources >= 0
    rows = []
    for label, (method, options) in methods.items():
        a = explain(n, method, keep_values=True, **options)
        # What each step sees: the real columns before its own token.
        cols = torch.arange(a.ids.shape[1])
        seen = a.attention_mask.bool()[:, None, :] & (cols < a.columns[:, None])
        cells = []
        for scores in (a.values.norm(dim=-1), a.values.sum(-1)):  # reduce="norm", "sum"
            if method in ("gradients", "smoothgrad") and len(cells) == 1:
                cells.append("(no meaning)")  # the sum of a gradient's components
                continue
            top = torch.where(seen, scores, -torch.inf).argmax(-1)
            cells.append(f"{100 * float((top == sources)[known].float().mean()):.1f} %")
        chance = 100 * float((1 / seen.sum(-1).float())[known].mean())
        rows.append([label, *cells, f"{chance:.1f} %"])
    return rows


def table(rows: list[list[str]]) -> str:
    header = ["method", "top token is the source (`reduce='norm'`)", "(`reduce='sum'`)", "chance"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_table() -> None:
    text = PAGE.read_text()
    block = f"<!-- hits:start -->\n{table(hit_rates())}\n<!-- hits:end -->"
    PAGE.write_text(re.sub(r"<!-- hits:start -->.*?<!-- hits:end -->", block, text, flags=re.S))


def reverse_picture() -> None:
    pictures = [
        generation_image(explain(1, "gradients"), 0, cell=22, font_size=13),
        generation_image(explain(1, "integrated_gradients", steps=16), 0, cell=22, font_size=13),
    ]
    width = sum(p.width for p in pictures) + 20
    canvas = Image.new("RGB", (width, max(p.height for p in pictures)), "white")
    canvas.paste(pictures[0], (0, 0))
    canvas.paste(pictures[1], (pictures[0].width + 20, 0))
    canvas.save(HERE / "generation-reverse.png", optimize=True)


def hover_picture() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import _browser as browser

    a = explain(2, "gradients")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "view.html"
        html_page(a, path)
        shot = Path(folder) / "shot.png"
        script = """(() => {
          document.querySelector('span.g[data-r="2"]').dispatchEvent(new MouseEvent('mouseenter'));
          const r = document.querySelector('.sv-gen').getBoundingClientRect();
          return [r.width, r.height];
        })()"""
        result = browser.evaluate(path, script, screenshot=shot, viewport=(760, 300))
        assert not result.page_errors and not result.blocked
        picture = Image.open(shot).convert("RGB")
        pixels = np.asarray(picture)
        rows = np.flatnonzero((pixels < 250).any(axis=(1, 2)))
        picture.crop((0, 0, picture.width, int(rows.max()) + 12)).save(
            HERE / "generation-hover.png", optimize=True
        )


if __name__ == "__main__":
    reverse_picture()
    hover_picture()
    write_table()
