"""``explain_generation``: every generated token explained, steps chunked by position.

Each generated token is one class of the engine (see :mod:`._targets`). A chunk of consecutive
steps needs only the prefix up to the column that predicts its last step: one forward pass on
that prefix, then the chunk's backward passes, batched by the engine. So the work per step is
about that of a loop over steps on its own prefix, without a forward pass per step, and the
``[B, T_out, T_ctx, E]`` values are reduced chunk by chunk, never held unless asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..engine import layer_output, parse_memory
from ..methods import gradients, integrated_gradients, smoothgrad
from . import _context as context_
from . import _plan
from ._generate import greedy
from ._models import Decoder, Seq2Seq
from ._result import GenerationAttribution
from ._targets import StepScores, alternatives_for, parse

__all__ = ["METHODS", "explain_generation"]

# Each method's own options, and how its token scores are reduced over the embedding by default.
METHODS: dict[str, tuple[frozenset[str], str]] = {
    "gradients": (frozenset(), "norm"),
    "x_input": (frozenset(), "sum"),
    "integrated_gradients": (frozenset({"baseline", "steps", "rule", "tol", "max_steps"}), "sum"),
    "smoothgrad": (frozenset({"n_samples", "noise", "noise_std", "variant", "seed"}), "norm"),
}
_SHARED_OPTIONS = frozenset({"strategy"})
REDUCTIONS = ("sum", "norm")


def explain_generation(
    model: Callable,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    generated: torch.Tensor | list | None = None,
    max_new_tokens: int | None = None,
    method: str = "gradients",
    target: object = "probability",
    layer: torch.nn.Module | str | None = None,
    keep_values: bool = False,
    reduce: str | None = None,
    max_memory: int | str | None = None,
    eos_token_id: int | list[int] | None = None,
    tokenizer: object = None,
    **method_options: object,
) -> GenerationAttribution:
    """Explain every generated token of a language model by its context, in one call.

    With teacher forcing, step ``t``'s target is the score of generated token ``y_t`` at the
    position that predicts it; every step is one class of the engine, so all steps share forward
    passes, and steps are chunked by position so that each chunk runs on the prefix it needs.

    Parameters
    ----------
    model
        A causal language model (HuggingFace ``...ForCausalLM`` / ``...LMHeadModel``, or any
        module mapping ids ``[B, T]`` to logits ``[B, T, V]``, taking ``attention_mask`` and
        ``position_ids`` if it has them), or a HuggingFace encoder-decoder
        (``...ForConditionalGeneration``). Never modified.
    input_ids
        The prompts ``[B, P]`` (decoder-only) or the sources ``[B, S]`` (encoder-decoder).
    attention_mask
        ``[B, P]``, 1 for real tokens, 0 for padding (left, right or anywhere); ``None``: no
        padding. Positions follow the mask, so a padded prompt is explained as it would be alone.
    generated
        The continuation to explain (forced decoding): ``[B, T_out]`` ids, or one sequence of
        ids per prompt (of different lengths: the shorter are padded and their missing steps
        not explained). ``None``: generate greedily first, ``max_new_tokens`` tokens. Either
        way, the steps after a row's first end-of-sequence token are padding, not explained
        (so a result's ``generated`` can be passed back as it is).
    max_new_tokens
        How many tokens to generate when ``generated`` is not given.
    method
        ``"gradients"`` (the gradient at the embeddings; Inseq's ``saliency`` up to its absolute
        value), ``"x_input"`` (gradient x input), ``"integrated_gradients"`` (options
        ``baseline``, ``steps``, ``rule``, ``tol``, ``max_steps`` as in
        :func:`saliency.integrated_gradients`; one interpolated sequence serves every step) or
        ``"smoothgrad"`` (options ``n_samples``, ``noise``, ``noise_std``, ``variant``, ``seed``
        as in :func:`saliency.smoothgrad`; one noise draw per copy of the whole context serves
        every step). Every method also takes ``strategy``.
    target
        What is differentiated at each step: ``"probability"`` of the generated token (Inseq's
        default), ``"log_probability"``, ``"logit"``, or :func:`saliency.generation.contrast`
        (the token's score minus an alternative's).
    layer
        Decoder-only models: the module whose output is attributed (default: the input
        embeddings, ``model.get_input_embeddings()``). Encoder-decoders are attributed at both
        input embeddings and take no ``layer``.
    keep_values
        Also return the raw values ``[B, T_out, T_ctx, E]`` (memory: all of it at once).
    reduce
        How a token's ``E`` values become its score: ``"sum"`` (signed; for Integrated Gradients
        the scores of a step add up to its ``F(x) - F(b)``) or ``"norm"`` (L2, how much, not
        which way). Default: ``"norm"`` for gradients and SmoothGrad, ``"sum"`` otherwise.
    max_memory
        Peak extra memory, as for :func:`saliency.class_jacobian`: steps are chunked (and the
        engine splits each chunk) so that it fits; an error says how much one step needs when
        even that does not fit.
    eos_token_id
        End-of-sequence ids, where greedy generation stops and after which steps are not
        explained (default: the model's generation config; ``[]``: none).
    tokenizer
        Optional: a tokenizer (HuggingFace, or anything with ``convert_ids_to_tokens`` or
        ``decode``) or a vocabulary list, to record the token strings (``tokens``) for pictures
        and ``merge("words")``.
    **method_options
        The method's own options (above).

    Returns
    -------
    GenerationAttribution

    Examples
    --------
    >>> import torch, saliency
    >>> from saliency import models
    >>> lm, info = models.load("reverse")
    >>> prompts, _ = models.held_out("reverse", n=2)  # left-padded with id 0
    >>> a = saliency.explain_generation(lm, prompts, attention_mask=prompts != 0, max_new_tokens=4)
    >>> a.scores.shape  # [B, T_out, T_ctx]: every generated token by every context token
    torch.Size([2, 4, 14])
    >>> bool((a.scores[:, 0, a.columns[0]:] == 0).all())  # a step cannot see its own token
    True
    """
    options, reduce = _options(method, method_options, reduce)
    if not isinstance(keep_values, bool):
        raise TypeError(f"keep_values: expected True or False, got {keep_values!r}")
    score, contrast = parse(target)
    budget = parse_memory(max_memory)
    kind = context_.kind_of(model)
    vocab = context_.vocabulary(model)
    input_ids = context_.check_ids(input_ids, "input_ids", vocab)
    mask = context_.check_mask(attention_mask, input_ids, "attention_mask")
    eos = context_.eos_ids(model, eos_token_id)
    if kind == "encoder-decoder" and layer is not None:
        raise ValueError(
            "layer: an encoder-decoder is attributed at its encoder's and decoder's input "
            "embeddings together; leave layer out"
        )
    if kind == "encoder-decoder" and mask is not None:
        _warn_left_padded_sources(model, mask)
    runner = Seq2Seq(model) if kind == "encoder-decoder" else Decoder(model, layer)
    if generated is None:
        gen, real = greedy(model, kind, input_ids, mask, max_new_tokens, eos, runner.logits)
    else:
        if max_new_tokens is not None:
            raise ValueError(
                "max_new_tokens: only used to generate; with generated= given, leave it out"
            )
        gen, real = context_.continuation(generated, input_ids.shape[0], vocab, eos)
    ctx = context_.build(kind, input_ids, mask, gen, real, runner.start())
    alternatives = None if contrast is None else alternatives_for(contrast, ctx.generated, vocab)
    runner.prepare(ctx)
    picked = runner.logits_of(ctx, budget)  # [B, T_out, V]: the logits that predict the steps
    step_scores = _step_scores(picked, ctx, score, alternatives)
    output = StepScores(score, alternatives is not None, runner.mask_name)
    dtype = picked.dtype
    width = runner.width
    b, t_out, t_ctx = ctx.batch, ctx.out, ctx.length
    like = {"dtype": dtype, "device": ctx.ids.device}
    scores = torch.zeros(b, t_out, t_ctx, **like)
    values = torch.zeros(b, t_out, t_ctx, width, **like) if keep_values else None
    src = runner.source_length
    source_scores = torch.zeros(b, t_out, src, **like) if src else None
    source_values = torch.zeros(b, t_out, src, width, **like) if src and keep_values else None
    delta = torch.zeros(b, t_out, **like) if method == "integrated_gradients" else None
    steps_used = [[0] * t_out for _ in range(b)] if options.get("steps") == "auto" else None
    seed = _seed(method, options)
    given = options  # as the caller gave them, for params
    if method == "smoothgrad" and options.get("noise_std") is None:
        options = {k: v for k, v in options.items() if k != "noise"}
        noise = given.get("noise")
        options["noise_std"] = _noise_std(runner, ctx, noise, output, alternatives, dtype)
    chunks = _plan.chunks(ctx, method, options, budget, width, dtype, src, kind)
    strategy = None
    for s0, s1, length in chunks:
        steps = slice(s0, s1)
        kw = runner.arguments(ctx, steps, length, alternatives, dtype)
        a = _call(method, options, seed, runner, ctx, length, output, kw, budget, max_memory)
        strategy = a.params.get("strategy", strategy)
        v = a.values  # [B, c, src + length, E]
        visible = _visible(ctx, steps, length)  # [B, c, length]
        part = v[:, :, src:]
        scores[:, steps, :length] = _reduce(part, reduce) * visible
        if values is not None:
            values[:, steps, :length] = part * visible.unsqueeze(-1)
        if src:
            seen = ctx.source_mask[:, None, :].bool() & ctx.real[:, steps, None]
            source_scores[:, steps] = _reduce(v[:, :, :src], reduce) * seen
            if source_values is not None:
                source_values[:, steps] = v[:, :, :src] * seen.unsqueeze(-1)
        if delta is not None:
            delta[:, steps] = a.delta * ctx.real[:, steps]
        if steps_used is not None:
            for i, row in enumerate(a.params["steps_used"]):
                steps_used[i][s0:s1] = row
        del a, v, part
    params = {
        "target": _describe_target(score, contrast),
        "reduce": reduce,
        "layer": runner.layer_name,
        **{k: describe(v) for k, v in given.items()},
        "strategy": strategy,
        "max_memory": max_memory,
        "chunks": [[s0, s1, length] for s0, s1, length in chunks],
        "greedy": generated is None,
    }
    if seed is not None:
        params["seed"] = seed
        params["noise_std"] = describe(options["noise_std"])
    if steps_used is not None:
        params["steps_used"] = steps_used
    tokens, source_tokens = _tokens(tokenizer, ctx)
    return GenerationAttribution(
        generated=ctx.generated,
        ids=ctx.ids,
        attention_mask=ctx.mask,
        scores=scores,
        step_scores=step_scores,
        method=method,
        params=params,
        values=values,
        delta=delta,
        source_ids=ctx.source_ids,
        source_mask=ctx.source_mask,
        source_scores=source_scores,
        source_values=source_values,
        tokens=tokens,
        source_tokens=source_tokens,
    )


# -- arguments ----------------------------------------------------------------------------------


def _options(method: object, given: dict, reduce: object) -> tuple[dict, str]:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    allowed, default = METHODS[method]
    unknown = sorted(set(given) - allowed - _SHARED_OPTIONS)
    if unknown:
        raise TypeError(
            f"{unknown[0]}: not an option of method={method!r}; its options are "
            f"{sorted(allowed | _SHARED_OPTIONS)}"
        )
    if reduce is None:
        reduce = default
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {list(REDUCTIONS)}, got {reduce!r}")
    return dict(given), reduce


def _seed(method: str, options: dict) -> int | None:
    """SmoothGrad's seed, drawn once so that every chunk adds the same noise to the context."""
    if method != "smoothgrad":
        return None
    from .._random import generator

    return generator(options.pop("seed", None), torch.device("cpu"))[1]


def describe(value: object) -> object:
    """A JSON-safe description of an option (tensors by shape, callables by name)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim == 0:
            return value.item()
        return (
            value.tolist()
            if value.ndim == 1 and value.numel() <= 64
            else f"tensor{list(value.shape)}"
        )
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    return getattr(value, "__qualname__", type(value).__name__)


def _describe_target(score: str, contrast) -> object:
    if contrast is None:
        return score
    return {"contrast": score, "alternatives": describe(contrast.alternatives)}


def _warn_left_padded_sources(model: Callable, mask: torch.Tensor) -> None:
    """An encoder with absolute positions numbers a source's tokens by their index, padding
    included (HuggingFace encoder-decoders take no position ids), so padding before real
    tokens changes how a source is read; relative positions (T5) are not moved by it."""
    config = getattr(model, "config", None)
    if getattr(config, "relative_attention_num_buckets", None) is not None:
        return
    real = mask.bool()
    early = (~real[:, :-1] & real[:, 1:]).any(1)  # a padding column before a real one
    if bool(early.any()):
        warnings.warn(
            f"attention_mask: sources {early.nonzero().flatten().tolist()[:10]} have padding "
            f"before real tokens, and {type(model).__name__} numbers its source positions by "
            "index, padding included: they are explained as the model reads them padded, not "
            "as alone. Pad sources on the right (HuggingFace tokenizers do for these models)",
            stacklevel=3,
        )


def _noise_std(runner, ctx, noise: object, output, alternatives, dtype) -> torch.Tensor:
    """SmoothGrad's noise of every sample ``[B]``: ``noise`` (default 0.15) times the range of
    its values at the layer over its real columns only, so that a prompt's padding (and the
    padding's embeddings) does not change how it is explained."""
    noise = 0.15 if noise is None else noise
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
        raise ValueError(f"noise: expected a non-negative number, got {noise!r}")
    x, layer = runner.point(ctx, ctx.length)
    if layer is None:  # an encoder-decoder: [source | decoder] embeddings
        real = torch.cat([ctx.source_mask, ctx.mask], 1).bool()
    else:
        kw = runner.arguments(ctx, slice(0, ctx.out), ctx.length, alternatives, dtype)
        x = layer_output(runner.wrapped, x, layer, output=output, **kw)
        real = ctx.mask.bool()
    x = x.detach()
    if x.ndim < 2 or x.shape[:2] != real.shape:  # not one value per token: the whole range
        real = torch.ones(x.shape[:1], dtype=torch.bool, device=x.device)
    real = real.reshape(*real.shape, *[1] * (x.ndim - real.ndim)).expand_as(x).flatten(1)
    flat = x.flatten(1)
    top = torch.where(real, flat, -torch.inf).amax(1)
    low = torch.where(real, flat, torch.inf).amin(1)
    return (noise * (top - low)).to(dtype)


def _reduce(values: torch.Tensor, how: str) -> torch.Tensor:
    return values.norm(dim=-1) if how == "norm" else values.sum(-1)


def _visible(ctx, steps: slice, length: int) -> torch.Tensor:
    """``[B, c, length]``: the real context columns each real step can see (up to the column
    that predicts it)."""
    cols = torch.arange(length, device=ctx.ids.device)
    sees = cols[None, None, :] <= ctx.steps[:, steps, None]
    return sees & ctx.mask[:, None, :length].bool() & ctx.real[:, steps, None]


def _step_scores(picked: torch.Tensor, ctx, score: str, alternatives) -> dict:
    log_p = picked.log_softmax(-1)
    token = ctx.generated.unsqueeze(-1)
    out = {"probability": log_p.gather(2, token).squeeze(-1).exp()}
    pick = {"probability": log_p.exp(), "log_probability": log_p, "logit": picked}[score]
    target = pick.gather(2, token).squeeze(-1)
    if alternatives is not None:
        target = target - pick.gather(2, alternatives.unsqueeze(-1)).squeeze(-1)
    out["target"] = target
    return {k: v * ctx.real for k, v in out.items()}


def _tokens(tokenizer: object, ctx) -> tuple[list | None, list | None]:
    if tokenizer is None:
        return None, None

    def strings(ids: torch.Tensor) -> list[list[str]]:
        rows = ids.tolist()
        if isinstance(tokenizer, list | tuple):  # a vocabulary: the string of every id
            top = max((max(row, default=0) for row in rows), default=0)
            if top >= len(tokenizer):
                raise ValueError(
                    f"tokenizer: a vocabulary of {len(tokenizer)} strings has none for id {top}"
                )
            return [[str(tokenizer[i]) for i in row] for row in rows]
        convert = getattr(tokenizer, "convert_ids_to_tokens", None)
        if callable(convert):
            return [[str(t) for t in convert(row)] for row in rows]
        decode = getattr(tokenizer, "decode", None)
        if callable(decode):
            return [[str(decode([i])) for i in row] for row in rows]
        raise TypeError(
            f"tokenizer: expected a tokenizer (with convert_ids_to_tokens or decode) or a "
            f"vocabulary list, got "
            f"{type(tokenizer).__name__}"
        )

    source = None if ctx.source_ids is None else strings(ctx.source_ids)
    return strings(ctx.ids), source


# -- one chunk ----------------------------------------------------------------------------------


def _call(method, options, seed, runner, ctx, length, output, kw, budget, max_memory):
    common = dict(output=output, max_memory=budget, **kw)
    x, layer = runner.point(ctx, length)
    if layer is not None:
        common["layer"] = layer
    model = runner.wrapped
    try:
        if method in ("gradients", "x_input"):
            return gradients(model, x, None, times_input=method == "x_input", **options, **common)
        if method == "integrated_gradients":
            opts = dict(options)
            opts["baseline"] = runner.baseline(opts.get("baseline"), ctx, length)
            return integrated_gradients(model, x, None, **opts, **common)
        return smoothgrad(model, x, None, seed=seed, **options, **common)
    except MemoryError as e:
        raise MemoryError(
            f"max_memory={max_memory!r}: explaining a chunk of steps on a prefix of {length} "
            f"tokens does not fit. {e}"
        ) from e
