"""Load a model to explain from a bundled name, a file or a factory, without running file code."""

from __future__ import annotations

import importlib
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load_file
from torch import nn

from saliency import models as bundled
from saliency.io import exported
from saliency.io.errors import UnsafeFileError
from saliency.io.pickles import TRUST, is_safetensors, is_state_dict, load_restricted

__all__ = ["LoadedModel", "UnsafeFileError", "load_model"]

_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to call, and what is known about it.

    Attributes
    ----------
    model : callable
        Maps a batch ``[B, *input_shape]`` to outputs ``[B, C]``. An ``nn.Module`` in eval mode for
        every form except a factory that returns a plain function.
    source : str
        What was loaded, for messages, e.g. ``"TorchScript file 'cnn.pt'"``.
    format : str
        ``"bundled"``, ``"torchscript"``, ``"export"``, ``"factory"`` or ``"pickle"``.
    class_names, feature_names : tuple of str or None
        Known for bundled models only (``feature_names`` is ``None`` for images).
    input_shape : tuple of int or None
        Shape of one input without the batch dimension, where the form records it: bundled models
        and ``torch.export`` programs.
    mean, std : tuple of float or None
        Normalisation the model expects after pixels are scaled to [0, 1] (bundled models only).
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    source: str
    format: str
    class_names: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def load_model(
    spec: str | Path,
    *,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a model to explain, refusing files that would run code when loaded.

    Parameters
    ----------
    spec : str or Path
        One of

        - a bundled model name (:func:`saliency.models.available`); a file of the same name is
          reached as ``./name``;
        - a TorchScript file (``torch.jit.save``);
        - a ``torch.export`` archive (``torch.export.save``), exported with a dynamic or a static
          batch size: a static one is run in chunks of that size, so any batch works. Archives
          with pickled parts or compiled code are refused like pickles;
        - ``"package.module:factory"``: the module is imported (it is your code) and the factory
          called with no arguments; `weights` are then loaded into the module it returns;
        - a full model saved with ``torch.save(model)``: refused, because unpickling it imports
          and calls whatever the file names, unless `trust_pickle` is set.
    weights : str or Path, optional
        For a factory only: a safetensors file, or a state dict read with
        ``torch.load(weights_only=True)``. Loaded strictly (every key must match).
    trust_pickle : bool
        Load files that can run code when loaded (pickles, compiled code in ``.pt2`` archives).
    device : str or torch.device
        Where the model runs.

    Returns
    -------
    LoadedModel
        A model freshly loaded for this call, in eval mode, on `device`.

    Raises
    ------
    FileNotFoundError
        If `spec` (not a bundled name or factory) or `weights` does not exist.
    UnsafeFileError
        If loading a file could run code and `trust_pickle` is false.
    ValueError
        If a file is of no supported form, a factory cannot be imported, `weights` do not fit,
        or an exported program runs in training mode.

    Examples
    --------
    >>> loaded = load_model("digits")
    >>> loaded.format, loaded.input_shape, loaded.model.training
    ('bundled', (1, 8, 8), False)
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected a torch device like 'cuda:0'; got {device!r}") from e
    if isinstance(spec, str) and spec in bundled.available():
        _no_weights(weights, f"bundled model {spec!r}")
        model, info = bundled.load(spec)
        return LoadedModel(
            model=model.to(device),
            source=f"bundled model {spec!r}",
            format="bundled",
            class_names=tuple(info.class_names),
            feature_names=None if info.feature_names is None else tuple(info.feature_names),
            input_shape=tuple(info.input_shape),
            # Text models take token ids: no normalisation statistics to apply.
            mean=tuple(info.mean) or None,
            std=tuple(info.std) or None,
        )
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec: expected a str or Path; got {type(spec).__name__}")
    path = Path(spec)
    if isinstance(spec, str) and not path.exists() and _FACTORY.fullmatch(spec):
        return _from_factory(spec, weights, trust_pickle, device)
    _no_weights(weights, f"model file {str(path)!r}")
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"spec: {str(path)!r} {what}; expected a bundled model name "
            f"({', '.join(bundled.available())}), a model file, or package.module:factory"
        )
    with path.open("rb") as f:
        return _from_file(f, path, trust_pickle, device)


def _no_weights(weights: object, what: str) -> None:
    if weights is not None:
        raise ValueError(
            f"weights: only used with package.module:factory; got {str(weights)!r} for {what}"
        )


def _from_file(f: BinaryIO, path: Path, trust_pickle: bool, device: torch.device) -> LoadedModel:
    name = repr(str(path))
    if zipfile.is_zipfile(f):
        f.seek(0)
        with zipfile.ZipFile(f) as archive:
            names = archive.namelist()
            torchscript = any(n.endswith("/constants.pkl") or "/code/" in n for n in names)
            export = exported.is_export_archive(archive)
            unsafe = exported.unsafe_parts(archive) if export else []
        f.seek(0)
        if torchscript:
            try:
                with warnings.catch_warnings():
                    # torch 2.9+ deprecates TorchScript on every load; it is still a supported
                    # input here, and the command should not repeat torch's notice each run.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    model = torch.jit.load(f, map_location=device)
            except RuntimeError as e:
                raise ValueError(f"spec: {name} is TorchScript but fails to load: {e}") from e
            return LoadedModel(model.eval(), f"TorchScript file {name}", "torchscript")
        if export:
            return _from_export(f, name, unsafe, trust_pickle, device)
    elif is_safetensors(f):
        raise ValueError(
            f"spec: {name} holds weights only (safetensors); pass the code that builds the model "
            f"as package.module:factory with weights={name}"
        )
    f.seek(0)
    loaded = load_restricted(f, path, "spec", trust_pickle, device)
    if is_state_dict(loaded):
        raise ValueError(
            f"spec: {name} holds a state dict ({len(loaded)} tensors), which needs the code of its "
            f"model: pass package.module:factory with weights={name}"
        )
    if not callable(loaded):
        raise ValueError(f"spec: {name} holds a {type(loaded).__name__}, not a model")
    if isinstance(loaded, nn.Module):
        loaded = loaded.to(device).eval()
    return LoadedModel(loaded, f"pickled model {name} (trusted)", "pickle")


def _from_export(
    f: BinaryIO, name: str, unsafe: list[str], trust_pickle: bool, device: torch.device
) -> LoadedModel:
    if unsafe and not trust_pickle:
        raise UnsafeFileError(
            f"spec: refused to load torch.export archive {name}: loading these parts could run "
            f"arbitrary code: {'; '.join(unsafe)}. Export the model again with plain tensor "
            f"weights. {TRUST}"
        )
    try:
        program = torch.export.load(f)
    except Exception as e:  # torch raises many types for a damaged archive
        raise ValueError(f"spec: {name} is a torch.export archive that fails to load: {e}") from e
    training = exported.training_ops(program)
    if training:
        raise ValueError(
            f"spec: {name} was exported in training mode ({', '.join(sorted(set(training)))}): "
            "batch statistics couple the samples and dropout is random. Call model.eval() "
            "before torch.export.export"
        )
    try:
        model, shape = exported.wrap(program, device)
    except ValueError as e:
        raise ValueError(f"spec: {name}: {e}") from e
    batch = "any batch" if model.batch_size is None else f"static batch {model.batch_size}"
    return LoadedModel(model, f"torch.export program {name} ({batch})", "export", input_shape=shape)


def _from_factory(
    spec: str, weights: str | Path | None, trust_pickle: bool, device: torch.device
) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"spec: cannot import {module_name!r} for factory {spec!r}: {e}") from e
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"spec: {module_name!r} has no attribute {attribute!r} ({spec!r})")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"spec: {spec!r} is a {type(factory).__name__}, not a callable factory")
    model = factory()
    source = f"factory {spec!r}"
    if weights is not None:
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"weights: factory {spec!r} returned a {type(model).__name__}; weights can only "
                "be loaded into an nn.Module"
            )
        path = Path(weights)
        state = _load_weights(path, trust_pickle)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"weights: {str(path)!r} do not fit the model built by {spec!r}: {e}"
            ) from None
        source += f" with weights {str(path)!r}"
    if isinstance(model, nn.Module):
        model = model.to(device).eval()
    elif not callable(model):
        raise ValueError(f"spec: factory {spec!r} returned a {type(model).__name__}, not a model")
    return LoadedModel(model, source, "factory")


def _load_weights(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights: no such file {str(path)!r}")
    with path.open("rb") as f:
        if is_safetensors(f):
            try:
                return load_file(str(path))
            except Exception as e:  # SafetensorError and OSError for a damaged file
                raise ValueError(f"weights: {str(path)!r} is damaged safetensors: {e}") from e
        state = load_restricted(f, path, "weights", trust_pickle, torch.device("cpu"))
    if not is_state_dict(state):
        keys = f" with keys {list(state)[:8]}" if isinstance(state, Mapping) else ""
        raise ValueError(
            f"weights: {str(path)!r} holds a {type(state).__name__}{keys}; expected a state dict "
            "(a mapping from parameter names to tensors)"
        )
    return dict(state)
