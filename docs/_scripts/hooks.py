"""mkdocs hook: add the generated pictures and the executed notebooks to the site.

Named in ``mkdocs.yml`` (``hooks:``), so a plain ``mkdocs build`` or ``mkdocs serve`` makes what
it needs; see ``generated.py`` for the cache. The pictures are served as ``img/generated/NAME.png``;
each notebook ``notebooks/NAME.ipynb`` becomes the page ``notebooks/NAME.md`` with its outputs,
its images in ``notebooks/NAME/`` and its source for download beside it. A notebook that raises or
writes to stderr fails the build (as a warning, which ``--strict`` turns into a failure).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.saliency")


def _load(name: str):
    # mkdocs loads this file by path: load its sibling the same way, once.
    key = f"saliency_docs_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def on_files(files, config):
    generated = _load("generated")
    folder = generated.pictures(log=log.info)
    for path in sorted(folder.glob("*.png")):
        files.append(File.generated(config, f"img/generated/{path.name}", abs_src_path=str(path)))
    for path in generated.NOTEBOOKS:
        nb = generated.executed(path, log=log.info)
        for problem in generated.problems(nb):
            log.warning(f"notebooks/{path.name}: {problem}")
        text, extra = generated.page(path, nb)
        files.append(File.generated(config, f"notebooks/{path.stem}.md", content=text))
        for name, data in extra.items():
            files.append(File.generated(config, f"notebooks/{name}", content=data))
        files.append(File.generated(config, f"notebooks/{path.name}", abs_src_path=str(path)))
    return files
