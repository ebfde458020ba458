"""What the docs build makes rather than reads: the pictures, and the notebooks run with outputs.

Both are made from source at build time (never committed, so they cannot drift) and kept in a
cache folder, ``.docs-cache/`` at the top of the checkout (``$SALIENCY_DOCS_CACHE`` to move it),
under a key that hashes everything they depend on: the package's code and weights, the script or
notebook, the engine benchmark's saved numbers and the versions of Python, torch and matplotlib.
A changed input makes a new key, so a stale picture or output is never served; an unchanged one
is reused (``mkdocs serve`` rebuilds in seconds, and ``make docs`` after ``make test`` reuses the
notebooks the tests ran).

Used by ``hooks.py`` (the mkdocs build) and by the tests (``tests/test_notebooks.py``,
``tests/test_docs_site.py``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PICTURES_SCRIPT = HERE / "pictures.py"
BENCHMARK = REPO / "docs" / "img" / "benchmark-engine.json"


class NotebookProblem(RuntimeError):
    """A notebook raised, or wrote to stderr (a warning block a reader would see)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SALIENCY_DOCS_CACHE") or REPO / ".docs-cache")


def fingerprint(*files: Path) -> str:
    """A short hash of ``files``, the package's code and weights, and the tool versions."""
    digest = hashlib.sha256()
    package = sorted(p for p in (REPO / "saliency").rglob("*") if p.is_file() and
                     p.suffix in (".py", ".safetensors", ".json"))  # fmt: skip
    for path in [*files, Path(__file__), *package]:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    for name in ("torch", "matplotlib", "pillow", "numpy", "captum", "ipykernel", "ipywidgets"):
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            pass
    digest.update(platform.python_version().encode())
    return digest.hexdigest()[:16]


def _replace_dir(done: Path, final: Path) -> None:
    """Move a finished folder into place; drop earlier versions of it (other keys)."""
    try:
        os.replace(done, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(done, ignore_errors=True)  # another build made the same folder first
        return
    stem = final.name.rsplit("-", 1)[0]
    for old in final.parent.glob(f"{stem}-*"):
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


# -- pictures ------------------------------------------------------------------------------------


def pictures(log=print) -> Path:
    """The folder holding every picture of ``pictures.py`` as NAME.png, drawn if needed."""
    root = cache_dir()
    final = root / f"pictures-{fingerprint(PICTURES_SCRIPT, BENCHMARK)}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".pictures-"))
    log(f"drawing the docs' pictures into {final} (about a minute)")
    done = subprocess.run(
        [sys.executable, str(PICTURES_SCRIPT), "--out", str(work)],
        capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"},
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"docs/_scripts/pictures.py failed:\n{done.stderr[-4000:]}")
    _replace_dir(work, final)
    return final


# -- notebooks -----------------------------------------------------------------------------------


def executed(path: Path, log=print):
    """Notebook ``path`` run top to bottom in a fresh kernel (an ``nbformat`` notebook with its
    outputs), from the cache when nothing it depends on changed."""
    import nbformat

    root = cache_dir() / "notebooks"
    final = root / f"{path.stem}-{fingerprint(path)}"
    file = final / path.name
    if file.is_file():
        return nbformat.read(file, as_version=4)
    import nbclient

    nb = nbformat.read(path, as_version=4)
    log(f"running {path.name}")
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    # The kernel imports this checkout's package, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )  # fmt: skip
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".run-"))
    nbformat.write(nb, work / path.name)
    _replace_dir(work, final)
    return nb


def problems(nb) -> list[str]:
    """What a reader would see as a failure: errors and anything written to stderr, per cell."""
    found = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code, 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"code cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                found.append(f"code cell {i} wrote to stderr: {out.get('text', '')[:300]!r}")
    return found


def page(path: Path, nb) -> tuple[str, dict[str, bytes]]:
    """The Markdown page of an executed notebook and the files it links to (by name, relative
    to the page's folder)."""
    stem = path.stem
    files: dict[str, bytes] = {}
    parts: list[str] = []
    for n, cell in enumerate(nb.cells):
        source = cell.source.rstrip()
        if cell.cell_type == "markdown":
            parts.append(source)
            if n == 0:
                parts.append(_source_note(path))
            continue
        if cell.cell_type != "code":
            continue
        parts.append(f"```python\n{source}\n```")
        for j, out in enumerate(cell.get("outputs", [])):
            kind = out.get("output_type")
            if kind == "stream":
                parts.append(_text_block(out.get("text", "")))
            elif kind in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "image/png" in data:
                    name = f"{stem}/cell{n}-{j}.png"
                    files[name] = base64.b64decode(data["image/png"])
                    parts.append(f"![Output of the cell above]({name}){{ .nb-image }}")
                elif "text/html" in data:
                    html = "\n".join(line for line in _text(data["text/html"]).splitlines()
                                     if line.strip())  # fmt: skip
                    parts.append(f'<div class="nb-output">\n{html}\n</div>')
                elif "text/plain" in data:
                    parts.append(_text_block(_text(data["text/plain"])))
    return "\n\n".join(parts) + "\n", files


def _source_note(path: Path) -> str:
    return (
        f'!!! note "Run it yourself"\n    This page is `notebooks/{path.name}`, run from top to '
        "bottom when the site was built, with every output as it came. "
        f"[Download the notebook]({path.name}) or open the checkout's copy in Jupyter: "
        '`pip install -e ".[notebooks]"`, then `jupyter lab notebooks/`.'
    )


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _text_block(text: str) -> str:
    text = _text(text).rstrip("\n")
    fence = "````" if "```" in text else "```"
    return f"{fence}text\n{text}\n{fence}"
