"""The explanation methods, each one record beside its code, and the registry that collects them.

Each method module ends in ``RECORDS = (MethodRecord(...),)``: the method's name and aliases, its
function, the options the command exposes (and so how the command builds the method), what its
Attribution gives the audit metrics, and whether it needs ``layer``, runs the engine (takes
``strategy``) or draws random numbers (takes ``seed``). The package's namespace, the command,
:func:`saliency.audit.run` and its fit checks read these records; nothing else lists methods.

A new method is one module in this package (its math and its record), its test and its docs
page. A method defined elsewhere joins through :func:`register`.

This module imports no torch: the command reads the records to print ``--help`` quickly.

Examples
--------
>>> record = method("ig")
>>> record.name, record.aliases, record.engine, record.seed
('integrated_gradients', ('ig',), True, True)
>>> [o.flag for o in record.options]
['--steps']
>>> "gradcam" in names() and "gradcam" not in names(by_name_alone=True)
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .._records import Name, Registry, suggest

__all__ = [
    "PROVIDES",
    "MethodRecord",
    "Option",
    "added",
    "declared",
    "find",
    "method",
    "methods",
    "names",
    "of",
    "register",
    "registered",
    "suggest",
    "unregister",
]

# What an Attribution can give the audit metrics; a metric record names what it needs.
PROVIDES: dict[str, str] = {
    "input_maps": "maps of the input's own shape (one value per input feature)",
    "gradients": "plain input gradients d F_k / d x (saliency.gradients without times_input, "
    "abs or layer)",
    "delta": "the completeness gap of every row (Attribution.delta)",
}

_TYPES = {"int": int, "float": float, "str": str}


@dataclass(frozen=True, kw_only=True)
class Option:
    """An option of a method that the command exposes: ``--flag VALUE`` -> ``name=VALUE``.

    Two methods that share an option (same ``name``) share its flag and must agree on its type
    and default.
    """

    name: str  # the method's keyword argument
    help: str
    type: type = int  # int, float or str
    default: object = None  # None: the method's own default
    minimum: float | None = None  # the smallest value accepted
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: object, method: str) -> None:
        """Refuse a value the option cannot take, naming the flag."""
        if value is None:
            if self.required:
                raise ValueError(f"{self.flag}: {method} needs {self.help}")
            return
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.flag}: expected at least {self.minimum:g}, got {value}")


@dataclass(frozen=True, kw_only=True)
class MethodRecord:
    """One method's record.

    ``function`` follows :class:`saliency.methods.Method`; in the records :func:`declared`
    returns it is the function's name only. ``provides`` lists what its Attribution gives the
    metrics (keys of :data:`PROVIDES`), and ``loses`` what an option takes away when a
    ``functools.partial`` sets it (``times_input`` makes gradients no longer plain gradients).
    ``engine``: it runs the engine and takes ``strategy`` (data-set runs pin one). ``seed``: it
    draws random numbers and takes ``seed``. ``needs_layer``: it cannot run without
    ``layer=``.
    """

    name: str
    function: Callable
    summary: str  # one line, for the command's --help
    doc: str  # its docs page, relative to docs/
    aliases: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    provides: tuple[str, ...] = ("input_maps",)
    loses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    engine: bool = True
    seed: bool = False
    needs_layer: bool = False

    @property
    def words(self) -> tuple[str, ...]:
        """Every name it answers to: its own, then its aliases."""
        return (self.name, *self.aliases)

    def build(self, values: Mapping[str, object], *, seed: int | None = None) -> Callable:
        """The method with the command's option ``values`` (by option name) and ``seed`` set:
        options left at None keep the method's own defaults."""
        chosen = {}
        for option in self.options:
            value = values.get(option.name)
            option.check(value, self.name)
            if value is not None:
                chosen[option.name] = value
        if self.seed and seed is not None:
            chosen["seed"] = seed
        return functools.partial(self.function, **chosen) if chosen else self.function

    def gives(self, bound: Mapping[str, object]) -> set[str]:
        """What its Attribution gives when ``bound`` options are set (see ``loses``)."""
        out = set(self.provides)
        for option, value in bound.items():
            if value is not None and value is not False:
                out -= set(self.loses.get(option, ()))
        return out


def _light(fields: dict) -> MethodRecord:
    fields = dict(fields)
    fields["options"] = tuple(_option(o) for o in fields.get("options", ()))
    fields.setdefault("function", Name(fields["name"]))
    return MethodRecord(**fields)


def _option(fields: dict) -> Option:
    fields = {k: v for k, v in fields.items() if k != "__record__"}
    if "type" in fields:
        fields["type"] = _TYPES[fields["type"]]
    return Option(**fields)


_REGISTRY = Registry("saliency.methods", MethodRecord, _light)


def methods() -> list[MethodRecord]:
    """Every method's record (importing the method modules), then those registered."""
    return _REGISTRY.imported()


def declared() -> list[MethodRecord]:
    """The records as declared, without importing the method modules (``function`` is the
    function's name), then those registered; for the command's ``--help``."""
    return _REGISTRY.declared()


def names(*, by_name_alone: bool = False, light: bool = False) -> list[str]:
    """Every method's name; ``by_name_alone``: only those that run given their name alone (not
    those that need ``layer``). ``light`` reads the declarations, not the modules."""
    found = declared() if light else methods()
    return [r.name for r in found if not (by_name_alone and r.needs_layer)]


def find(word: str, *, light: bool = False) -> MethodRecord | None:
    """The record of the method named ``word`` (or aliased so), or None."""
    return _REGISTRY.find(word, light=light)


def method(word: str, *, light: bool = False) -> MethodRecord:
    """The record of the method named ``word``, or a clear error with the nearest names."""
    record = find(word, light=light)
    if record is None:
        raise ValueError(
            f"method: unknown method {word!r}{suggest(word, _REGISTRY.words(light=light))}"
        )
    return record


def of(function: Callable) -> MethodRecord | None:
    """The record whose function ``function`` is (through any ``functools.partial``), or None."""
    while isinstance(function, functools.partial):
        function = function.func
    return next((r for r in methods() if r.function is function), None)


def register(record: MethodRecord) -> MethodRecord:
    """Add a method defined outside this package: the namespace, the command and data-set runs
    find it as they find the package's own. Its names must be new."""
    return _REGISTRY.register(record)


def added(name: str) -> MethodRecord | None:
    """The record added with :func:`register` under ``name``, or None."""
    return _REGISTRY.added.get(name)


def unregister(name: str) -> None:
    """Remove a method added with :func:`register`."""
    _REGISTRY.unregister(name)


def registered(record: MethodRecord):
    """:func:`register` for the duration of a ``with`` block."""
    return _REGISTRY.registered(record)
