"""How each kind of model is called, embedded and differentiated for :func:`explain_generation`.

A decoder-only model runs on the context's ids and the engine differentiates ``layer`` (the input
embeddings by default). An encoder-decoder runs on ``[source embeddings | decoder embeddings]``,
one tensor the engine differentiates directly: its embedding module is often shared by encoder
and decoder, so it runs twice in one pass, and ``layer=`` cannot name one of the two calls.
Both runners give the same small interface: the step arguments of a chunk, the point to
differentiate, Integrated Gradients' baseline, and the logits that predict the steps (through the
engine's guards). Only those rows are kept: a context of ``T`` tokens has ``T * V`` logits, far
more than its ``T_out`` steps need when the prompt is long and the vocabulary large.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from ..engine import layer_name, layer_output, outputs, scores_of
from . import _context as context_
from . import _plan
from ._generate import decoder_start
from ._targets import Forced, ForcedSeq2Seq

__all__ = ["Decoder", "Seq2Seq"]


def _lm_logits(raw: object) -> torch.Tensor:
    """The logits ``[B, T, V]`` in a model's raw output; a clear error for anything else."""
    logits = scores_of(raw)
    if logits.ndim != 3:
        raise ValueError(
            f"model: expected language-model logits [B, T, V], got shape {tuple(logits.shape)}; "
            "explain_generation needs a model with a language-model head"
        )
    return logits


def _flat(raw: object) -> torch.Tensor:
    """``output=`` for a whole forward pass: the logits ``[B, T, V]`` as ``[B, T * V]``."""
    return _lm_logits(raw).flatten(1)


def _logits(model: Callable, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The logits ``[B, T, V]`` of one guarded forward pass without a graph."""
    shape = []

    def keep(raw: object) -> torch.Tensor:
        flat = _flat(raw)
        shape[:] = scores_of(raw).shape
        return flat

    flat = outputs(model, x, output=keep, **kwargs)
    return flat.view(*shape)


class _Rows:
    """``output=``: the logits at the columns ``step_positions`` names, ``[n, K * V]``, whatever
    the model kept (``logits_to_keep`` keeps the last columns only)."""

    def __init__(self, mask: str = "attention_mask") -> None:
        self.reads = (mask, "step_positions")  # the mask's width is the context's

    def __call__(self, raw: object, **given: torch.Tensor) -> torch.Tensor:
        logits = _lm_logits(raw)
        offset = given[self.reads[0]].shape[1] - logits.shape[1]
        at = (given["step_positions"] - offset).unsqueeze(-1).expand(-1, -1, logits.shape[2])
        return logits.gather(1, at).flatten(1)


def _groups(batch: int, first: int, cost: Callable[[int, int], int], cap: int) -> list[slice]:
    """Consecutive rows ``first, first + 1, ...`` in groups whose ``cost(start, stop)`` stays
    under ``cap`` (one row at least)."""
    out, s0 = [], first
    while s0 < batch:
        s1 = s0 + 1
        while s1 < batch and cost(s0, s1 + 1) <= cap:
            s1 += 1
        out.append(slice(s0, s1))
        s0 = s1
    return out


class Decoder:
    """A decoder-only model: the engine differentiates ``layer`` (the input embeddings)."""

    mask_name = "attention_mask"
    source_length = 0

    def __init__(self, model: Callable, layer) -> None:
        self.model = model
        if layer is None:
            get = getattr(model, "get_input_embeddings", None)
            layer = get() if callable(get) else None
            if layer is None:
                raise ValueError(
                    f"layer: {type(model).__name__} has no get_input_embeddings(); pass layer= "
                    "its token embedding module (or another module to attribute)"
                )
        self.layer = layer
        self.layer_name = layer_name(model, layer)
        self.positions = context_.accepts(model, "position_ids")
        self.masked = context_.accepts(model, "attention_mask")
        self.keeps = context_.accepts(model, "logits_to_keep")
        self.wrapped = Forced(
            model,
            masked=self.masked,
            positions=self.positions,
            keep=self.keeps,
            no_cache=context_.accepts(model, "use_cache"),
        )
        self.width = 0

    def start(self) -> None:
        return None

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The next token's logits ``[B, 1, V]`` (at the last column), for greedy generation."""
        self._refuse_padding(mask)
        last = torch.full((ids.shape[0], 1), ids.shape[1] - 1, device=ids.device)
        return self.rows(ids, mask, last)

    def rows(self, ids: torch.Tensor, mask: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The logits at the columns ``steps`` ``[B, K]`` of each row, ``[B, K, V]``, without a
        graph (positions from the mask), through the engine's guards, so that a random or
        batch-coupled model is refused here with its true cause."""
        kwargs = {"attention_mask": mask, "step_positions": steps}
        if self.positions:
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0)
        flat = outputs(self.wrapped, ids, output=_Rows(), **kwargs)
        return flat.view(ids.shape[0], steps.shape[1], -1)

    def _refuse_padding(self, mask: torch.Tensor) -> None:
        # Without a mask the model sees padding as tokens. Padding after a row's last real token
        # cannot change a causal model's outputs before it (checked by causal_check); padding
        # before a real token can.
        if not self.masked and bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError(
                f"attention_mask: {type(self.model).__name__}'s forward takes no attention_mask, "
                "so padding before a real token (left-padded prompts, or prompts of different "
                "lengths) cannot be left out; explain prompts of one length, without padding "
                "(continuations may differ in length: padding after their end is harmless)"
            )

    def prepare(self, ctx) -> None:
        self._refuse_padding(ctx.mask)

    def logits_of(self, ctx, budget: int | None = None) -> torch.Tensor:
        """The logits that predict each step ``[B, T_out, V]``, a causality check, and the
        layer's width.

        A pass computes the logits of the columns from its rows' first step on when the model
        takes ``logits_to_keep``, else of the whole context: the rows are grouped so that this
        stays under a share of ``budget`` (as a chunk's values do), one row at least.
        """
        picked = [self.rows(ctx.ids[:1], ctx.mask[:1], ctx.steps[:1])]
        column = picked[0][0, 0].numel() * picked[0].element_size()  # one column's logits

        def cost(s0: int, s1: int) -> int:
            kept = ctx.length - int(ctx.steps[s0:s1].min()) if self.keeps else ctx.length
            return (s1 - s0) * kept * column

        cap = _plan.DEFAULT_BLOCK if budget is None else budget // _plan._SHARE
        for rows in _groups(ctx.batch, 1, cost, cap):
            picked.append(self.rows(ctx.ids[rows], ctx.mask[rows], ctx.steps[rows]))
        picked = torch.cat(picked)
        context_.causal_check(self.model, ctx, self.rows, picked)
        kwargs = {"attention_mask": ctx.mask[:1], "step_positions": ctx.steps[:1]}
        if self.positions:
            kwargs["position_ids"] = ctx.positions()[:1]
        out = _Rows()
        shape = layer_output(self.wrapped, ctx.ids[:1], self.layer, output=out, **kwargs).shape
        if len(shape) != 3:
            raise ValueError(
                f"layer: {self.layer_name}'s output has shape {tuple(shape)}; expected one "
                "vector per token, [B, T, E]"
            )
        self.width = shape[-1]
        return picked

    def arguments(self, ctx, steps: slice, length: int, alternatives, dtype) -> dict:
        kw = {
            "attention_mask": ctx.mask[:, :length],
            "step_positions": ctx.steps[:, steps].contiguous(),
            "step_tokens": ctx.generated[:, steps].contiguous(),
            "step_weights": ctx.real[:, steps].to(dtype),
        }
        if self.positions:
            kw["position_ids"] = ctx.positions(length)
        if alternatives is not None:
            kw["step_alternatives"] = alternatives[:, steps].contiguous()
        return kw

    def point(self, ctx, length: int):
        return ctx.ids[:, :length], self.layer

    def baseline(self, baseline: object, ctx, length: int) -> object:
        """Integrated Gradients' start: zeros at the layer by default, else token ids (an id or
        ``[B, T_ctx]``) or values at the layer (``[E]`` or ``[B, T_ctx, E]``)."""
        if baseline is None:
            return torch.zeros(())
        if isinstance(baseline, torch.Tensor) and baseline.ndim >= 2:
            if baseline.shape[:2] != ctx.ids.shape:
                raise ValueError(
                    f"baseline: expected ids [B, T_ctx] = {list(ctx.ids.shape)} or values "
                    f"[B, T_ctx, E] for the whole context, got shape {list(baseline.shape)}"
                )
            return baseline[:, :length]
        return baseline


class Seq2Seq:
    """An encoder-decoder: the engine differentiates ``[source embeddings | decoder
    embeddings]``, both at once (their embedding module is often shared, so it runs twice)."""

    mask_name = "decoder_attention_mask"
    layer_name = "input embeddings (encoder and decoder)"

    def __init__(self, model: Callable) -> None:
        self.model = model
        self.wrapped = ForcedSeq2Seq(model)
        self.encoder = model.get_encoder()
        self.decoder = model.get_decoder()
        self.width = 0
        self.source_length = 0

    def start(self) -> int:
        return decoder_start(self.model)

    def logits(self, ids, mask):  # greedy generation runs the model itself (see _generate)
        raise NotImplementedError

    def _embed(self, part, ids: torch.Tensor, scale: float) -> torch.Tensor:
        with torch.no_grad():
            return part.get_input_embeddings()(ids) * scale

    def prepare(self, ctx) -> None:
        """Embed the source and the decoder context, with the scale the model applies itself
        (some models multiply after the embedding module): checked against the model's own
        logits on the first sample."""
        kwargs = dict(
            attention_mask=ctx.source_mask[:1],
            decoder_attention_mask=ctx.mask[:1],
            use_cache=False,
        )
        # Guarded: a random model is refused here, with its true cause.
        with_ids = {**kwargs, "decoder_input_ids": ctx.ids[:1]}
        want = _logits(_Seq2SeqIds(self.model), ctx.source_ids[:1], with_ids)
        # Each part may scale its embeddings after the module, and only when given ids (Marian's
        # encoder) or always (its decoder): try the scales it has, part by part.
        scales = [[1.0] for _ in range(2)]
        for options, part in zip(scales, (self.encoder, self.decoder), strict=True):
            s = getattr(part, "embed_scale", None)
            if isinstance(s, int | float) and float(s) != 1.0:
                options.append(float(s))
        for src_scale, dec_scale in itertools.product(*scales):
            src = self._embed(self.encoder, ctx.source_ids, src_scale)
            dec = self._embed(self.decoder, ctx.ids, dec_scale)
            with torch.no_grad():
                got = scores_of(
                    self.model(inputs_embeds=src[:1], decoder_inputs_embeds=dec[:1], **kwargs)
                )
            if torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                self.scales, self.src, self.dec = (src_scale, dec_scale), src, dec
                self.width = src.shape[-1]
                self.source_length = src.shape[1]
                return
        raise ValueError(
            f"model: {type(self.model).__name__} gives other logits from its input embeddings "
            "(inputs_embeds, decoder_inputs_embeds) than from its token ids, so its embeddings "
            "cannot be attributed this way"
        )

    def logits_of(self, ctx, budget: int | None = None) -> torch.Tensor:
        """The logits that predict each step ``[B, T_out, V]`` (the decoder's context is the
        steps and its start: no more to leave out)."""
        x = torch.cat([self.src, self.dec], 1)
        kwargs = {
            "attention_mask": ctx.source_mask,
            "decoder_attention_mask": ctx.mask,
            "step_positions": ctx.steps,
        }
        flat = outputs(self.wrapped, x, output=_Rows(self.mask_name), **kwargs)
        return flat.view(ctx.batch, ctx.out, -1)

    def arguments(self, ctx, steps: slice, length: int, alternatives, dtype) -> dict:
        kw = {
            "attention_mask": ctx.source_mask,
            "decoder_attention_mask": ctx.mask[:, :length],
            "step_positions": ctx.steps[:, steps].contiguous(),
            "step_tokens": ctx.generated[:, steps].contiguous(),
            "step_weights": ctx.real[:, steps].to(dtype),
        }
        if alternatives is not None:
            kw["step_alternatives"] = alternatives[:, steps].contiguous()
        return kw

    def point(self, ctx, length: int):
        return torch.cat([self.src, self.dec[:, :length]], 1), None

    def baseline(self, baseline: object, ctx, length: int) -> object:
        """Zeros by default; an id, or a pair ``(source, decoder)`` of ids or id tensors."""
        if baseline is None:
            return 0.0
        if isinstance(baseline, tuple):
            if len(baseline) != 2:
                raise ValueError(
                    f"baseline: expected (source ids, decoder ids), got {len(baseline)} items"
                )
            src_b, dec_b = baseline
        else:
            src_b = dec_b = baseline
        parts = []
        for name, b, ids, part, scale in (
            ("source", src_b, ctx.source_ids, self.encoder, self.scales[0]),
            ("decoder", dec_b, ctx.ids, self.decoder, self.scales[1]),
        ):
            if isinstance(b, int) and not isinstance(b, bool):
                b = torch.full_like(ids, b)
            if not isinstance(b, torch.Tensor) or b.is_floating_point() or b.shape != ids.shape:
                raise ValueError(
                    f"baseline: the {name} baseline must be a token id or ids shaped like "
                    f"{list(ids.shape)}, got {b!r}"
                )
            parts.append(self._embed(part, b, scale))
        return torch.cat([parts[0], parts[1][:, :length]], 1)


class _Seq2SeqIds:
    """An encoder-decoder called on source ids (decoder ids as a forward argument)."""

    def __init__(self, model: Callable) -> None:
        self.model = model

    def __call__(self, input_ids: torch.Tensor, **kwargs: object) -> object:
        return self.model(input_ids=input_ids, **kwargs)
