"""Docs-build-only griffe extension: read the package's NumPy docstrings the way Sphinx would.

Two things the docstrings do that mkdocstrings does not understand on its own:

- Sphinx roles (``:func:`load```, ``:class:`~saliency.Attribution```) become optional
  cross-references: a link when the target is documented on the site, plain code otherwise.
- Grouped parameters (``model, x, classes\n    As in ...``) are split into one entry per name, so
  that each shows its own annotation and default instead of the first name's.

Nothing here changes the package; it runs only inside ``mkdocs build``.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc):`(~?)([\w.]+)(?:\(\))?`")
_GROUP = re.compile(r"^(\*{0,2}\w+(?:, \*{0,2}\w+)+)\s*$")
_SECTION = re.compile(r"^-{3,}\s*$")


class SphinxDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = _split_groups(obj.docstring.value)
                obj.docstring.value = _ROLE.sub(lambda m, o=obj: _reference(o, m), text)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _reference(obj: griffe.Object, match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    shown = target.rsplit(".", 1)[-1] if short else target
    identifier = target
    head, _, rest = target.partition(".")
    try:
        resolved = obj.resolve(head)
        identifier = f"{resolved}.{rest}" if rest else resolved
    except (griffe.NameResolutionError, AttributeError, KeyError):
        pass
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


def _split_groups(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    in_params = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and _SECTION.match(lines[i + 1]) and line.strip():
            in_params = line.strip() in ("Parameters", "Other Parameters")
        group = _GROUP.match(line) if in_params and not line.startswith(" ") else None
        if not group:
            out.append(line)
            i += 1
            continue
        body = []
        i += 1
        while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
            if not lines[i].strip() and (i + 1 >= len(lines) or not lines[i + 1].startswith(" ")):
                break
            body.append(lines[i])
            i += 1
        for name in group.group(1).split(", "):
            out.append(name)
            out.extend(body)
    return "\n".join(out)
