"""Plug-in records (methods, metrics): as their modules declare them, as imported, as registered.

Methods and metrics are declared beside their code, each module ending in
``RECORDS = (Record(name=..., ...), ...)``. Those modules import torch, which takes seconds; the
command prints ``--help`` from the records without importing it, so :func:`read` reads the
declarations themselves. Every keyword that is a literal (text, numbers, tuples, lists, dicts,
nested record calls such as ``Option(...)``) is read as written, and a plain name (a function,
``int``) as a :class:`Name`; a keyword written any other way is left out of the fields.
:class:`Registry` holds one kind of record: imported from the modules that declare them, read
without importing them, and added at run time (:mod:`saliency.methods.records`,
:mod:`saliency.audit.records`).

Examples
--------
>>> found = read("saliency.methods")
>>> gradients = next(d for d in found if d.fields["name"] == "gradients")
>>> gradients.module, gradients.kind, gradients.fields["function"]
('saliency.methods._gradients', 'MethodRecord', 'gradients')
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Declared", "Name", "Registry", "read", "suggest"]

_ROOT = Path(__file__).resolve().parent
_VARIABLE = "RECORDS"


class Name(str):
    """A name a declaration refers to (a function, a type), not evaluated."""


@dataclass(frozen=True)
class Declared:
    """One record as declared: its module, the record's class and its keyword arguments."""

    module: str
    kind: str
    fields: dict


@functools.cache
def read(package: str) -> tuple[Declared, ...]:
    """The records that the private modules (``_*.py``) of ``package`` declare, in file order.

    ``package`` is a package of this distribution, e.g. ``"saliency.audit"``.
    """
    parts = package.split(".")
    if parts[0] != "saliency":
        raise ValueError(f"package: expected a package of saliency, got {package!r}")
    folder = _ROOT.joinpath(*parts[1:])
    found = []
    for path in sorted(folder.glob("_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in _record_calls(tree):
            module = f"{package}.{path.stem}"
            found.append(Declared(module, _callee(call), _keywords(call)))
    return tuple(found)


def _record_calls(tree: ast.Module) -> list[ast.Call]:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == _VARIABLE for t in targets):
            value = node.value
            items = value.elts if isinstance(value, ast.Tuple | ast.List) else [value]
            return [item for item in items if isinstance(item, ast.Call)]
    return []


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _keywords(call: ast.Call) -> dict:
    fields = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            continue
        try:
            fields[keyword.arg] = _value(keyword.value)
        except ValueError:
            continue  # not a literal: only the imported record has it
    return fields


def _value(node: ast.expr) -> object:
    if isinstance(node, ast.Name):
        return Name(node.id)
    if isinstance(node, ast.Call) and not node.args:
        return {"__record__": _callee(node), **_keywords(node)}
    if isinstance(node, ast.Tuple):
        return tuple(_value(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values, strict=True)}
    return ast.literal_eval(node)


class Registry:
    """The records of one kind (``kind``, a record class) declared in ``package``'s modules.

    ``light(fields)`` makes a record from declared fields (without importing its module);
    records answer to ``record.words`` (their name, then any aliases).
    """

    def __init__(self, package: str, kind: type, light: Callable[[dict], object]) -> None:
        self.package, self.kind, self.light = package, kind, light
        self.added: dict[str, object] = {}

    def imported(self) -> list:
        """Every declared record, importing the modules that declare them, then those added."""
        modules = dict.fromkeys(d.module for d in self._declared())
        found = []
        for module in modules:
            records = importlib.import_module(module).RECORDS
            found += [r for r in records if isinstance(r, self.kind)]
        return [*found, *self.added.values()]

    def declared(self) -> list:
        """Every record as declared (no module imported), then those added."""
        return [*(self.light(d.fields) for d in self._declared()), *self.added.values()]

    def find(self, word: object, *, light: bool = False) -> object | None:
        """The record answering to ``word``, or None."""
        for record in self.declared() if light else self.imported():
            if word in record.words:
                return record
        return None

    def words(self, *, light: bool = False) -> list[str]:
        return [w for r in (self.declared() if light else self.imported()) for w in r.words]

    def register(self, record: object) -> object:
        if not isinstance(record, self.kind):
            raise TypeError(f"record: expected a {self.kind.__name__}, got {type(record).__name__}")
        if not callable(record.function):
            raise TypeError(f"record: function must be callable, got {record.function!r}")
        taken = [w for w in record.words if self.find(w, light=True) is not None]
        if taken:
            raise ValueError(f"record: the name {taken[0]!r} is taken")
        self.added[record.name] = record
        return record

    def unregister(self, name: str) -> None:
        if name not in self.added:
            raise ValueError(
                f"name: {name!r} was not registered (registered: {sorted(self.added)})"
            )
        del self.added[name]

    @contextmanager
    def registered(self, record: object) -> Iterator[object]:
        self.register(record)
        try:
            yield record
        finally:
            self.unregister(record.name)

    def _declared(self) -> list[Declared]:
        return [d for d in read(self.package) if d.kind == self.kind.__name__]


def suggest(word: object, choices: list[str], *, listed: bool = True) -> str:
    """``"; did you mean 'x'?"`` for the nearest of ``choices``, then (``listed``) the choices.

    Examples
    --------
    >>> suggest("smothgrad", ["gradients", "smoothgrad"])
    "; did you mean 'smoothgrad'? (expected one of: gradients, smoothgrad)"
    >>> suggest("xyz", ["gradients"]), suggest("digit", ["digits"], listed=False)
    (' (expected one of: gradients)', "; did you mean 'digits'?")
    """
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (expected one of: {', '.join(choices)})" if listed else hint
