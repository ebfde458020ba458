"""``saliency.audit.run``: explain and measure a whole data set, in shards that survive any crash.

The leader (rank 0, or the only process) checks the folder, writes the manifest and fixes what
every rank must agree on (the engine strategy, the shards still to do); every rank then computes
its share of those shards, each one's files written atomically with a completion record last;
once all ranks are done, the leader merges the shards into the summary and the report.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save

import saliency
from saliency.attribution import Attribution
from saliency.engine import outputs, parse_memory
from saliency.targets import Classes, Contrast

from . import arguments, shards
from . import manifest as manifests
from . import methods as method_specs
from . import metrics as metric_specs
from .distributed import Ranks, ranks
from .rows import cells, json_lines, wanted
from .screen import finite_inputs, screen
from .sources import Source, as_source

__all__ = ["AuditRun", "run"]

DEFAULT_METRICS = arguments.DEFAULT_METRICS
_PROBE = 8  # samples read first, to identify the data and probe the model
_LOCK = ".lock"


@dataclass(frozen=True)
class AuditRun:
    """Where a run's results are and what this launch did.

    Attributes
    ----------
    out_dir : Path
    manifest : Path
        ``manifest.json``: configuration, model fingerprint, versions, complete shards.
    summary : dict
        The contents of ``summary.json`` (every rank gets it).
    report : Path or None
        ``report.html``, unless ``report=False``.
    shards : int
        Shards in the whole run.
    computed : int
        Shards this process computed in this launch (the others were complete or another rank's).
    resumed : int
        Shards already complete when this launch started.
    skipped : dict
        ``{sample index: reason}`` for the samples left out (non-finite input or output).
    estimated_bytes : int
        What this launch expected to write, checked against the free disk space before starting.
    """

    out_dir: Path
    manifest: Path
    summary: dict
    report: Path | None
    shards: int
    computed: int
    resumed: int
    skipped: dict[int, str] = field(default_factory=dict)
    estimated_bytes: int = 0


def run(
    model: Callable,
    data: object,
    *,
    out_dir: str | os.PathLike,
    methods: str | Sequence[str] | dict[str, Callable] = "gradients",
    metrics: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    classes: Classes | str = None,
    batch_size: int | None = None,
    output: str | Callable = "logits",
    max_memory: int | str | None = None,
    seed: int = 0,
    keep_values: bool = False,
    strategy: str = "auto",
    metric_options: dict[str, dict] | None = None,
    class_names: Sequence[str] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    report: bool = True,
    progress: bool = False,
    overwrite: bool = False,
) -> AuditRun:
    """Explain every sample of ``data`` for every requested class, measure, summarise, report.

    Results go to ``out_dir`` in shards of ``batch_size`` samples. Started again with the same
    arguments, a run skips the complete shards and ends with the same bytes as a run never
    interrupted; started with other arguments, another model or other data, it is refused with
    the differences named. Under ``torchrun`` every rank takes its share of the shards; the
    results do not depend on the number of ranks. See the guide, docs/audit/runs.md.

    Parameters
    ----------
    model
        As in :func:`saliency.class_jacobian`; never modified. Its fingerprint (a hash of its
        parameters, buffers and modes) is recorded and checked on resume.
    data
        A tensor ``x``, a pair ``(x, labels)``, a map-style Dataset of ``x`` or ``(x, label)``
        items, or a DataLoader reading one in order (``shuffle=False``; its ``batch_size``,
        ``collate_fn`` and workers are used).
    out_dir
        The run's folder, created if missing.
    methods
        A name (``"gradients"``, ``"smoothgrad"``, ``"ig"``), a list of names, or a dict
        name -> method following :class:`saliency.methods.Method` (``functools.partial`` of
        this package's methods, :func:`saliency.from_captum`, your own). Named methods use their
        defaults.
    metrics
        Names of per-sample metrics, for every method, or a dict method name -> names: the
        functions of :mod:`saliency.audit` (``deletion``, ``class_sensitivity``, ``margins``,
        ...) and ``"norms"`` (each row's L1 and L2 norm). Each row's ``score`` is always kept.
        ``None``: ``deletion`` and ``class_sensitivity``, the latter only when each sample gets
        2 classes or more. A metric that cannot measure a method's rows (``class_sensitivity``
        with one class per sample, ``completeness`` for other methods than integrated
        gradients, ``margins`` for other than plain gradients of every class, ``road`` on
        samples that are not images) is refused before anything is written.
    classes
        As in :func:`saliency.class_jacobian` (all classes by default; per-sample id tensors are
        not accepted), or ``"label"``: each sample's label.
    batch_size
        Samples per shard and per method call; default the DataLoader's, else 32. Part of the
        configuration: noise and path points are drawn per batch.
    output, max_memory
        As in :func:`saliency.class_jacobian`, for the methods and the metrics.
    seed
        Every method and metric that takes a seed gets one derived from ``seed`` and the shard.
    keep_values
        Also keep every attribution, one ``Attribution`` file per shard and method (read with
        :meth:`saliency.Attribution.load`). Off by default: ``[N, K, *input]`` for a whole data set
        can be huge. The size is estimated first, and a run that would not fit the free disk space
        is refused.
    strategy
        The engine strategy for this package's methods, recorded in the manifest. ``"auto"``
        takes ``"loop"`` (exact, the cost floor of reverse mode), never a timing: two launches
        must make the same choice for their bytes to agree. Name another (``"vmap"`` is often
        faster on a GPU) to go faster.
    metric_options
        Extra arguments per metric, e.g. ``{"deletion": {"steps": 10}}``.
    class_names, mean, std
        For the report's pictures: class names, and the normalisation ``(x - mean) / std`` of the
        inputs, undone to draw them.
    report
        Write ``report.html``, a self-contained page (pictures inlined).
    progress
        Show a progress bar on stderr (rank 0 only).
    overwrite
        When ``out_dir`` holds a run with another configuration, delete its results and start
        again instead of refusing.

    Returns
    -------
    AuditRun

    Examples
    --------
    >>> import tempfile, saliency.audit
    >>> from saliency import models
    >>> model, info = models.load("digits")
    >>> x, y = models.held_out("digits", 16)
    >>> result = saliency.audit.run(model, (x, y), out_dir=tempfile.mkdtemp(),
    ...                             metrics=["norms"], batch_size=8)
    >>> result.shards, result.computed, result.summary["accuracy"]
    (2, 2, 1.0)
    >>> again = saliency.audit.run(model, (x, y), out_dir=result.out_dir,
    ...                            metrics=["norms"], batch_size=8)
    >>> again.computed, again.resumed
    (0, 2)
    """
    job = _Job.build(
        model=model,
        data=data,
        out_dir=out_dir,
        methods=methods,
        metrics=metrics,
        classes=classes,
        batch_size=batch_size,
        output=output,
        max_memory=max_memory,
        seed=seed,
        keep_values=keep_values,
        strategy=strategy,
        metric_options=metric_options,
    )
    with ranks(job.device) as r, contextlib.ExitStack() as stack:
        stack.callback(job.unlock)
        prep = _shared(r, lambda: job.prepare(overwrite=overwrite))
        job.accept(prep)
        mine = prep["todo"][r.rank :: r.world]
        computed = 0
        ok = False
        try:
            computed = job.compute(mine, r, progress=progress, size=prep["estimated_bytes"])
            ok = True
        finally:
            everyone_ok = r.agree_ok(ok)
        if not everyone_ok:
            raise RuntimeError(
                "another rank failed; the shards every rank completed are kept: run again with "
                "the same arguments to resume"
            )
        _shared(
            r,
            lambda: job.finish(class_names=class_names, mean=mean, std=std, report=report),
        )
    summary = job.read_summary()
    return AuditRun(
        out_dir=job.out,
        manifest=job.out / manifests.NAME,
        summary=summary,
        report=job.out / "report.html" if report else None,
        shards=len(job.plan),
        computed=computed,
        resumed=len(job.plan) - len(prep["todo"]),
        skipped={int(s["index"]): s["reason"] for s in summary.get("skipped", [])},
        estimated_bytes=prep["estimated_bytes"],
    )


def _shared(r: Ranks, work: Callable[[], object]) -> object:
    """``work()`` on the leader, its result (or its error, raised again) on every rank."""
    outcome = None
    if r.leader:
        try:
            outcome = ("ok", work())
        except Exception as e:
            if r.world == 1:
                raise
            outcome = ("error", e)
    outcome = r.share(outcome)
    if outcome[0] == "error":
        error = outcome[1]
        if r.leader:
            raise error
        raise type(error)(*error.args)
    return outcome[1]


@dataclass
class _Job:
    """Everything a run needs, checked once at the door."""

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
    config: dict
    device: torch.device
    defaulted: bool  # metrics left to the run: the defaults, narrowed to the rows per sample
    plan: list[range] = field(default_factory=list)
    digest: str = ""
    fixed_strategy: dict = field(default_factory=dict)  # method name -> engine strategy or None
    manifest: dict = field(default_factory=dict)  # the leader's
    done: set[int] = field(default_factory=set)  # the leader's view of the complete shards
    lock: object = None  # the leader's open lock file

    @classmethod
    def build(
        cls,
        *,
        model,
        data,
        out_dir,
        methods,
        metrics,
        classes,
        batch_size,
        output,
        max_memory,
        seed,
        keep_values,
        strategy,
        metric_options,
    ) -> _Job:
        if not callable(model):
            raise TypeError(
                f"model: expected an nn.Module or a callable, got {type(model).__name__}"
            )
        source = as_source(data)
        batch_size = arguments.check_batch_size(batch_size, source)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        for name, flag in (("keep_values", keep_values),):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected True or False, got {flag!r}")
        if not isinstance(strategy, str):
            raise TypeError(f"strategy: expected a strategy name such as 'auto', got {strategy!r}")
        classes = arguments.check_classes(classes, source)
        budget = parse_memory(max_memory)
        method_list = method_specs.resolve(methods)
        defaulted = metrics is None
        if defaulted:  # narrowed once the model's outputs are known (prepare)
            metrics = arguments.default_metrics(classes)
        metric_list = arguments.check_metrics(
            metrics, metric_options, [m.name for m in method_list]
        )
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
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"out_dir: {str(out)!r} is a file, not a folder")
        job = cls(
            model,
            source,
            out,
            method_list,
            metric_list,
            classes,
            batch_size,
            output,
            budget,
            seed,
            keep_values,
            strategy,
            config,
            _device(model),
            defaulted,
        )
        job.plan = shards.plan(len(source), batch_size)
        return job

    # -- the leader, before any rank starts --------------------------------------------------
    def prepare(self, *, overwrite: bool) -> dict:
        """Check the data, the model and the arguments, then the folder; write the manifest and
        fix the strategy; the shards still to do. Nothing is written before the checks pass."""
        # The first few samples, whatever the batch size: they identify the data and probe the
        # model's outputs.
        first = range(0, min(len(self.source), _PROBE))
        _, x0, y0 = next(self.source.batches([first]))
        x0 = x0.to(self.device)
        keep, _ = screen(
            self.model, x0, output=self.output, whole_batch_may_fail=True, index=list(first)
        )
        if not bool(keep.any()):
            raise ValueError(
                f"data: none of the first {len(first)} samples can be explained (non-finite "
                "inputs or outputs); check the data and the model"
            )
        probe = x0[keep.to(x0.device)]
        n_outputs = outputs(self.model, probe[:1], output=self.output).shape[1]
        arguments.check_ids(self.classes, n_outputs)
        if self.defaulted:
            self._keep_metrics(
                {m.name: arguments.default_metrics(self.classes, n_outputs) for m in self.methods}
            )
        arguments.check_fit(self.metrics, self.methods, self.classes, n_outputs, x0.shape[1:])
        parts = {
            "config": self.config,
            "model": {
                "fingerprint": manifests.fingerprint(self.model),
                "type": type(self.model).__qualname__,
            },
            "data": {
                "samples": len(self.source),
                "labelled": self.source.labelled,
                "shape": list(x0.shape[1:]),
                "dtype": str(x0.dtype),
                "first_samples": manifests.tensor_digest(x0.cpu(), y0),
            },
            "versions": {"saliency": saliency.__version__, "torch": torch.__version__},
        }

        folder = self.out / shards.SHARDS
        folder.mkdir(parents=True, exist_ok=True)
        self._lock()
        shards.clean_temporary(folder)
        shards.clean_temporary(self.out)
        try:
            old = manifests.read(self.out)
        except manifests.Unreadable:
            if not overwrite:
                raise
            self._delete_results()
            old = None
        if old is not None:
            changed = manifests.differences({k: old.get(k) for k in parts}, parts)
            # A run that completed no shard has nothing to lose (a launch refused by a check
            # of its first shard, say): another configuration simply starts afresh.
            if changed and not overwrite and any(folder.glob("*.done.json")):
                raise ValueError(
                    f"out_dir: {str(self.out)!r} holds a run made differently, so it cannot be "
                    f"resumed: {'; '.join(changed)}. Run again as before, choose another out_dir, "
                    "or pass overwrite=True to delete its results"
                )
            if changed:
                self._delete_results()
                old = None
        self.fixed_strategy = old["strategy"] if old else self._choose_strategy()
        self.digest = manifests.digest({**parts, "strategy": self.fixed_strategy})
        done = [i for i in range(len(self.plan)) if shards.complete(folder, i, self.digest)]
        changed_data = self._changed_data(folder, done)
        if changed_data:
            if not overwrite:
                raise ValueError(
                    f"data: samples {', '.join(changed_data)} are not those their complete shards "
                    f"in {str(self.out)!r} were made from (other inputs or labels), so the run "
                    "cannot be resumed. Run again with the data as before, choose another "
                    "out_dir, or pass overwrite=True to delete its results"
                )
            self._delete_results()
            done, old = [], None
        todo = sorted(set(range(len(self.plan))) - set(done))
        estimate = self._estimate(todo, x0, n_outputs)
        whole = self._estimate(range(len(self.plan)), x0, n_outputs)
        free = shutil.disk_usage(self.out).free
        if estimate > free:
            raise OSError(
                errno.ENOSPC,
                f"out_dir: this run needs about {_human(estimate)} for {len(todo)} shard(s) but "
                f"{str(self.out)!r} has {_human(free)} free"
                + (
                    "; keep_values=True stores every attribution: leave it off"
                    if self.keep_values
                    else ""
                ),
            )
        self.manifest = {
            "format": manifests.FORMAT,
            "version": manifests.VERSION,
            **parts,
            "strategy": self.fixed_strategy,
            "digest": self.digest,
            "shards": {"size": self.batch_size, "count": len(self.plan)},
            "complete": shards.compress(done),
            "estimated_bytes": whole,
            "finished": bool(old and old.get("finished")) and not todo,
        }
        manifests.write(self.out, self.manifest)
        self.done = set(done)
        return {
            "todo": todo,
            "digest": self.digest,
            "strategy": self.fixed_strategy,
            "metrics": self.config["metrics"],
            "estimated_bytes": estimate,
        }

    def accept(self, prep: dict) -> None:
        """Take the leader's decisions (on the leader too, where they are already set)."""
        self.digest, self.fixed_strategy = prep["digest"], prep["strategy"]
        self._keep_metrics(prep["metrics"])

    def _keep_metrics(self, names: Mapping[str, Sequence[str]]) -> None:
        """Keep, of each method's metrics, those in ``names`` (the defaults, once the model's
        outputs are known)."""
        self.metrics = {
            method: [m for m in specs if m.name in names[method]]
            for method, specs in self.metrics.items()
        }
        self.config["metrics"] = {
            method: [m.name for m in specs] for method, specs in self.metrics.items()
        }

    def _changed_data(self, folder: Path, done: Sequence[int]) -> list[str]:
        """The sample ranges of the complete shards whose data differ from what they were made
        from: each is read again (no model call) and hashed."""
        changed = []
        for j, x, labels in self.source.batches([self.plan[i] for i in done]):
            record = shards.read_record(folder, done[j])
            if record["data"] != _data_digest(x, labels):
                r = self.plan[done[j]]
                changed.append(f"{r.start}-{r.stop - 1}")
        return changed

    # -- every rank ------------------------------------------------------------------------------
    def compute(self, mine: list[int], r: Ranks, *, progress: bool, size: int) -> int:
        """Compute this rank's shards; the number computed. The bar states ``size``, the bytes
        this launch expects to write, from the start."""
        folder = self.out / shards.SHARDS
        total = sum(len(self.plan[i]) for i in mine)
        with _bar(total, progress and r.leader, r, size) as bar:
            for j, x, labels in self.source.batches([self.plan[i] for i in mine]):
                self.write_shard(mine[j], x, labels, folder)
                bar.update(len(self.plan[mine[j]]))
                if r.leader:
                    self.done.add(mine[j])
                    self.manifest["complete"] = shards.compress(self.done)
                    manifests.write(self.out, self.manifest)
        return len(mine)

    def explain(
        self,
        i: int,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        *,
        only: str | None = None,
        rows: dict[int, list[int]] | None = None,
    ):
        """Shard ``i``'s good samples (their indices and labels), why the others were left out,
        and for each method its Attribution and columns.

        For pictures, ``only`` recomputes one method without metrics, and ``rows`` (sample ->
        class ids) restricts it to the classes wanted: the noise and path points are drawn for
        the whole batch whatever the classes, so the maps are those of the full run.
        """
        x = x.to(self.device)
        keep, problems = finite_inputs(x)
        try:
            return self._explain_kept(i, x, labels, keep, problems, only, rows)
        except ValueError:
            # A sample whose scores are NaN or inf stops the whole batch. Only now, one pass
            # finds such samples (more when the batch fails as a whole), and the rest goes on.
            # The leader's probe explained a sample of this data with this model (prepare): a
            # batch whose samples all fail is bad data, skipped like any bad sample, on every
            # rank and in every launch alike.
            screened, why = screen(
                self.model, x, output=self.output, whole_batch_may_fail=True, index=self.plan[i]
            )
            if torch.equal(screened, keep):
                raise  # not about samples: the error stands
            return self._explain_kept(i, x, labels, screened, why, only, rows)

    def _explain_kept(self, i, x, labels, keep, problems, only, rows):
        first = self.plan[i].start
        index = torch.tensor(list(self.plan[i]), dtype=torch.long)[keep]
        xs = x[keep.to(x.device)]
        ys = labels[keep].to(self.device) if labels is not None else None
        results = []
        if not xs.shape[0]:
            return index, ys, problems, results
        for spec in self.methods:
            if only is not None and spec.name != only:
                continue
            classes = ys[:, None] if self.classes == "label" else self.classes
            if rows is not None and not isinstance(classes, Contrast):
                classes = wanted(index, rows).to(self.device)
            a = method_specs.call(
                spec,
                self.model,
                xs,
                classes,
                output=self.output,
                max_memory=self.max_memory,
                strategy=self.fixed_strategy.get(spec.name),
                seed=shards.shard_seed(self.seed, first, spec.name),
            )
            if not bool(torch.isfinite(a.outputs.detach()).all()):
                # A method of the caller's may pass NaN scores on: screening names the samples.
                raise ValueError(
                    f"methods: {spec.name!r} returned outputs holding NaN or inf for samples "
                    f"{first}-{self.plan[i].stop - 1}"
                )
            out = a.outputs.detach()
            score = out.gather(1, a.classes.to(out.device))
            if a.contrasted:  # the row's score is the difference it explains
                neg = a.negatives.to(out.device)
                score = score - torch.where(neg >= 0, out.gather(1, neg.clamp(min=0)), 0)
            columns = {"score": score}
            batch = metric_specs.Batch(
                self.model,
                xs,
                ys,
                a,
                _seeded(spec, self, first),
                self.output,
                self.max_memory,
                lambda name: shards.shard_seed(self.seed, first, name),
            )
            for metric in self.metrics[spec.name] if only is None else []:
                try:
                    found = metric.compute(batch)
                except (ValueError, TypeError) as e:
                    raise type(e)(
                        f"metrics: {metric.name!r} on method {spec.name!r} (samples "
                        f"{first}-{self.plan[i].stop - 1}): {e}"
                    ) from e
                for name, value in found.items():
                    columns[f"{metric.name}.{name}"] = value
            results.append((spec.name, a, columns))
        return index, ys, problems, results

    def write_shard(self, i: int, x: torch.Tensor, labels: torch.Tensor | None, folder: Path):
        index, ys, problems, results = self.explain(i, x, labels)
        first = self.plan[i].start
        stem = shards.stem(i)
        tensors: dict[str, torch.Tensor] = {"index": index}
        if ys is not None:
            tensors["label"] = ys
        files: dict[str, dict] = {}
        lines: list[str] = []
        if results:
            out = results[0][1].outputs.detach()
            predicted = out.argmax(1)
            tensors["outputs"], tensors["predicted"] = out, predicted
            for name, a, columns in results:
                tensors[f"{name}/classes"] = a.classes
                for col, value in columns.items():
                    tensors[f"{name}/{col}"] = value
                tensors.update(cells(name, a, ys, predicted))
                if self.keep_values:
                    path = folder / f"{stem}.{name}.safetensors"
                    a.save(path)  # the same bytes every launch
                    files[path.name] = shards.hashed(path)
            lines = json_lines(index, ys, predicted, results)
        # clone: metric fields may share memory (one that is the labels); safetensors refuses that
        blob = save({k: v.detach().cpu().clone() for k, v in tensors.items()})
        files[f"{stem}.safetensors"] = shards.write_file(folder, f"{stem}.safetensors", blob)
        files[f"{stem}.jsonl"] = shards.write_file(folder, f"{stem}.jsonl", "".join(lines).encode())
        skipped = [{"index": first + j, "reason": why} for j, why in problems.items()]
        shards.write_record(
            folder,
            i,
            {
                "shard": i,
                "samples": [first, self.plan[i].stop],
                "config": self.digest,
                "data": _data_digest(x, labels),
                "files": files,
                "skipped": skipped,
            },
        )

    # -- the leader, after every rank ----------------------------------------------------------
    def finish(self, *, class_names, mean, std, report: bool) -> None:
        from .summary import write_summary

        folder = self.out / shards.SHARDS
        missing = [i for i in range(len(self.plan)) if not shards.complete(folder, i, self.digest)]
        if missing:
            raise RuntimeError(
                f"shards {shards.compress(missing)} are not complete after every rank finished; "
                "run again with the same arguments to compute them"
            )
        self.manifest["complete"] = shards.compress(range(len(self.plan)))
        if self.manifest.get("finished") and _present(self.out, report):
            manifests.write(self.out, self.manifest)
            return
        self.manifest["finished"] = False
        manifests.write(self.out, self.manifest)
        summary = write_summary(
            self.out,
            self.manifest,
            [m.name for m in self.methods],
            {m.name: m.better for ms in self.metrics.values() for m in ms},
        )
        if report:
            from .report import write_report  # matplotlib: imported only when drawing

            write_report(self.out, summary, self.fetch, class_names=class_names, mean=mean, std=std)
        self.manifest["finished"] = True
        manifests.write(self.out, self.manifest)

    def fetch(self, method: str, wanted: dict[int, list[int]]):
        """Pictures' material: the inputs of the samples in ``wanted`` (sample -> class ids), and
        for each sample found a dict class id -> map of one method (read back when kept, else
        recomputed as their shard was); also the samples found, in that order."""
        folder = self.out / shards.SHARDS
        by_shard: dict[int, list[int]] = {}
        for s in sorted(wanted):
            by_shard.setdefault(s // self.batch_size, []).append(s)
        order = sorted(by_shard)
        xs, maps, found = [], [], []
        for j, x, labels in self.source.batches([self.plan[i] for i in order]):
            i = order[j]
            if shards.read_record(folder, i)["data"] != _data_digest(x, labels):
                raise ValueError(
                    f"data: samples {self.plan[i].start}-{self.plan[i].stop - 1} changed while "
                    "the run was finishing (they are not those their shard was made from); run "
                    "again with the data as it was, or pass overwrite=True to start over"
                )
            kept = folder / f"{shards.stem(i)}.{method}.safetensors"
            if self.keep_values and kept.exists():
                index = load_file(folder / f"{shards.stem(i)}.safetensors")["index"]
                a = Attribution.load(kept)
            else:
                index, _, _, results = self.explain(i, x, labels, only=method, rows=wanted)
                a = results[0][1] if results else None
            position = {v: p for p, v in enumerate(index.tolist())}
            here = [s for s in by_shard[i] if s in position and a is not None]
            if here:
                xs.append(x[[s - self.plan[i].start for s in here]])
                for s in here:
                    ids, values = a.classes[position[s]].tolist(), a.values[position[s]]
                    maps.append(
                        {c: values[k].detach().cpu() for k, c in reversed(list(enumerate(ids)))}
                    )
                found += here
        if not xs:
            return torch.empty(0), [], []
        return torch.cat(xs), maps, found

    def read_summary(self) -> dict:
        return json.loads((self.out / "summary.json").read_text())

    # -- helpers -------------------------------------------------------------------------------
    def _lock(self) -> None:
        path = self.out / _LOCK
        # Held until the process exits, so that a second launch in this folder is refused
        # (the kernel releases it even after SIGKILL).
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.close()
            raise RuntimeError(
                f"out_dir: another run is using {str(self.out)!r} right now; wait for it to end"
            ) from e
        self.lock = handle

    def unlock(self) -> None:
        if self.lock is not None:
            self.lock.close()  # closing releases the lock
            self.lock = None

    def _delete_results(self) -> None:
        folder = self.out / shards.SHARDS
        for entry in folder.iterdir():
            if entry.is_file() and entry.name[:6].isdigit():
                entry.unlink()
        for name in ("summary.json", "summary.safetensors", "report.html", manifests.NAME):
            (self.out / name).unlink(missing_ok=True)

    def _choose_strategy(self) -> dict:
        """The engine strategy of each of this package's methods, fixed for the whole run.

        ``"auto"`` is decided here without timing anything, as ``"loop"`` (exact, the floor of
        reverse mode): a choice by timing differs from launch to launch, and so would the bytes
        of every shard (strategies agree only to rounding). Named strategies are kept.
        """
        chosen = {}
        for spec in self.methods:
            strategy = "loop" if self.strategy == "auto" else self.strategy
            chosen[spec.name] = strategy if spec.takes_strategy else None
        return chosen

    def _estimate(self, todo: Sequence[int], x0: torch.Tensor, n_outputs: int) -> int:
        """Bytes the remaining shards will take, generously (values dominate when kept)."""
        samples = sum(len(self.plan[i]) for i in todo)
        k, d = arguments.rows_per_sample(self.classes, n_outputs), x0[0].numel()
        rows = samples * k * len(self.methods)
        columns = 1 + 3 * max(len(m) for m in self.metrics.values())
        per_row = 60 + 25 * columns + 4 * columns  # JSON line and binary columns
        cells = samples * d * 8 * len(self.methods)  # at most one mean-map cell per sample
        values = rows * d * x0.element_size() if self.keep_values else 0
        return int(rows * per_row + samples * n_outputs * 4 + cells + values)


def _present(out: Path, report: bool) -> bool:
    names = ["summary.json", "summary.safetensors"] + (["report.html"] if report else [])
    return all((out / n).exists() for n in names)


def _seeded(spec: method_specs.MethodSpec, job: _Job, first: int) -> Callable[..., Attribution]:
    """The method as a metric calls it again (on perturbed inputs): the run's seed and strategy."""

    def method(model, x, classes=None, **options):
        options.setdefault("output", job.output)
        if spec.takes_seed:
            options.setdefault("seed", shards.shard_seed(job.seed, first, spec.name))
        if spec.takes_strategy and job.fixed_strategy.get(spec.name) is not None:
            options.setdefault("strategy", job.fixed_strategy[spec.name])
        return spec.func(model, x, classes, **options)

    return method


def _data_digest(x: torch.Tensor, labels: torch.Tensor | None) -> str:
    """The digest of a shard's inputs and labels as read, before any sample is left out."""
    return manifests.tensor_digest(x.detach().cpu(), None if labels is None else labels.cpu())


def _device(model: Callable) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return torch.device("cpu")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} TB"


@contextlib.contextmanager
def _bar(total: int, enabled: bool, r: Ranks, size: int) -> Iterator[object]:
    from tqdm.auto import tqdm

    desc = f"audit, ~{_human(size)} to write"
    if r.world > 1:
        desc += f" (rank 0 of {r.world})"
    bar = tqdm(total=total, disable=not enabled, unit="sample", file=sys.stderr, desc=desc)
    try:
        yield bar
    finally:
        bar.close()
