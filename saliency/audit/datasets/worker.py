"""The shard worker: explain one shard's samples with every method, measure them, write the files.

Every rank runs one, on its own shards. A shard's seeds and strategies come from the plan and the
leader's decisions only, so the same shard gives the same bytes on any rank, in any launch. A
sample that cannot be explained (non-finite inputs or outputs) is left out and named; the rest of
its shard goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from safetensors.torch import save

from saliency.attribution import Attribution
from saliency.targets import Contrast

from . import methods as method_specs
from . import metrics as metric_specs
from . import shards
from .arguments import check_labels
from .plan import Decisions, Plan
from .rows import cells, json_lines, wanted
from .screen import finite_inputs, screen
from .sources import Samples

__all__ = ["Explained", "MethodResult", "ShardWorker"]


@dataclass(frozen=True)
class MethodResult:
    """One method's Attribution of a shard's kept samples and its columns ``[n, K]`` or ``[n]``."""

    name: str
    attribution: Attribution
    columns: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Explained:
    """A shard's kept samples (their data-set indices and labels), why the others were left out
    (position in the shard -> reason), and each method's result."""

    index: torch.Tensor
    labels: torch.Tensor | None
    skipped: dict[int, str]
    results: list[MethodResult] = field(default_factory=list)


class ShardWorker:
    """Computes and writes shards of a run, given its plan and the leader's decisions."""

    def __init__(self, plan: Plan, decisions: Decisions) -> None:
        self.plan = plan
        self.decisions = decisions

    def write(self, i: int, samples: Samples) -> None:
        """Compute shard ``i`` from its ``samples`` and write its files, its record last."""
        folder = self.plan.out / shards.SHARDS
        first = self.plan.shards[i].start
        check_labels(samples.labels, self.decisions.n_outputs, first)
        if list(samples.x.shape[1:]) != self.decisions.shape:
            raise ValueError(
                f"data: samples {first}-{self.plan.shards[i].stop - 1} have shape "
                f"{list(samples.x.shape[1:])}, the first samples {self.decisions.shape}; every "
                "sample must have the same shape: resize or pad them to one (for text: pad "
                "every sequence to one length)"
            )
        done = self.explain(i, samples)
        stem = shards.stem(i)
        tensors: dict[str, torch.Tensor] = {"index": done.index}
        if done.labels is not None:
            tensors["label"] = done.labels
        files: dict[str, dict] = {}
        lines: list[str] = []
        if done.results:
            out = done.results[0].attribution.outputs.detach()
            predicted = out.argmax(1)
            tensors["outputs"], tensors["predicted"] = out, predicted
            for result in done.results:
                name, a = result.name, result.attribution
                tensors[f"{name}/classes"] = a.classes
                for col, value in result.columns.items():
                    tensors[f"{name}/{col}"] = value
                tensors.update(cells(name, a, done.labels, predicted))
                if self.plan.keep_values:
                    path = folder / f"{stem}.{name}.safetensors"
                    a.save(path)  # the same bytes every launch
                    files[path.name] = shards.hashed(path)
            lines = json_lines(
                done.index,
                done.labels,
                predicted,
                [(r.name, r.attribution, r.columns) for r in done.results],
            )
        # clone: metric fields may share memory (one that is the labels); safetensors refuses that
        blob = save({k: v.detach().cpu().clone() for k, v in tensors.items()})
        files[f"{stem}.safetensors"] = shards.write_file(folder, f"{stem}.safetensors", blob)
        files[f"{stem}.jsonl"] = shards.write_file(folder, f"{stem}.jsonl", "".join(lines).encode())
        skipped = [{"index": first + j, "reason": why} for j, why in done.skipped.items()]
        shards.write_record(
            folder,
            i,
            {
                "shard": i,
                "samples": [first, self.plan.shards[i].stop],
                "config": self.decisions.digest,
                "data": samples.digest(),
                "files": files,
                "skipped": skipped,
            },
        )

    def explain(
        self,
        i: int,
        samples: Samples,
        *,
        only: str | None = None,
        rows: dict[int, list[int]] | None = None,
    ) -> Explained:
        """Shard ``i``'s samples explained and measured.

        For pictures, ``only`` recomputes one method without metrics, and ``rows`` (sample ->
        class ids) restricts it to the classes wanted: the noise and path points are drawn for
        the whole batch whatever the classes, so the maps are those of the full run.
        """
        samples = samples.to(self.plan.device)
        keep, problems = finite_inputs(samples.x)
        try:
            return self._explain_kept(i, samples, keep, problems, only, rows)
        except ValueError as error:
            # A sample whose scores are NaN or inf stops the whole batch. Only now, one pass
            # finds such samples (more when the batch fails as a whole), and the rest goes on.
            # The leader's probe explained a sample of this data with this model: a batch whose
            # samples all fail is bad data, skipped like any bad sample, on every rank and in
            # every launch alike.
            failed = error
            screened, why = screen(
                self.plan.model,
                samples.x,
                output=self.plan.output,
                whole_batch_may_fail=True,
                index=self.plan.shards[i],
                forward=samples.forward,
            )
            if not torch.equal(screened, keep):
                try:
                    return self._explain_kept(i, samples, screened, why, only, rows)
                except ValueError as again:
                    failed = again
            # Finite scores, yet the batch fails: a sample whose gradient is infinite, say. Each
            # sample is tried alone, and those that fail alone are left out and named.
            alone, reasons = self._isolate(i, samples, screened, only, rows)
            if alone is None:
                raise failed from None  # not about samples: the error stands
            return self._explain_kept(i, samples, alone, {**why, **reasons}, only, rows)

    def _isolate(self, i, samples: Samples, keep, only, rows):
        """Which of the samples ``keep`` can be explained and measured alone, and why each other
        one cannot; None when none fails alone, or when all do for a reason other than
        non-finite values (then the fault is not the samples')."""
        reasons: dict[int, str] = {}
        for p in keep.nonzero().flatten().tolist():
            one = torch.zeros_like(keep)
            one[p] = True
            try:
                self._explain_kept(i, samples, one, {}, only, rows)
            except ValueError as e:
                reasons[p] = _reason(e)
        kept = int(keep.sum())
        if not reasons or (
            len(reasons) == kept and not all(r.startswith(_NON_FINITE) for r in reasons.values())
        ):
            return None, {}
        alone = keep.clone()
        alone[list(reasons)] = False
        return alone, reasons

    def _explain_kept(self, i, samples: Samples, keep, problems, only, rows) -> Explained:
        plan = self.plan
        first = plan.shards[i].start
        index = torch.tensor(list(plan.shards[i]), dtype=torch.long)[keep]
        kept = samples.take(keep)
        ys = kept.labels.to(plan.device) if kept.labels is not None else None
        done = Explained(index, ys, problems)
        if not len(kept):
            return done
        for spec in plan.methods:
            if only is not None and spec.name != only:
                continue
            classes = ys[:, None] if plan.classes == "label" else plan.classes
            if rows is not None and not isinstance(classes, Contrast):
                classes = wanted(index, rows).to(plan.device)
            a = method_specs.call(
                spec,
                plan.model,
                kept.x,
                classes,
                output=plan.output,
                max_memory=plan.max_memory,
                strategy=self.decisions.strategy.get(spec.name),
                seed=shards.shard_seed(plan.seed, first, spec.name),
                forward=kept.forward,
            )
            if not bool(torch.isfinite(a.outputs.detach()).all()):
                # A method of the caller's may pass NaN scores on: screening names the samples.
                raise ValueError(
                    f"methods: {spec.name!r} returned outputs holding NaN or inf for samples "
                    f"{first}-{plan.shards[i].stop - 1}"
                )
            out = a.outputs.detach()
            score = out.gather(1, a.classes.to(out.device))
            if a.contrasted:  # the row's score is the difference it explains
                neg = a.negatives.to(out.device)
                score = score - torch.where(neg >= 0, out.gather(1, neg.clamp(min=0)), 0)
            columns = {"score": score}
            batch = metric_specs.Batch(
                plan.model,
                kept.x,
                ys,
                a,
                self._seeded(spec, first),
                plan.output,
                plan.max_memory,
                lambda name: shards.shard_seed(plan.seed, first, name),
                kept.forward,
            )
            for metric in plan.metrics[spec.name] if only is None else []:
                try:
                    found = metric.compute(batch)
                except (ValueError, TypeError) as e:
                    raise type(e)(
                        f"metrics: {metric.name!r} on method {spec.name!r} (samples "
                        f"{first}-{plan.shards[i].stop - 1}): {e}"
                    ) from e
                for name, value in found.items():
                    columns[f"{metric.name}.{name}"] = value
            done.results.append(MethodResult(spec.name, a, columns))
        return done

    def _seeded(self, spec: method_specs.MethodSpec, first: int) -> Callable[..., Attribution]:
        """The method as a metric calls it again (on perturbed inputs): the run's seed, strategy
        and output."""
        plan, strategy = self.plan, self.decisions.strategy.get(spec.name)

        def method(model, x, classes=None, **options):
            options.setdefault("output", plan.output)
            if spec.takes_seed:
                options.setdefault("seed", shards.shard_seed(plan.seed, first, spec.name))
            if spec.takes_strategy and strategy is not None:
                options.setdefault("strategy", strategy)
            return spec.func(model, x, classes, **options)

        return method


_NON_FINITE = "non-finite:"


def _reason(error: Exception) -> str:
    """Why a sample was left out, from the error it gave alone."""
    text = str(error)
    if "gradient is infinite or NaN" in text:
        return (
            f"{_NON_FINITE} its gradient is infinite or NaN although the output is finite (an "
            "infinite derivative there: sqrt or log at 0, a division by ~0)"
        )
    if re.search(r"\b(NaN|inf|infinite)\b", text):
        return f"{_NON_FINITE} {text}"
    return f"it fails alone: {text}"
