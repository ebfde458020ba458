"""The bundled models' data: scikit-learn sets with a fixed split, and generated sentences.

The scikit-learn sets (digits, breast cancer) are split 80/20 and normalised. The sentiment
sentences are generated deterministically from a lexicon (vocabulary and per-word valence) and
generator settings, both stored in the model's weights file, so no word list is needed at run time.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Literal

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "GENERATION_DATASETS",
    "PAD",
    "PAD_ID",
    "REVERSE_VOCABULARY",
    "TEXT_DATASETS",
    "UNK",
    "UNK_ID",
    "RawSplit",
    "ReversalGenerator",
    "SentenceGenerator",
    "decode",
    "encode",
    "fit_normalisation",
    "generate_reversals",
    "generate_sentences",
    "normalise",
    "raw_split",
]

TEXT_DATASETS: tuple[str, ...] = ("sentiment",)
GENERATION_DATASETS: tuple[str, ...] = ("reverse",)
DATASETS: tuple[str, ...] = ("digits", "breast_cancer", *TEXT_DATASETS, *GENERATION_DATASETS)
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class RawSplit:
    """Un-normalised train/held-out split of one data set.

    Attributes
    ----------
    x_train, x_held_out : numpy.ndarray
        Read-only float64 feature matrices ``[N, F]`` exactly as scikit-learn returns them.
    y_train, y_held_out : numpy.ndarray
        Read-only int64 labels ``[N]``.
    class_names : tuple of str
    feature_names : tuple of str or None
        ``None`` for images, whose pixels are not named features.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_held_out: np.ndarray
    y_held_out: np.ndarray
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None


def _check_dataset(name: str) -> None:
    if name in GENERATION_DATASETS:
        raise ValueError(
            f"name: {name!r} is a generated data set of token sequences; use generate_reversals"
        )
    if name in TEXT_DATASETS:
        raise ValueError(
            f"name: {name!r} is a generated text data set; use generate_sentences, not the "
            "scikit-learn split and normalisation"
        )
    if name not in DATASETS:
        raise ValueError(f"name must be one of {list(DATASETS)}; got {name!r}")


def _read_only(a: np.ndarray) -> np.ndarray:
    # The split is cached and shared between callers, so nobody may mutate it in place.
    a.flags.writeable = False
    return a


@cache
def raw_split(name: str) -> RawSplit:
    """Load a data set and split it 80/20, stratified, with a fixed seed.

    Parameters
    ----------
    name : {"digits", "breast_cancer"}

    Returns
    -------
    RawSplit
    """
    _check_dataset(name)
    # Imported here so that importing the package does not pay for scikit-learn.
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    if name == "digits":
        bunch = load_digits()
        class_names = tuple(str(c) for c in range(10))
        feature_names = None
    else:
        bunch = load_breast_cancer()
        class_names = tuple(str(c) for c in bunch.target_names)
        feature_names = tuple(str(f) for f in bunch.feature_names)
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_ho, y_tr, y_ho = train_test_split(
        x, y, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return RawSplit(
        x_train=_read_only(x_tr),
        y_train=_read_only(y_tr),
        x_held_out=_read_only(x_ho),
        y_held_out=_read_only(y_ho),
        class_names=class_names,
        feature_names=feature_names,
    )


def _scaled(name: str, x: np.ndarray) -> np.ndarray:
    # Digit pixels are integers in [0, 16]; bring them to [0, 1] before standardising.
    return x / 16.0 if name == "digits" else x


def fit_normalisation(name: str, x_train: np.ndarray) -> tuple[list[float], list[float]]:
    """Compute the normalisation statistics from training inputs.

    Parameters
    ----------
    name : {"digits", "breast_cancer"}
    x_train : numpy.ndarray
        Un-normalised training inputs ``[N, F]``.

    Returns
    -------
    mean, std : list of float
        One scalar each for digits (shared by all pixels); one value per feature otherwise.
    """
    _check_dataset(name)
    x = _scaled(name, np.asarray(x_train, dtype=np.float64))
    if name == "digits":
        return [float(x.mean())], [float(x.std())]
    return x.mean(axis=0).tolist(), x.std(axis=0).tolist()


def normalise(name: str, x: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalise raw inputs and shape them the way the model expects.

    Parameters
    ----------
    name : {"digits", "breast_cancer"}
    x : numpy.ndarray
        Un-normalised inputs ``[N, F]``.
    mean, std : list of float
        Statistics from :func:`fit_normalisation`.

    Returns
    -------
    torch.Tensor
        float32, ``[N, 1, 8, 8]`` for digits and ``[N, 30]`` for breast cancer.
    """
    _check_dataset(name)
    z = (_scaled(name, np.asarray(x, dtype=np.float64)) - np.asarray(mean)) / np.asarray(std)
    t = torch.tensor(z, dtype=torch.float32)
    return t.reshape(-1, 1, 8, 8) if name == "digits" else t


# ----------------------------------------------------------------------------- sentences

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


@dataclass(frozen=True)
class SentenceGenerator:
    """Settings of the sentence generator: lengths, valence words per sentence, seeds, sizes.

    A sentence has between `min_words` and `length` words, PAD ids fill the rest. Between 1 and
    `max_valence_words` of its words (never all of them) are valence words, the others fillers.
    Its label is 1 ("positive") if the valences sum to more than 0, else 0 ("negative");
    sentences whose valences sum to 0 are redrawn. In training sentences, each filler is replaced
    by the UNK token with probability `train_unk_rate`, so that UNK learns to be neutral.
    """

    length: int = 16
    min_words: int = 4
    max_valence_words: int = 3
    train_seed: int = 1
    train_size: int = 10_000
    held_out_seed: int = 2
    held_out_size: int = 2_000
    train_unk_rate: float = 0.05

    def __post_init__(self) -> None:
        if not 2 <= self.min_words <= self.length:
            raise ValueError(
                f"min_words must be in [2, length={self.length}]; got {self.min_words}"
            )
        if not 1 <= self.max_valence_words < self.min_words:
            raise ValueError(
                f"max_valence_words must be in [1, min_words={self.min_words}); "
                f"got {self.max_valence_words}"
            )
        if not 0.0 <= self.train_unk_rate < 1.0:
            raise ValueError(f"train_unk_rate must be in [0, 1); got {self.train_unk_rate}")

    def to_dict(self) -> dict[str, int | float]:
        """Return the settings as a JSON-ready dict (stored in the weights file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, int | float]) -> SentenceGenerator:
        """Rebuild settings from :meth:`to_dict`; unknown keys are an error."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"generator settings: unknown keys {sorted(unknown)}")
        return cls(**values)


_MASK64 = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    # SplitMix64's finaliser on uint64 arrays (wrapping arithmetic). A hash of counters, unlike a
    # library generator, gives the same sentences under every NumPy and torch version.
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(seed: int, sentence: np.ndarray, attempt: np.ndarray, slots: int) -> np.ndarray:
    """Random uint64 ``[n, slots]``: a pure function of (seed, sentence, attempt, slot)."""
    base = _mix(np.full(sentence.shape, seed & _MASK64, dtype=np.uint64))
    base = _mix(base ^ sentence.astype(np.uint64))
    base = _mix(base ^ attempt.astype(np.uint64))
    return _mix(base[:, None] ^ np.arange(slots, dtype=np.uint64)[None, :])


def _draw(
    valences: np.ndarray,
    settings: SentenceGenerator,
    seed: int,
    sentence: np.ndarray,
    attempt: np.ndarray,
    unk_rate: float,
) -> np.ndarray:
    """One attempt at each listed sentence: token ids ``[n, length]``."""
    t = settings.length
    fillers = np.flatnonzero(valences == 0)
    fillers = fillers[fillers > UNK_ID]
    words = np.flatnonzero(valences != 0)
    # Slot groups: 0 length, 1 valence-word count, then per position: sort key, valence word,
    # filler, UNK draw.
    u = _uniform(seed, sentence, attempt, 2 + 4 * t)
    span = np.uint64(settings.length - settings.min_words + 1)
    length = settings.min_words + (u[:, 0] % span).astype(np.int64)
    count = 1 + (u[:, 1] % np.uint64(settings.max_valence_words)).astype(np.int64)
    key, word, filler, unk = (u[:, 2 + i * t : 2 + (i + 1) * t] for i in range(4))
    position = np.arange(t)[None, :]
    present = position < length[:, None]
    # The `count` present positions with the smallest keys hold the valence words.
    key = np.where(present, key >> np.uint64(1), np.uint64(_MASK64))
    rank = np.argsort(np.argsort(key, axis=1, kind="stable"), axis=1, kind="stable")
    is_word = rank < count[:, None]
    ids = np.where(
        is_word,
        words[(word % np.uint64(len(words))).astype(np.int64)],
        fillers[(filler % np.uint64(len(fillers))).astype(np.int64)],
    )
    if unk_rate > 0:
        # Compare in 53-bit units so that the rate is exact for float rates.
        draw = (unk >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        ids = np.where(~is_word & (draw < unk_rate), UNK_ID, ids)
    return np.where(present, ids, PAD_ID).astype(np.int64)


def generate_sentences(
    valences: Sequence[int],
    settings: SentenceGenerator,
    split: Literal["train", "held_out"],
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate the first `n` sentences of a split, with their labels.

    Sentence ``i`` depends only on the lexicon, the settings, the split's seed and ``i``, so the
    first ``n`` sentences are the same whatever ``n`` is.

    Parameters
    ----------
    valences : sequence of int
        Valence of each vocabulary id: 0 for PAD, UNK and fillers, non-zero for valence words.
    settings : SentenceGenerator
    split : {"train", "held_out"}
    n : int, optional
        Number of sentences; the split's size if ``None``.

    Returns
    -------
    ids : numpy.ndarray
        int64 token ids ``[n, settings.length]``, PAD (0) after the last word.
    labels : numpy.ndarray
        int64 ``[n]``: 1 where the valences sum to more than 0, else 0.

    Examples
    --------
    >>> ids, labels = generate_sentences([0, 0, 0, 0, 3, -2], SentenceGenerator(), "held_out", 2)
    >>> ids.shape, labels.shape
    ((2, 16), (2,))
    """
    table = np.asarray(valences, dtype=np.int64)
    if table.ndim != 1 or table[PAD_ID] != 0 or table[UNK_ID] != 0:
        raise ValueError("valences: expected one int per id, 0 for PAD (id 0) and UNK (id 1)")
    if not (table[2:] == 0).any() or not (table > 0).any() or not (table < 0).any():
        raise ValueError("valences: expected fillers (0) and both positive and negative words")
    if split == "train":
        seed, size, unk_rate = settings.train_seed, settings.train_size, settings.train_unk_rate
    elif split == "held_out":
        seed, size, unk_rate = settings.held_out_seed, settings.held_out_size, 0.0
    else:
        raise ValueError(f"split must be 'train' or 'held_out'; got {split!r}")
    n = size if n is None else n
    sentence = np.arange(n, dtype=np.int64)
    ids = _draw(table, settings, seed, sentence, np.zeros(n, np.int64), unk_rate)
    attempt = np.zeros(n, dtype=np.int64)
    # Redraw ties; each try ties with probability well under 1/2, so this ends in a few rounds.
    while True:
        tied = np.flatnonzero(table[ids].sum(axis=1) == 0)
        if tied.size == 0:
            break
        attempt[tied] += 1
        ids[tied] = _draw(table, settings, seed, sentence[tied], attempt[tied], unk_rate)
    labels = (table[ids].sum(axis=1) > 0).astype(np.int64)
    return ids, labels


_STRIP = string.punctuation + string.whitespace


def encode(vocabulary: Sequence[str], sentences: Sequence[str], length: int) -> np.ndarray:
    """Turn sentences into token ids ``[n, length]``: lower case, split on white space.

    Punctuation around a word is dropped; a word not in `vocabulary` becomes UNK (id 1).

    Raises
    ------
    ValueError
        If a sentence has no words or more than `length` words.
    """
    index = {word: i for i, word in enumerate(vocabulary)}
    out = np.full((len(sentences), length), PAD_ID, dtype=np.int64)
    for row, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"sentences[{row}]: expected a str; got {type(sentence).__name__}")
        words = [w for w in (w.strip(_STRIP) for w in sentence.lower().split()) if w]
        if not 1 <= len(words) <= length:
            raise ValueError(
                f"sentences[{row}]: expected 1 to {length} words; got {len(words)} in {sentence!r}"
            )
        out[row, : len(words)] = [index.get(w, UNK_ID) for w in words]
    return out


def decode(vocabulary: Sequence[str], ids: np.ndarray) -> list[list[str]]:
    """Turn token ids ``[n, T]`` back into words, leaving out the PAD ids at the end of each row.

    PAD ids inside a row stay, as ``"<pad>"``, so that word ``j`` is at position ``j``.
    """
    out = []
    for row in np.asarray(ids).tolist():
        while row and row[-1] == PAD_ID:
            row.pop()
        out.append([vocabulary[i] for i in row])
    return out


# ----------------------------------------------------------------------------- reversals

BOS, SEP, EOS = "<bos>", "<sep>", "<eos>"
REVERSE_SYMBOLS: tuple[str, ...] = tuple("abcdefghijklmnop")
REVERSE_VOCABULARY: tuple[str, ...] = (PAD, UNK, BOS, SEP, EOS, *REVERSE_SYMBOLS)
BOS_ID, SEP_ID, EOS_ID = 2, 3, 4
_FIRST_SYMBOL = 5


@dataclass(frozen=True)
class ReversalGenerator:
    """Settings of the reversal task: ``<bos> x1 .. xn <sep>`` is continued by ``xn .. x1 <eos>``.

    The ``n`` letters (between `min_letters` and `max_letters`) are distinct, drawn from 16
    symbols, so the source of every generated letter is one prompt position: letter ``t`` of
    the answer copies the prompt's letter ``n - t``. Prompts are left-padded to
    ``max_letters + 2`` tokens, answers right-padded to ``max_letters + 1``.
    """

    min_letters: int = 3
    max_letters: int = 8
    train_seed: int = 3
    train_size: int = 30_000
    held_out_seed: int = 4
    held_out_size: int = 1_000

    def __post_init__(self) -> None:
        if not 1 <= self.min_letters <= self.max_letters <= len(REVERSE_SYMBOLS):
            raise ValueError(
                f"letters: expected 1 <= min_letters <= max_letters <= {len(REVERSE_SYMBOLS)}; "
                f"got {self.min_letters} and {self.max_letters}"
            )

    def to_dict(self) -> dict[str, int]:
        """Return the settings as a JSON-ready dict (stored in the weights file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, int]) -> ReversalGenerator:
        """Rebuild settings from :meth:`to_dict`; unknown keys are an error."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"generator settings: unknown keys {sorted(unknown)}")
        return cls(**values)


def generate_reversals(
    settings: ReversalGenerator, split: Literal["train", "held_out"], n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` prompts of a split and their answers (the same whatever `n` is).

    Returns
    -------
    prompts : numpy.ndarray
        int64 ``[n, max_letters + 2]``: PAD (0) first, then ``<bos>``, the letters, ``<sep>``.
    answers : numpy.ndarray
        int64 ``[n, max_letters + 1]``: the letters reversed, ``<eos>``, then PAD.

    Examples
    --------
    >>> prompts, answers = generate_reversals(ReversalGenerator(), "held_out", 1)
    >>> decode(REVERSE_VOCABULARY, prompts)[0][-3:], decode(REVERSE_VOCABULARY, answers)[0][:2]
    (['h', 'e', '<sep>'], ['e', 'h'])
    """
    if split == "train":
        seed, size = settings.train_seed, settings.train_size
    elif split == "held_out":
        seed, size = settings.held_out_seed, settings.held_out_size
    else:
        raise ValueError(f"split must be 'train' or 'held_out'; got {split!r}")
    n = size if n is None else n
    symbols = len(REVERSE_SYMBOLS)
    u = _uniform(seed, np.arange(n, dtype=np.int64), np.zeros(n, np.int64), 1 + symbols)
    span = np.uint64(settings.max_letters - settings.min_letters + 1)
    letters = settings.min_letters + (u[:, 0] % span).astype(np.int64)
    order = np.argsort(u[:, 1:] >> np.uint64(1), axis=1, kind="stable")  # distinct symbols
    width = settings.max_letters
    prompts = np.full((n, width + 2), PAD_ID, dtype=np.int64)
    answers = np.full((n, width + 1), PAD_ID, dtype=np.int64)
    for row in range(n):
        k = int(letters[row])
        chosen = order[row, :k] + _FIRST_SYMBOL
        prompts[row, width - k :] = [BOS_ID, *chosen, SEP_ID]
        answers[row, : k + 1] = [*chosen[::-1], EOS_ID]
    return prompts, answers


def reversal_sources(prompts: np.ndarray, width: int) -> np.ndarray:
    """The prompt column each answer token copies, ``[n, width + 1]``; -1 for ``<eos>`` and
    padding (see :class:`ReversalGenerator`)."""
    prompts = np.asarray(prompts)
    letters = (prompts >= _FIRST_SYMBOL).sum(1)
    columns = prompts.shape[1]
    out = np.full((len(prompts), width + 1), -1, dtype=np.int64)
    for row, k in enumerate(letters.tolist()):
        sep = columns - 1  # the prompt ends with <sep>, so letter i (1..k) is at sep - k - 1 + i
        out[row, :k] = [sep - 1 - t for t in range(k)]
    return out
