"""Model and input loading for the ``saliency explain`` command, refusing files that run code.

:func:`load_model` turns a bundled name, a TorchScript or ``torch.export`` file, or a factory plus
weights into a :class:`LoadedModel`; :func:`load_inputs` (or :func:`iter_inputs`, one file at a
time) turns image and tensor files into :class:`Sample` objects and reports, without stopping,
each input that fails.

Examples
--------
>>> import tempfile, numpy as np, torch
>>> from pathlib import Path
>>> loaded = load_model("digits")
>>> tmp = tempfile.TemporaryDirectory()
>>> folder = Path(tmp.name)
>>> np.save(folder / "zeros.npy", np.zeros((4, 1, 8, 8), dtype=np.float32))
>>> inputs = load_inputs([folder], shape=loaded.input_shape, mean=loaded.mean, std=loaded.std)
>>> x = torch.stack([s.tensor for s in inputs.samples])
>>> loaded.model(x).shape, inputs.errors
(torch.Size([4, 10]), [])
>>> tmp.cleanup()
"""

from saliency.io.inputs import (
    InputError,
    LoadedInputs,
    Sample,
    find_inputs,
    iter_inputs,
    load_inputs,
)
from saliency.io.models import LoadedModel, UnsafeFileError, load_model

__all__ = [
    "InputError",
    "LoadedInputs",
    "LoadedModel",
    "Sample",
    "UnsafeFileError",
    "find_inputs",
    "iter_inputs",
    "load_inputs",
    "load_model",
]
