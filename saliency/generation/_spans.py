"""Tokens merged into words or arbitrary spans, by summing their scores.

A grouping of the context's columns is given as word ids (one entry per column, the format of a
HuggingFace fast tokenizer's ``encoding.word_ids()``: tokens with the same id form one word,
``None`` drops a column), as ``(start, stop)`` column ranges, or as ``"words"``: words read off
the token strings (a token starting with a space, ``Ġ`` or ``▁`` starts a new word; padding
belongs to no word).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SpanScores", "Spans", "merge", "word_ids"]

Spans = str | Sequence | None
_WORD_STARTS = (" ", "Ġ", "▁", "Ċ", "\n", "\t")


@dataclass(frozen=True, eq=False)
class SpanScores:
    """Scores of every generated token for groups of context tokens (words or spans).

    ``scores`` is ``[B, T_out, W]``; a sample with fewer than ``W`` groups is padded with zero
    columns labelled ``""``. ``groups[b][w]`` lists the context columns summed into group ``w``,
    ``labels[b][w]`` its text (the tokens joined, when token strings are known).
    """

    scores: torch.Tensor
    labels: list
    groups: list
    generated: torch.Tensor
    step_scores: dict
    method: str
    params: dict
    source_scores: torch.Tensor | None = None
    source_labels: list | None = None
    source_groups: list | None = None
    generated_labels: list | None = None


def word_ids(tokens: Sequence[str], mask: Sequence | None = None) -> list[int | None]:
    """Word ids read off token strings: a token starting with a space marker starts a word.
    Columns whose ``mask`` is 0 (padding) belong to no word (``None``), and the first real
    token after them starts a new one.

    >>> word_ids(["Hello", "Ġwor", "ld", "Ġ!"])
    [0, 1, 1, 2]
    >>> word_ids(["<pad>", "a", "b", "<pad>", "c"], mask=[0, 1, 1, 0, 1])
    [None, 0, 0, None, 1]
    """
    ids: list[int | None] = []
    word, gap = -1, True
    for i, token in enumerate(tokens):
        if mask is not None and not mask[i]:
            ids.append(None)
            gap = True
            continue
        if gap or token.startswith(_WORD_STARTS) or not token:
            word += 1
        ids.append(word)
        gap = False
    return ids


def merge(attribution, spans: Spans = "words", source_spans: Spans = None) -> SpanScores:
    """Sum a :class:`GenerationAttribution`'s scores over words or spans of its context.

    Parameters
    ----------
    attribution
        The explanation to merge.
    spans
        For the context columns: ``"words"`` (needs token strings, see ``tokenizer=``), word ids
        (one entry per column, ``None`` to drop a column), or ``(start, stop)`` tuples of column
        ranges; one such list for every sample, or a list of them, one per sample.
    source_spans
        The same for the source of an encoder-decoder (``None``: the source is not merged and
        ``source_scores`` is left out).

    Returns
    -------
    SpanScores

    Examples
    --------
    >>> import torch
    >>> from saliency.generation import GenerationAttribution, merge
    >>> a = GenerationAttribution(
    ...     generated=torch.tensor([[9]]), ids=torch.tensor([[4, 5, 6, 9]]),
    ...     attention_mask=torch.ones(1, 4, dtype=torch.long),
    ...     scores=torch.tensor([[[0.1, 0.2, 0.3, 0.0]]]),
    ...     tokens=[["a", "Ġb", "c", "Ġd"]])
    >>> m = merge(a, "words")
    >>> m.labels, m.scores
    ([['a', 'Ġbc', 'Ġd']], tensor([[[0.1000, 0.5000, 0.0000]]]))
    >>> merge(a, [(0, 2), (2, 4)]).scores
    tensor([[[0.3000, 0.3000]]])
    """
    b = len(attribution)
    mask = attribution.attention_mask.tolist()
    groups = _groups(spans, b, attribution.ids.shape[1], attribution.tokens, "spans", mask)
    scores, labels = _summed(attribution.scores, groups, attribution.tokens)
    source = (None, None, None)
    if source_spans is not None:
        if attribution.source_ids is None:
            raise ValueError("source_spans: this explanation has no source (a decoder-only model)")
        sg = _groups(
            source_spans, b, attribution.source_ids.shape[1], attribution.source_tokens,
            "source_spans", attribution.source_mask.tolist(),
        )  # fmt: skip
        ss, sl = _summed(attribution.source_scores, sg, attribution.source_tokens)
        source = (ss, sl, sg)
    generated_labels = None
    if attribution.tokens is not None:
        cols = attribution.columns.tolist()
        generated_labels = [[row[c] for c in cols] for row in attribution.tokens]
    return SpanScores(
        scores, labels, groups, attribution.generated, dict(attribution.step_scores),
        attribution.method, {**attribution.params, "merged": _describe(spans)}, *source,
        generated_labels=generated_labels,
    )  # fmt: skip


def _describe(spans: Spans) -> object:
    return spans if isinstance(spans, str) else "given"


def _groups(spans: Spans, b: int, width: int, tokens: list | None, name: str, mask: list) -> list:
    """Per sample, the list of column groups (``"words"`` leave out the padding in ``mask``)."""
    if isinstance(spans, str):
        if spans != "words":
            raise ValueError(f"{name}: expected 'words', word ids or (start, stop) ranges, got "
                             f"{spans!r}")  # fmt: skip
        if tokens is None:
            raise ValueError(
                f"{name}: 'words' reads word boundaries off the token strings; pass tokenizer= "
                "to explain_generation, or give word ids (a fast tokenizer's word_ids())"
            )
        spans = [word_ids(row, m) for row, m in zip(tokens, mask, strict=True)]
    if not isinstance(spans, Sequence) or not spans:
        raise TypeError(
            f"{name}: expected 'words', word ids or (start, stop) ranges, got {spans!r}"
        )
    per_sample = not _is_flat(spans)
    if per_sample and len(spans) != b:
        raise ValueError(f"{name}: expected one list per sample ({b}), got {len(spans)}")
    rows = list(spans) if per_sample else [spans] * b
    return [_row_groups(row, width, name) for row in rows]


def _is_flat(spans: Sequence) -> bool:
    """One grouping for every sample (word ids, or ``(start, stop)`` tuples) rather than a list
    of them (lists, one per sample)."""
    return not isinstance(spans[0], list)


def _row_groups(row: Sequence, width: int, name: str) -> list[list[int]]:
    if row and all(isinstance(x, tuple) for x in row):  # (start, stop) ranges
        groups = []
        for start, stop in row:
            if not 0 <= start < stop <= width:
                raise ValueError(
                    f"{name}: range ({start}, {stop}) is not within the {width} columns "
                    "(start < stop)"
                )
            groups.append(list(range(start, stop)))
        return groups
    if len(row) != width or not all(x is None or isinstance(x, int) for x in row):
        raise ValueError(
            f"{name}: word ids need one int (or None) per column, {width} in all; got {len(row)}"
        )
    order: dict[int, list[int]] = {}
    for col, word in enumerate(row):
        if word is not None:
            order.setdefault(word, []).append(col)
    return list(order.values())


def _summed(scores: torch.Tensor, groups: list, tokens: list | None):
    b, t_out, _ = scores.shape
    width = max(len(g) for g in groups)
    out = scores.new_zeros(b, t_out, width)
    labels = []
    for i, row in enumerate(groups):
        for w, cols in enumerate(row):
            out[i, :, w] = scores[i][:, cols].sum(-1)
        texts = ["".join(tokens[i][c] for c in cols) if tokens else f"{cols[0]}" for cols in row]
        labels.append(texts + [""] * (width - len(row)))
    return out, labels
