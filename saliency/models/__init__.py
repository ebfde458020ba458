"""Bundled trained models and their held-out data.

The text model ``"sentiment"`` takes token ids: :func:`tokenize` and :func:`tokens` convert
between sentences and ids, and :func:`valences` says which positions hold the words that decide
the label. The language model ``"reverse"`` continues ``<bos> x1 .. xn <sep>`` with
``xn .. x1 <eos>``; :func:`sources` says which prompt position every answer token copies.

Examples
--------
>>> from saliency import models
>>> model, info = models.load("digits")
>>> x, y = models.held_out("digits", n=8)
>>> model(x).argmax(dim=1).shape
torch.Size([8])
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from saliency.models import data
from saliency.models.architectures import CancerMLP, DigitsCNN, ReverseLM, SentimentTransformer

__all__ = [
    "ModelInfo",
    "available",
    "held_out",
    "load",
    "sources",
    "tokenize",
    "tokens",
    "valences",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ModelInfo:
    """Description of a bundled model, read from its weights file.

    Attributes
    ----------
    name : str
        Name accepted by :func:`load`.
    class_names : list of str
        Label of each output logit, in order (for the language model, its vocabulary).
    feature_names : list of str or None
        Name of each input feature; ``None`` for images and text.
    input_shape : tuple of int
        Shape of one input, without the batch dimension (``(T,)`` token ids for text; for the
        language model, the held-out prompts' padded length).
    mean, std : list of float
        Statistics used to normalise inputs (after scaling digit pixels by 1/16); empty for text.
    held_out_accuracy : float
        Accuracy on the full held-out split, measured when the weights were written (for the
        language model: the share of prompts whose greedy continuation is exactly right).
    description : str
        What the model is and was trained on, with the sources and licences of its data.
    vocabulary : list of str or None
        Text models: the word of each token id (``"<pad>"`` is id 0, ``"<unk>"`` id 1).
    valences : list of int or None
        Text models: the valence of each token id, 0 for words that do not decide the label.
    generator : dict or None
        Text models: settings of :class:`saliency.models.data.SentenceGenerator` (for
        ``"reverse"``, :class:`~saliency.models.data.ReversalGenerator`) that regenerate the
        training and held-out data.
    """

    name: str
    class_names: list[str]
    feature_names: list[str] | None
    input_shape: tuple[int, ...]
    mean: list[float]
    std: list[float]
    held_out_accuracy: float
    description: str
    # Optional, so that weights files written before text models existed still load.
    vocabulary: list[str] | None = None
    valences: list[int] | None = None
    generator: dict[str, int | float] | None = None

    def to_metadata(self) -> dict[str, str]:
        """Encode as a safetensors metadata header (every value a JSON string)."""
        return {key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelInfo:
        """Decode a header written by :meth:`to_metadata`; extra keys are ignored."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [key for key in required if key not in metadata]
        if missing:
            raise ValueError(f"metadata: missing keys {missing}; expected those of ModelInfo")
        values = {f.name: json.loads(metadata[f.name]) for f in fields(cls) if f.name in metadata}
        values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)


@dataclass(frozen=True)
class _Entry:
    architecture: type[nn.Module]
    filename: str


# Model names double as data-set names (see ``data.DATASETS``).
_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(DigitsCNN, "digits_cnn.safetensors"),
    "breast_cancer": _Entry(CancerMLP, "breast_cancer_mlp.safetensors"),
    "sentiment": _Entry(SentimentTransformer, "sentiment_transformer.safetensors"),
    "reverse": _Entry(ReverseLM, "reverse_lm.safetensors"),
}


def available() -> list[str]:
    """Return the names accepted by :func:`load`."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name must be one of {available()}; got {name!r}")
    return _REGISTRY[name]


def _info(path: Path) -> ModelInfo:
    with safe_open(str(path), framework="pt") as f:
        return ModelInfo.from_metadata(f.metadata())


def _build(entry: _Entry, info: ModelInfo) -> nn.Module:
    """A fresh, untrained instance of the entry's architecture, sized for `info`."""
    if info.vocabulary is None:
        return entry.architecture()
    if entry.architecture is ReverseLM:
        return ReverseLM(vocab_size=len(info.vocabulary), eos_token_id=data.EOS_ID)
    return entry.architecture(vocab_size=len(info.vocabulary), classes=len(info.class_names))


def load(name: str) -> tuple[nn.Module, ModelInfo]:
    """Load a bundled model.

    Parameters
    ----------
    name : str
        One of :func:`available`.

    Returns
    -------
    model : torch.nn.Module
        A new instance in eval mode on the CPU; callers may modify it freely.
    info : ModelInfo

    Raises
    ------
    ValueError
        If `name` is not a bundled model.
    """
    entry = _entry(name)
    path = WEIGHTS_DIR / entry.filename
    info = _info(path)
    model = _build(entry, info)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), info


def held_out(name: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return held-out samples the model never saw in training.

    Parameters
    ----------
    name : str
        One of :func:`available`.
    n : int, optional
        Number of samples, taken from the start of the held-out split; all if ``None``.

    Returns
    -------
    x : torch.Tensor
        float32 inputs ``[n, *input_shape]``, normalised the way the model expects; for text
        models, int64 token ids ``[n, T]``, regenerated from the weights file's metadata (for
        ``"reverse"``, prompts left-padded with PAD, id 0: pass ``attention_mask=x != 0``).
    y : torch.Tensor
        int64 labels ``[n]``; for ``"reverse"``, the right answers ``[n, T_out]`` (the letters
        reversed, ``<eos>``, then PAD).

    Raises
    ------
    ValueError
        If `name` is not a bundled model or `n` is out of range.
    """
    info = _info(WEIGHTS_DIR / _entry(name).filename)
    if name in data.GENERATION_DATASETS:
        settings = data.ReversalGenerator.from_dict(info.generator)
        n = _check_n(n, settings.held_out_size, name)
        prompts, answers = data.generate_reversals(settings, "held_out", n)
        return torch.from_numpy(prompts), torch.from_numpy(answers)
    if info.generator is not None:
        settings = data.SentenceGenerator.from_dict(info.generator)
        n = _check_n(n, settings.held_out_size, name)
        ids, labels = data.generate_sentences(info.valences, settings, "held_out", n)
        return torch.from_numpy(ids), torch.from_numpy(labels)
    split = data.raw_split(name)
    n = _check_n(n, len(split.y_held_out), name)
    # Normalise with the statistics stored alongside the weights, which are what the model saw.
    x = data.normalise(name, split.x_held_out[:n], info.mean, info.std)
    return x, torch.tensor(split.y_held_out[:n], dtype=torch.int64)


def _check_n(n: object, total: int, name: str) -> int:
    if n is None:
        return total
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n <= total:
        raise ValueError(f"n must be None or an int in [0, {total}] for {name!r}; got {n!r}")
    return int(n)


def _text_info(name: str, words: bool = True) -> ModelInfo:
    """The info of a model that takes token ids: one of words (sentences, valences) when
    ``words``, else any (the language model's tokens too)."""
    info = _info(WEIGHTS_DIR / _entry(name).filename)
    if info.vocabulary is None or (words and info.valences is None):
        text = [
            m
            for m in available()
            if (i := _info(WEIGHTS_DIR / _entry(m).filename)).vocabulary
            and (i.valences is not None or not words)
        ]
        raise ValueError(f"name: expected a text model ({', '.join(text)}); got {name!r}")
    return info


def _check_ids(ids: object, info: ModelInfo) -> torch.Tensor:
    vocab = len(info.vocabulary)
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.ndim != 2:
        what = (
            f"{ids.dtype} tensor of shape {list(ids.shape)}"
            if isinstance(ids, torch.Tensor)
            else type(ids).__name__
        )
        raise ValueError(f"ids: expected an int64 tensor [n, T]; got {what}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(
            f"ids: expected token ids in [0, {vocab}) for {info.name!r}; "
            f"got values from {int(ids.min())} to {int(ids.max())}"
        )
    return ids.detach().cpu()


def tokenize(name: str, sentences: str | Sequence[str]) -> torch.Tensor:
    """Turn sentences into the token ids a text model takes.

    Words are lower-cased and split on white space, with punctuation around them dropped. A
    word outside the vocabulary becomes ``"<unk>"`` (id 1), which the model was trained to treat
    as neutral. PAD ids (0) fill each row after its last word.

    Parameters
    ----------
    name : str
        A text model of :func:`available`, such as ``"sentiment"``.
    sentences : str or sequence of str
        One sentence or several, each of 1 to ``T`` words (``T = info.input_shape[0]``).

    Returns
    -------
    torch.Tensor
        int64 ids ``[n, T]``; ``n = 1`` for a single str.

    Raises
    ------
    ValueError
        If `name` is not a text model, or a sentence has no words or more than ``T``.

    Examples
    --------
    >>> from saliency import models
    >>> ids = models.tokenize("sentiment", ["A great movie!", "the plot was awful"])
    >>> ids.shape
    torch.Size([2, 16])
    >>> models.tokens("sentiment", ids)
    [['a', 'great', 'movie'], ['the', 'plot', 'was', 'awful']]
    """
    info = _text_info(name)
    if isinstance(sentences, str):
        sentences = [sentences]
    elif not isinstance(sentences, Sequence):
        raise TypeError(
            f"sentences: expected a str or a sequence of str; got {type(sentences).__name__}"
        )
    ids = data.encode(info.vocabulary, sentences, info.input_shape[0])
    return torch.from_numpy(ids)


def tokens(name: str, ids: torch.Tensor) -> list[list[str]]:
    """Turn token ids back into words, one list per row; ``" ".join`` gives the sentence.

    The PAD ids after a row's last word are left out, so word ``j`` of a row is at position
    ``j`` of `ids`; a PAD id before a word shows as ``"<pad>"``.

    Parameters
    ----------
    name : str
        A text model of :func:`available` (``"reverse"`` included).
    ids : torch.Tensor
        int64 token ids ``[n, T]``, as from :func:`tokenize` or :func:`held_out`.

    Returns
    -------
    list of list of str

    Raises
    ------
    ValueError
        If `name` is not a text model, or `ids` is not a 2-D int64 tensor of known ids.

    Examples
    --------
    >>> from saliency import models
    >>> ids, labels = models.held_out("sentiment", n=1)
    >>> len(models.tokens("sentiment", ids)[0]) == int((ids[0] != 0).sum())
    True
    """
    info = _text_info(name, words=False)
    return data.decode(info.vocabulary, _check_ids(ids, info).numpy())


def valences(name: str, ids: torch.Tensor) -> torch.Tensor:
    """Return the valence of the word at each position: the ground truth of which tokens matter.

    The label of a generated sentence is the sign of the sum of its valences, so the non-zero
    positions (``valences(...) != 0``) are exactly the words that decide it; fillers, UNK and PAD
    have valence 0. The values come from the AFINN lexicon (integers in [-5, 5]).

    Parameters
    ----------
    name : str
        A text model of :func:`available`.
    ids : torch.Tensor
        int64 token ids ``[n, T]``.

    Returns
    -------
    torch.Tensor
        float32 ``[n, T]``.

    Raises
    ------
    ValueError
        If `name` is not a text model, or `ids` is not a 2-D int64 tensor of known ids.

    Examples
    --------
    >>> from saliency import models
    >>> ids = models.tokenize("sentiment", "a great movie")
    >>> models.valences("sentiment", ids)[0, :4].tolist()
    [0.0, 3.0, 0.0, 0.0]
    """
    info = _text_info(name)
    table = torch.tensor(info.valences, dtype=torch.float32)
    return table[_check_ids(ids, info)]


def sources(name: str, prompts: torch.Tensor) -> torch.Tensor:
    """Return where every answer token comes from: the ground truth of a generation.

    For ``"reverse"``, answer token ``t`` copies one letter of the prompt; its column in
    `prompts` is entry ``t`` of the result (``-1`` for ``<eos>`` and the padding after it).

    Parameters
    ----------
    name : str
        ``"reverse"``.
    prompts : torch.Tensor
        int64 ``[n, T]`` prompts as from :func:`held_out`.

    Returns
    -------
    torch.Tensor
        int64 ``[n, T_out]`` prompt columns.

    Examples
    --------
    >>> from saliency import models
    >>> prompts, answers = models.held_out("reverse", n=1)
    >>> column = models.sources("reverse", prompts)[0, 0]
    >>> bool(prompts[0, column] == answers[0, 0])
    True
    """
    if name not in data.GENERATION_DATASETS:
        raise ValueError(
            f"name: expected a language model with known sources "
            f"({', '.join(data.GENERATION_DATASETS)}); got {name!r}"
        )
    info = _info(WEIGHTS_DIR / _entry(name).filename)
    width = data.ReversalGenerator.from_dict(info.generator).max_letters
    ids = _check_ids(prompts, info)
    return torch.from_numpy(data.reversal_sources(ids.numpy(), width))
