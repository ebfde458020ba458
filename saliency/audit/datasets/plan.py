"""The plan of a run: its arguments checked at the door, then what the first samples tell.

A :class:`Plan` is everything a run was asked for, checked once (:func:`make`). The leader then
reads the first samples and probes the model with them (:func:`probe`): how many outputs it has,
which default metrics fit, what it answers on those samples. Every rank works from the plan and
the leader's :class:`Decisions`.

Examples
--------
>>> import torch
>>> model = torch.nn.Linear(4, 3)
>>> plan = make(model, torch.randn(10, 4), out_dir="unused", metrics=["norms"], batch_size=4)
>>> [(r.start, r.stop) for r in plan.shards], plan.config["batch_size"]
([(0, 4), (4, 8), (8, 10)], 4)
>>> seen = probe(plan)
>>> seen.n_outputs, len(seen.kept)
(3, 8)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import saliency
from saliency.engine import outputs, parse_memory

from . import arguments, shards
from . import manifest as manifests
from . import methods as method_specs
from . import metrics as metric_specs
from .embeddings import on_token_ids
from .screen import screen
from .sources import Samples, Source, as_source

__all__ = ["Decisions", "Plan", "Probe", "choose_strategy", "identity", "make", "narrowed", "probe"]

PROBE = 8  # samples read first, to identify the data and probe the model


@dataclass(frozen=True)
class Plan:
    """What a run computes, checked at the door; the same on every rank."""

    model: Callable
    source: Source
    out: Path
    methods: list[method_specs.MethodSpec]
    metrics: dict[str, list[metric_specs.MetricSpec]]  # method name -> its metrics
    classes: object
    batch_size: int
    output: object
    max_memory: int | None
    seed: int
    keep_values: bool
    strategy: str
    config: dict  # the JSON description of all the above, recorded in the manifest
    device: torch.device
    defaulted: bool  # metrics left to the run: the defaults, narrowed to the rows per sample
    shards: list[range]

    def keep_metrics(self, names: Mapping[str, Sequence[str]]) -> Plan:
        """The plan with, of each method's metrics, those in ``names`` only."""
        metrics = {
            method: [m for m in specs if m.name in names[method]]
            for method, specs in self.metrics.items()
        }
        config = {
            **self.config,
            "metrics": {method: [m.name for m in specs] for method, specs in metrics.items()},
        }
        return dataclasses.replace(self, metrics=metrics, config=config)


@dataclass(frozen=True)
class Probe:
    """What the leader learnt from the first samples.

    Attributes
    ----------
    samples : Samples
        The first :data:`PROBE` samples, as read.
    kept : Samples
        Those the model explains (finite inputs and outputs).
    kept_index : list of int
        Their indices in the data set.
    n_outputs : int
        The model's number of classes.
    scores : torch.Tensor
        ``[n, C]``: the model's outputs on ``kept`` after ``output``, so that a later launch can
        tell a model that behaves otherwise, whatever changed (a plain attribute, a wrapper).
    """

    samples: Samples
    kept: Samples
    kept_index: list[int]
    n_outputs: int
    scores: torch.Tensor


@dataclass(frozen=True)
class Decisions:
    """What the leader fixed for every rank (small: it is sent to them)."""

    todo: list[int]  # the shards still to do
    digest: str  # ties every shard to this run's configuration
    strategy: dict[str, str | None]  # method name -> engine strategy, fixed for the whole run
    metrics: dict[str, list[str]]  # method name -> metric names, after the defaults narrowed
    n_outputs: int
    shape: list[int]  # one sample's, as the first samples have it: every sample must
    estimated_bytes: int  # what this launch expects to write


def make(
    model: Callable,
    data: object,
    *,
    out_dir: str | os.PathLike,
    methods: object = "gradients",
    metrics: object = None,
    classes: object = None,
    batch_size: int | None = None,
    output: object = "logits",
    max_memory: int | str | None = None,
    seed: int = 0,
    keep_values: bool = False,
    strategy: str = "auto",
    metric_options: dict | None = None,
) -> Plan:
    """Check a run's arguments (as :func:`saliency.audit.run` takes them) and plan its shards."""
    if not callable(model):
        raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
    out = arguments.check_out_dir(out_dir)
    source = as_source(data)
    batch_size = arguments.check_batch_size(batch_size, source)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if not isinstance(keep_values, bool):
        raise TypeError(f"keep_values: expected True or False, got {keep_values!r}")
    if not isinstance(strategy, str):
        raise TypeError(f"strategy: expected a strategy name such as 'auto', got {strategy!r}")
    classes = arguments.check_classes(classes, source)
    budget = parse_memory(max_memory)
    method_list = method_specs.resolve(methods)
    if source.integer_x:  # token ids: this package's methods differentiate the embeddings
        method_list = on_token_ids(method_list, model)
    defaulted = metrics is None
    if defaulted:  # narrowed once the model's outputs are known (narrowed)
        metrics = arguments.default_metrics(classes, token_ids=source.integer_x)
    metric_list = arguments.check_metrics(metrics, metric_options, [m.name for m in method_list])
    config = {
        "methods": {m.name: manifests.describe(m.func) for m in method_list},
        "metrics": {name: [m.name for m in specs] for name, specs in metric_list.items()},
        "metric_options": manifests.describe(dict(metric_options or {})),
        "classes": manifests.describe(classes),
        "batch_size": batch_size,
        "output": manifests.describe(output),
        "max_memory": budget,
        "seed": seed,
        "keep_values": keep_values,
        "strategy": strategy,
    }
    return Plan(
        model=model,
        source=source,
        out=out,
        methods=method_list,
        metrics=metric_list,
        classes=classes,
        batch_size=batch_size,
        output=output,
        max_memory=budget,
        seed=seed,
        keep_values=keep_values,
        strategy=strategy,
        config=config,
        device=_device(model),
        defaulted=defaulted,
        shards=shards.plan(len(source), batch_size),
    )


def probe(plan: Plan) -> Probe:
    """Read the first samples, whatever the batch size, and run the model on them."""
    first = range(0, min(len(plan.source), PROBE))
    _, samples = next(plan.source.batches([first]))
    on_device = samples.to(plan.device)
    keep, _ = screen(
        plan.model,
        on_device.x,
        output=plan.output,
        whole_batch_may_fail=True,
        index=list(first),
        forward=on_device.forward,
    )
    if not bool(keep.any()):
        raise ValueError(
            f"data: none of the first {len(first)} samples can be explained (non-finite "
            "inputs or outputs); check the data and the model"
        )
    kept = on_device.take(keep)
    scores = outputs(plan.model, kept.x, output=plan.output, **kept.forward)
    index = keep.nonzero().flatten().tolist()
    return Probe(samples, kept, index, int(scores.shape[1]), scores.detach().cpu())


def narrowed(plan: Plan, seen: Probe) -> Plan:
    """The plan once the model's outputs are known: class ids checked, default metrics narrowed
    to what fits, every metric checked against every method."""
    arguments.check_ids(plan.classes, seen.n_outputs)
    # Every label when they are at hand, else those of the first samples: a shard checks its own.
    arguments.check_labels(
        plan.source.labels if plan.source.labels is not None else seen.samples.labels,
        seen.n_outputs,
    )
    x = seen.samples.x
    if plan.defaulted:
        fit = arguments.default_metrics(
            plan.classes, seen.n_outputs, token_ids=not x.is_floating_point()
        )
        plan = plan.keep_metrics({m.name: fit for m in plan.methods})
    arguments.check_fit(plan.metrics, plan.methods, plan.classes, seen.n_outputs, x)
    return plan


def identity(plan: Plan, seen: Probe) -> dict:
    """What must match for a run to resume: configuration, model, data and versions."""
    x = seen.samples.x
    return {
        "config": plan.config,
        "model": {
            "fingerprint": manifests.fingerprint(plan.model),
            "type": type(plan.model).__qualname__,
        },
        "data": {
            "samples": len(plan.source),
            "labelled": plan.source.labelled,
            "shape": list(x.shape[1:]),
            "dtype": str(x.dtype),
            "first_samples": seen.samples.digest(),
        },
        "versions": {"saliency": saliency.__version__, "torch": torch.__version__},
    }


def choose_strategy(plan: Plan) -> dict[str, str | None]:
    """The engine strategy of each of this package's methods, fixed for the whole run.

    ``"auto"`` is decided here without timing anything, as ``"loop"`` (exact, the floor of
    reverse mode): a choice by timing differs from launch to launch, and so would the bytes of
    every shard (strategies agree only to rounding). Named strategies are kept.
    """
    strategy = "loop" if plan.strategy == "auto" else plan.strategy
    return {spec.name: strategy if spec.takes_strategy else None for spec in plan.methods}


def _device(model: Callable) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return torch.device("cpu")
