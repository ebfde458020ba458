"""Package namespaces whose public names are imported when first used, methods and metrics
included from their records.

``import saliency`` then costs nothing until a name is used, so that the command prints
``--help`` without importing torch, and a method or metric joins the namespace by declaring its
record (:mod:`saliency._records`), with no list of names to edit.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping

from ._records import Name, read

__all__ = ["namespace"]


def namespace(
    package: str,
    *,
    exports: Mapping[str, str],
    records: tuple[str, str] | None = None,
    submodules: Iterable[str] = (),
    registered: Callable[[str], object] | None = None,
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.

    ``exports`` maps a public name to the module (relative to ``package``) that defines it;
    ``records`` = ``(package, kind)`` adds the ``function`` and ``result`` of every record of
    that kind declared there; ``submodules`` are imported on first use; ``registered(name)``
    returns a plug-in added at run time, or None (it is looked up every time, not kept).
    """
    table: dict[str, tuple[str, str]] | None = None
    modules = tuple(submodules)

    def where() -> dict[str, tuple[str, str]]:
        nonlocal table
        if table is None:
            table = {name: (module, name) for name, module in exports.items()}
            for declared in read(records[0]) if records else ():
                if declared.kind != records[1]:
                    continue
                for key in ("function", "result"):
                    value = declared.fields.get(key)
                    if isinstance(value, Name):
                        table[str(value)] = (declared.module, str(value))
        return table

    def __getattr__(name: str) -> object:
        if name == "__all__":
            return sorted(where())
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        found = where().get(name)
        if found is not None:
            module, attribute = found
            value = getattr(importlib.import_module(module, package), attribute)
            setattr(sys.modules[package], name, value)  # found once; then an attribute
            return value
        if registered is not None and not name.startswith("__"):
            value = registered(name)
            if value is not None:
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        own = [n for n in vars(sys.modules[package]) if not n.startswith("_") and n != "typing"]
        return sorted({*own, *where(), *modules})

    return __getattr__, __dir__
