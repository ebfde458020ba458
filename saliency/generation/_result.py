"""``GenerationAttribution``: where every generated token came from, as plain data.

Pictures are functions over it (:mod:`saliency.viz.generation`); merging tokens into words or
spans is :meth:`GenerationAttribution.merge`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from .._atomic import atomic_write
from .._tensorfile import damaged, read, steady
from ._spans import Spans, merge

__all__ = ["GenerationAttribution"]

_FORMAT = "saliency.GenerationAttribution"
_VERSION = "1"
_TENSORS = (
    "generated", "ids", "attention_mask", "scores", "values", "delta",
    "source_ids", "source_mask", "source_scores", "source_values",
)  # fmt: skip
_PER_SAMPLE_PARAMS = frozenset({"steps_used"})


@dataclass(frozen=True, eq=False, repr=False)
class GenerationAttribution:
    """Scores of every context token for every generated token, with what produced them.

    Generated token ``t`` of sample ``b`` is ``generated[b, t]``; it stands in the context at
    column ``T_ctx - T_out + t`` (:attr:`columns`), and was predicted from the columns before it.

    Attributes
    ----------
    generated : torch.Tensor
        ``[B, T_out]`` token ids, the continuation explained.
    ids : torch.Tensor
        ``[B, T_ctx]``: the context. Decoder-only models: the prompt as given (padding included)
        followed by ``generated``. Encoder-decoder models: the decoder's start token followed by
        ``generated`` (the prompt is ``source_ids``).
    attention_mask : torch.Tensor
        ``[B, T_ctx]``, 1 for real tokens, 0 for padding (in the prompt, or steps after a
        sample's end-of-sequence token); padding is never scored.
    scores : torch.Tensor
        ``[B, T_out, T_ctx]``: one score per generated and context token, the method's values at
        the embedding reduced over its width (``params["reduce"]``: ``"sum"`` or ``"norm"``).
        Columns a step cannot see (its own token and everything after it) and padding are 0.
    step_scores : dict of str to torch.Tensor
        ``[B, T_out]`` each: ``"probability"`` of every generated token given its prefix, and
        ``"target"``, the score that was differentiated (see ``params["target"]``).
    method : str
        ``"gradients"``, ``"x_input"``, ``"integrated_gradients"`` or ``"smoothgrad"``.
    params : dict
        The arguments that produced it, JSON-safe.
    values : torch.Tensor or None
        ``[B, T_out, T_ctx, E]`` raw values at the embedding (zeros where a step cannot see), when
        asked for with ``keep_values=True``.
    delta : torch.Tensor or None
        ``[B, T_out]`` completeness gap of Integrated Gradients, ``sum(values) - (F(x) - F(b))``
        over the context (and the source) of each step.
    source_ids, source_mask, source_scores, source_values
        Encoder-decoder models: the encoder's input ``[B, T_src]``, its mask, and the scores
        ``[B, T_out, T_src]`` (values ``[B, T_out, T_src, E]``) of every source token.
    tokens, source_tokens : list of list of str or None
        The token strings of ``ids`` and ``source_ids``, when a tokenizer was given.
    """

    generated: torch.Tensor
    ids: torch.Tensor
    attention_mask: torch.Tensor
    scores: torch.Tensor
    step_scores: dict = field(default_factory=dict)
    method: str = "gradients"
    params: dict = field(default_factory=dict)
    values: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    source_ids: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None
    source_scores: torch.Tensor | None = None
    source_values: torch.Tensor | None = None
    tokens: list | None = None
    source_tokens: list | None = None

    def __post_init__(self) -> None:
        g, ids, s = self.generated, self.ids, self.scores
        for name in ("generated", "ids", "attention_mask", "scores"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(getattr(self, name))}")
        if g.ndim != 2 or ids.ndim != 2 or ids.shape[0] != g.shape[0] or ids.shape[1] < g.shape[1]:
            raise ValueError(
                f"generated and ids: expected [B, T_out] and [B, T_ctx] with T_ctx >= T_out, got "
                f"{tuple(g.shape)} and {tuple(ids.shape)}"
            )
        b, t_out, t_ctx = g.shape[0], g.shape[1], ids.shape[1]
        _shape("attention_mask", self.attention_mask, (b, t_ctx))
        _shape("scores", s, (b, t_out, t_ctx))
        if self.values is not None:
            _shape("values", self.values, (b, t_out, t_ctx), prefix=True)
        if self.delta is not None:
            _shape("delta", self.delta, (b, t_out))
        for key, value in self.step_scores.items():
            _shape(f"step_scores[{key!r}]", value, (b, t_out))
        if self.source_ids is not None:
            t_src = self.source_ids.shape[1]
            _shape("source_scores", self.source_scores, (b, t_out, t_src))
            if self.source_values is not None:
                _shape("source_values", self.source_values, (b, t_out, t_src), prefix=True)
        for name, rows, width in (
            ("tokens", self.tokens, t_ctx),
            ("source_tokens", self.source_tokens, None if self.source_ids is None else
             self.source_ids.shape[1]),
        ):  # fmt: skip
            if rows is not None and (
                len(rows) != b or any(len(r) != width or not all(isinstance(x, str) for x in r)
                                      for r in rows)
            ):  # fmt: skip
                raise ValueError(f"{name}: expected {b} lists of {width} strings")
        try:
            params = json.loads(json.dumps(self.params))
        except (TypeError, ValueError) as e:
            raise TypeError(f"params: must be JSON-serialisable, got {self.params!r} ({e})") from e
        object.__setattr__(self, "params", params)

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.generated.shape[0]

    @property
    def columns(self) -> torch.Tensor:
        """The context column of every generated token, ``[T_out]``."""
        t_out, t_ctx = self.generated.shape[1], self.ids.shape[1]
        return torch.arange(t_ctx - t_out, t_ctx)

    @property
    def real_steps(self) -> torch.Tensor:
        """``[B, T_out]`` bool: the steps explained (not padding after an end-of-sequence)."""
        return self.attention_mask[:, self.columns].bool()

    @property
    def visible(self) -> torch.Tensor:
        """``[B, T_out, T_ctx]`` bool: the context columns each explained step can see (the real
        tokens before its own)."""
        cols = torch.arange(self.ids.shape[1], device=self.ids.device)
        before = cols[None, :] < self.columns.to(cols.device)[:, None]  # [T_out, T_ctx]
        mask = self.attention_mask.bool()
        return before[None] & mask[:, None, :] & self.real_steps[:, :, None]

    def top_sources(self, k: int = 1) -> torch.Tensor:
        """``[B, T_out, k]``: for each step, the ``k`` columns it can see with the highest
        scores, highest first; -1 where a step sees fewer than ``k`` (or is not explained)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        if k > self.ids.shape[1]:
            raise ValueError(f"k: expected at most the context's {self.ids.shape[1]} columns")
        seen = self.visible
        top = torch.where(seen, self.scores, -torch.inf).topk(k, dim=-1)
        return torch.where(top.values > -torch.inf, top.indices, -1)

    def __getitem__(self, samples: int | slice | Sequence[int] | torch.Tensor):
        """The same explanation for some samples only: ``a[0]``, ``a[1:3]``, ``a[[0, 2]]``."""
        if isinstance(samples, bool) or isinstance(samples, str):
            raise TypeError(f"samples: expected an int, a slice or indices, got {samples!r}")
        if isinstance(samples, torch.Tensor | np.ndarray) and samples.ndim == 0:
            samples = samples.item()
        if isinstance(samples, np.integer):
            samples = int(samples)
        if isinstance(samples, int):
            n = len(self)
            if not -n <= samples < n:
                raise IndexError(f"samples: {samples} is out of range for {n} samples")
            samples = slice(samples % n, samples % n + 1)
        elif not isinstance(samples, slice):
            samples = torch.as_tensor(samples)
            if samples.dtype == torch.bool:
                samples = samples.nonzero().flatten()
            samples = samples.long()
        index = samples if isinstance(samples, slice) else samples.tolist()
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[samples]
            elif f.name == "step_scores":
                v = {k: t[samples] for k, t in v.items()}
            elif f.name in ("tokens", "source_tokens") and v is not None:
                v = v[index] if isinstance(index, slice) else [v[i] for i in index]
            elif f.name == "params":
                v = dict(v)
                for key in _PER_SAMPLE_PARAMS & v.keys():
                    rows = v[key]
                    v[key] = rows[index] if isinstance(index, slice) else [rows[i] for i in index]
            values[f.name] = v
        return GenerationAttribution(**values)

    def merge(self, spans: Spans) -> GenerationAttribution:
        """Sum the scores of tokens into words or spans (of the context and, for an
        encoder-decoder, of the source); see :func:`saliency.generation.merge`."""
        return merge(self, spans)

    def numpy(self) -> np.ndarray:
        """``scores`` as a float32 NumPy array on the CPU."""
        return self.scores.detach().cpu().float().numpy()

    # -- storage ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (safetensors, the rest as JSON metadata), atomically."""
        tensors = {
            name: getattr(self, name) for name in _TENSORS if getattr(self, name) is not None
        }
        for key, value in self.step_scores.items():
            tensors[f"step_scores.{key}"] = value
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "method": self.method,
            "params": json.dumps(self.params),
            "tokens": json.dumps(self.tokens),
            "source_tokens": json.dumps(self.source_tokens),
        }
        with atomic_write(Path(path)) as f:
            f.write(steady(save(tensors, metadata=meta)))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu"):
        """Read a file written by :meth:`save` (tensors onto ``device``)."""
        name = os.fspath(path)
        meta, tensors = read(name, "GenerationAttribution", _FORMAT, device)
        steps = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("step_scores.")}
        try:
            return cls(
                **{k: v for k, v in tensors.items() if k in _TENSORS},
                step_scores=steps,
                method=meta["method"],
                params=json.loads(meta["params"]),
                tokens=json.loads(meta.get("tokens", "null")),
                source_tokens=json.loads(meta.get("source_tokens", "null")),
            )
        except KeyError as e:
            raise damaged(name, "GenerationAttribution", f"{e} missing") from e
        except (TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise damaged(name, "GenerationAttribution", str(e)) from e

    # -- pictures --------------------------------------------------------------------------
    def image(self, sample: int = 0, **options: object):
        """The heat map of one sample as a PIL image: :func:`saliency.viz.generation.
        generation_image` (``options`` go there)."""
        from ..viz.generation import generation_image

        return generation_image(self, sample, **options)

    def plot(self, sample: int = 0, **options: object):
        """A matplotlib figure of one sample: :func:`saliency.viz.generation.plot_generation`."""
        from ..viz.generation import plot_generation

        return plot_generation(self, sample, **options)

    def html(self, path: str | os.PathLike | None = None, **options: object) -> str:
        """The hover view as a whole HTML page (written to ``path`` when given):
        :func:`saliency.viz.generation.html_page`."""
        from ..viz.generation import html_page

        return html_page(self, path, **options)

    def _repr_html_(self) -> str:
        """In a notebook: hover a generated token to light up the context it came from."""
        from ..viz.generation import html_view

        return html_view(self)

    def __repr__(self) -> str:
        b, t_out = self.generated.shape
        extra = "" if self.source_ids is None else f", source={list(self.source_ids.shape)}"
        return (
            f"GenerationAttribution(method={self.method!r}, samples={b}, generated={t_out}, "
            f"context={self.ids.shape[1]}{extra}, target={self.params.get('target')!r}, "
            f"reduce={self.params.get('reduce')!r}, "
            f"values={'kept' if self.values is not None else None})"
        )


def _shape(name: str, t: object, want: tuple[int, ...], prefix: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    got = tuple(t.shape[: len(want)]) if prefix else tuple(t.shape)
    if got != want or (prefix and t.ndim != len(want) + 1):
        raise ValueError(f"{name}: expected shape {list(want)}{' + [E]' if prefix else ''}, got "
                         f"{list(t.shape)}")  # fmt: skip
