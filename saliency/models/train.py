"""Reproducible training of the bundled models.

Run ``python -m saliency.models.train [--out DIR]`` to rewrite the shipped weights.
Two runs with the same seed, torch build and machine give bit-identical weights.
Training the sentiment model needs the ``afinn`` package (for its word list); nothing else does.
The language model ``"reverse"`` learns next tokens on generated reversals (teacher forcing, the
loss on the answer tokens only).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from saliency._atomic import atomic_write
from saliency.models import WEIGHTS_DIR, ModelInfo, _build, _entry, available, data

__all__ = [
    "RECIPES",
    "Recipe",
    "afinn_valences",
    "held_out_digest",
    "main",
    "sentiment_lexicon",
    "train_model",
]


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one bundled model."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    description: str
    # None: torch's thread count. 1 for tiny models, whose ops are too small to split: faster
    # on a busy machine, and the weights then do not depend on the number of cores.
    threads: int | None = None


RECIPES: dict[str, Recipe] = {
    "digits": Recipe(
        epochs=30,
        batch_size=64,
        lr=1e-3,
        weight_decay=0.0,
        description=(
            "Small CNN (2 conv layers, max-pool, 2 linear layers, ReLU) trained on the "
            "scikit-learn 8x8 digits; input [1, 8, 8]: pixels / 16, then (x - mean) / std."
        ),
    ),
    "breast_cancer": Recipe(
        epochs=60,
        batch_size=32,
        lr=1e-3,
        weight_decay=1e-4,
        description=(
            "MLP 30-32-32-2 with tanh trained on the scikit-learn Wisconsin breast cancer "
            "data; input [30]: per-feature (x - mean) / std."
        ),
    ),
    "sentiment": Recipe(
        epochs=12,
        batch_size=64,
        lr=1e-3,
        weight_decay=1e-4,
        threads=1,
        description=(
            "Token embedding (dim 32), one transformer encoder layer (2 heads, no positional "
            "encoding), masked mean pool and a linear head, trained on generated sentences of "
            "up to 16 words: neutral fillers plus 1 to 3 valence words; label 'positive' if the "
            "words' valences sum to more than 0, else 'negative' (ties are never generated). "
            "Input [16]: int64 token ids, PAD (0) after the last word. Contains information "
            "from AFINN (AFINN-en-165, https://github.com/fnielsen/afinn, by Finn Årup "
            "Nielsen), which is made available here under the Open Database License (ODbL), "
            "https://opendatacommons.org/licenses/odbl/1-0/: the valences of the words in the "
            "'vocabulary' and 'valences' metadata are AFINN's."
        ),
    ),
    "reverse": Recipe(
        epochs=3,
        batch_size=64,
        lr=3e-3,
        weight_decay=0.0,
        threads=1,
        description=(
            "Tiny causal language model (token and learned position embeddings, width 48, 2 "
            "pre-norm decoder layers with 4 heads, a linear head over the 21-token vocabulary) "
            "trained by next-token prediction on generated reversals: the prompt '<bos> x1 .. xn "
            "<sep>' (3 to 8 distinct letters of 16) is continued by 'xn .. x1 <eos>', so the "
            "source of every generated letter is known. Input: int64 token ids, prompts "
            "left-padded with PAD (0), positions counted over real tokens."
        ),
    ),
}

# Words that carry no sentiment: the context in which the valence words sit.
FILLERS: tuple[str, ...] = tuple(
    """
    the a an this that these those movie film story plot scene ending actor actors cast director
    script dialogue music camera character characters screen show series episode sequel book
    version cinema theater audience role part moment minutes hour time year is was were are be
    been seems seemed felt looks became remains and but or so then also just really quite very
    rather still even too with of in on to for at by from about into over after before during
    it its he she they we i you his her their who what which when while first last whole other
    another same new old long short
    """.split()
)

# Candidate valence words in order of preference; the first ones AFINN scores clearly (|v| >= 2)
# with the expected sign are used. Common review words, no profanity.
POSITIVE_CANDIDATES: tuple[str, ...] = tuple(
    """
    great excellent amazing awesome wonderful fantastic brilliant superb outstanding perfect
    beautiful lovely delightful enjoyable fun funny good nice best love loved enjoy enjoyed
    charming impressive impressed masterpiece breathtaking stunning thrilled exciting excited
    happy glad pleasant sweet inspiring inspired fascinating hilarious entertaining remarkable
    marvelous magnificent terrific fabulous admire adore adored recommend recommended winner
    worth clever strong success successful thoughtful triumph joy joyful elegant heartwarming
    perfectly splendid excellence praise satisfied favorite superior glorious interesting
    """.split()
)
NEGATIVE_CANDIDATES: tuple[str, ...] = tuple(
    """
    bad terrible awful horrible boring bored dull poor worst hate hated disappointing
    disappointed disappointment mess stupid ugly annoying annoyed weak wasted pathetic ridiculous
    dreadful disaster disastrous fail failed failure flop lame sad painful tired worse worthless
    useless lousy nonsense confusing confused miserable horrendous atrocious regret regretted
    angry upset sloppy hideous nasty unpleasant unhappy dislike disliked fake problem problems
    poorly hopeless wrong gloomy depressing mediocrity tragic inferior awkward shame shameful
    offensive
    """.split()
)
WORDS_PER_SIGN = 60
MIN_ABS_VALENCE = 2
AFINN_FILE = "AFINN-en-165.txt"


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    # Restore the caller's setting: this is a library function, not only a script.
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def afinn_valences() -> dict[str, int]:
    """Read the English AFINN lexicon (word -> valence in [-5, 5]) shipped by ``afinn``.

    Raises
    ------
    ImportError
        If the ``afinn`` package, a training-only dependency, is not installed.
    """
    try:
        import afinn
    except ImportError as e:
        raise ImportError(
            "training the sentiment model needs the AFINN word list: pip install afinn"
        ) from e
    path = Path(afinn.__file__).resolve().parent / "data" / AFINN_FILE
    valences = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        word, _, value = line.rpartition("\t")
        valences[word] = int(value)
    return valences


def sentiment_lexicon(afinn: dict[str, int]) -> tuple[list[str], list[int]]:
    """Build the sentiment vocabulary and each word's valence from the AFINN lexicon.

    Ids: ``"<pad>"`` 0, ``"<unk>"`` 1, then :data:`FILLERS` (valence 0), then the first
    :data:`WORDS_PER_SIGN` positive and negative candidates that AFINN scores with the expected
    sign and ``|valence| >= MIN_ABS_VALENCE``.

    Raises
    ------
    ValueError
        If a filler has a valence in AFINN or too few candidates qualify.
    """
    scored = [w for w in FILLERS if afinn.get(w, 0) != 0]
    if scored:
        raise ValueError(f"FILLERS: these words have an AFINN valence: {scored}")
    chosen = []
    for sign, candidates in ((1, POSITIVE_CANDIDATES), (-1, NEGATIVE_CANDIDATES)):
        ok = [w for w in candidates if sign * afinn.get(w, 0) >= MIN_ABS_VALENCE]
        if len(ok) < WORDS_PER_SIGN:
            raise ValueError(
                f"only {len(ok)} {'positive' if sign > 0 else 'negative'} candidates qualify; "
                f"expected at least {WORDS_PER_SIGN}"
            )
        chosen += ok[:WORDS_PER_SIGN]
    vocabulary = [data.PAD, data.UNK, *FILLERS, *chosen]
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError("vocabulary: a word is listed twice")
    return vocabulary, [afinn.get(w, 0) if w in chosen else 0 for w in vocabulary]


def held_out_digest(ids: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of token ids and labels as little-endian int64, to recognise a split later."""
    digest = hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def _fit(
    build: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    epochs: int,
    seed: int,
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Adam on ``loss(model, x_batch, y_batch)`` (default: cross-entropy of ``model(x)``),
    seeded: the same weights on every run."""
    loss = loss or (lambda model, xb, yb: F.cross_entropy(model(xb), yb))
    # fork_rng keeps the caller's global RNG state untouched by the seeding below.
    with torch.random.fork_rng(devices=[]), _deterministic(), _threads(recipe.threads):
        torch.manual_seed(seed)
        model = build()
        shuffle = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(y), generator=shuffle).split(recipe.batch_size):
                optimiser.zero_grad()
                loss(model, x[idx], y[idx]).backward()
                optimiser.step()
    return model.eval()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        correct = int((model(x).argmax(dim=1) == y).sum())
    return correct / len(y)


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    # A crash mid-write must never leave a truncated weights file in the package.
    with atomic_write(path) as f:
        f.write(save(tensors, metadata=metadata))


def train_model(
    name: str,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> tuple[Path, ModelInfo]:
    """Train one bundled model and write its weights file.

    Parameters
    ----------
    name : str
        One of :func:`saliency.models.available`.
    out_dir : path, optional
        Folder for the weights file, created if missing; the package's weights folder if
        ``None``.
    epochs : int, optional
        Overrides the recipe's number of epochs (e.g. for quick tests).
    seed : int
        Seed for initialisation and batch order.

    Returns
    -------
    path : pathlib.Path
        The written ``.safetensors`` file.
    info : ModelInfo
        The metadata stored in it.

    Raises
    ------
    ImportError
        For ``"sentiment"`` when the training-only ``afinn`` package is missing.
    """
    entry = _entry(name)
    recipe = RECIPES[name]
    if epochs is None:
        epochs = recipe.epochs
    elif isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be None or a positive int; got {epochs!r}")

    if name in data.GENERATION_DATASETS:
        prepare, fit, accuracy = _reversal_data, _fit_language_model, _exact_continuations
    else:
        prepare = _text_data if name in data.TEXT_DATASETS else _table_data
        fit, accuracy = _fit, _accuracy
    x_train, y_train, x_held_out, y_held_out, info, about_data = prepare(name, recipe)
    model = fit(lambda: _build(entry, info), x_train, y_train, recipe, epochs, seed)
    info = replace(info, held_out_accuracy=accuracy(model, x_held_out, y_held_out))
    training = {
        "optimiser": "Adam",
        "epochs": epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "threads": recipe.threads,
        "seed": seed,
        **about_data,
    }
    metadata = info.to_metadata() | {
        "architecture": json.dumps(entry.architecture.__name__),
        "training": json.dumps(training),
    }
    folder = WEIGHTS_DIR if out_dir is None else Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / entry.filename
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _write_atomic(path, tensors, metadata)
    return path, info


_Prepared = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, ModelInfo, dict]


def _table_data(name: str, recipe: Recipe) -> _Prepared:
    split = data.raw_split(name)
    mean, std = data.fit_normalisation(name, split.x_train)
    x_train = data.normalise(name, split.x_train, mean, std)
    info = ModelInfo(
        name=name,
        class_names=list(split.class_names),
        feature_names=None if split.feature_names is None else list(split.feature_names),
        input_shape=tuple(x_train.shape[1:]),
        mean=mean,
        std=std,
        held_out_accuracy=float("nan"),
        description=recipe.description,
    )
    return (
        x_train,
        torch.tensor(split.y_train, dtype=torch.int64),
        data.normalise(name, split.x_held_out, mean, std),
        torch.tensor(split.y_held_out, dtype=torch.int64),
        info,
        {"split_seed": data.SPLIT_SEED, "held_out_fraction": data.HELD_OUT_FRACTION},
    )


def _text_data(name: str, recipe: Recipe) -> _Prepared:
    vocabulary, valences = sentiment_lexicon(afinn_valences())
    settings = data.SentenceGenerator()
    x_train, y_train = data.generate_sentences(valences, settings, "train")
    x_held_out, y_held_out = data.generate_sentences(valences, settings, "held_out")
    # No held-out sentence is trained on, even where the two seeds happen to draw it.
    seen = {row.tobytes() for row in x_held_out}
    fresh = np.array([row.tobytes() not in seen for row in x_train], dtype=bool)
    info = ModelInfo(
        name=name,
        class_names=["negative", "positive"],
        feature_names=None,
        input_shape=(settings.length,),
        mean=[],
        std=[],
        held_out_accuracy=float("nan"),
        description=recipe.description,
        vocabulary=vocabulary,
        valences=valences,
        generator=settings.to_dict(),
    )
    return (
        torch.from_numpy(x_train[fresh]),
        torch.from_numpy(y_train[fresh]),
        torch.from_numpy(x_held_out),
        torch.from_numpy(y_held_out),
        info,
        {
            "lexicon": AFINN_FILE,
            "dropped_train_duplicates_of_held_out": int((~fresh).sum()),
            # Lets a test check that the sentences regenerated at run time are these.
            "held_out_sha256": held_out_digest(x_held_out, y_held_out),
        },
    )


def _teacher_forced(prompts: np.ndarray, answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole sequences ``prompt + answer`` right-padded, and the next-token targets of the
    positions that predict answer tokens (-100 elsewhere, which the loss ignores)."""
    n = len(prompts)
    width = prompts.shape[1] + answers.shape[1]
    x = np.zeros((n, width), dtype=np.int64)
    targets = np.full((n, width), -100, dtype=np.int64)
    for i in range(n):
        prompt = prompts[i][prompts[i] != data.PAD_ID]
        answer = answers[i][answers[i] != data.PAD_ID]
        sequence = np.concatenate([prompt, answer])
        x[i, : len(sequence)] = sequence
        start = len(prompt) - 1  # the <sep> position predicts the first answer token
        targets[i, start : len(sequence) - 1] = sequence[start + 1 :]
    return x, targets


def _reversal_data(name: str, recipe: Recipe) -> _Prepared:
    settings = data.ReversalGenerator()
    prompts, answers = data.generate_reversals(settings, "train")
    held_prompts, held_answers = data.generate_reversals(settings, "held_out")
    # No held-out prompt is trained on, even where the two seeds happen to draw it.
    seen = {row.tobytes() for row in held_prompts}
    fresh = np.array([row.tobytes() not in seen for row in prompts], dtype=bool)
    x, targets = _teacher_forced(prompts[fresh], answers[fresh])
    info = ModelInfo(
        name=name,
        class_names=list(data.REVERSE_VOCABULARY),
        feature_names=None,
        input_shape=(held_prompts.shape[1],),
        mean=[],
        std=[],
        held_out_accuracy=float("nan"),
        description=recipe.description,
        vocabulary=list(data.REVERSE_VOCABULARY),
        generator=settings.to_dict(),
    )
    return (
        torch.from_numpy(x),
        torch.from_numpy(targets),
        torch.from_numpy(held_prompts),
        torch.from_numpy(held_answers),
        info,
        {
            "dropped_train_duplicates_of_held_out": int((~fresh).sum()),
            "held_out_sha256": held_out_digest(held_prompts, held_answers),
        },
    )


def _fit_language_model(
    build: Callable[[], nn.Module],
    x: torch.Tensor,
    targets: torch.Tensor,
    recipe: Recipe,
    epochs: int,
    seed: int,
) -> nn.Module:
    def next_tokens(model: nn.Module, ids: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
        logits = model(ids, (ids != data.PAD_ID).long())
        return F.cross_entropy(logits.flatten(0, 1), want.flatten())

    return _fit(build, x, targets, recipe, epochs, seed, loss=next_tokens)


def _exact_continuations(model: nn.Module, prompts: torch.Tensor, answers: torch.Tensor) -> float:
    """The share of prompts whose greedy continuation is the answer, token for token."""
    ids, mask = prompts, (prompts != data.PAD_ID).long()
    out = []
    with torch.no_grad():
        for _ in range(answers.shape[1]):
            token = model(ids, mask)[:, -1].argmax(-1)
            out.append(token)
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(token)[:, None]], 1)
    got = torch.stack(out, 1)
    real = answers != data.PAD_ID
    return float(((got == answers) | ~real).all(1).double().mean())


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: train the bundled models and report their accuracy."""
    parser = argparse.ArgumentParser(
        prog="python -m saliency.models.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default: {WEIGHTS_DIR}")
    parser.add_argument("--model", choices=available(), action="append", help="default: all")
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.model or available():
        start = time.perf_counter()
        path, info = train_model(name, out_dir=args.out, epochs=args.epochs, seed=args.seed)
        print(
            f"{name}: held-out accuracy {info.held_out_accuracy:.4f}, "
            f"{path.stat().st_size / 1024:.1f} KiB -> {path} "
            f"({time.perf_counter() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
