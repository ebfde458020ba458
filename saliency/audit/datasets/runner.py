"""``saliency.audit.run``: explain and measure a whole data set, in shards that survive any crash.

The door of a run, which passes typed records between the parts that do the work: the arguments
become a :class:`~.plan.Plan`; the leader (rank 0, or the only process) probes the model on the
first samples and opens the folder (:class:`~.folder.RunFolder`: lock, manifest, resume), and
sends every rank its :class:`~.plan.Decisions`; every rank's :class:`~.worker.ShardWorker`
computes its share of the shards, each one's files written atomically with a completion record
last; once all ranks are done, the leader's finisher merges the shards into the summary and the
report.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saliency.targets import Classes

from . import arguments
from . import manifest as manifests
from . import plan as plans
from .distributed import Ranks, ranks
from .finisher import finish
from .folder import RunFolder, human
from .worker import ShardWorker

__all__ = ["AuditRun", "run"]

DEFAULT_METRICS = arguments.DEFAULT_METRICS


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
    plan = plans.make(
        model,
        data,
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
    folder = RunFolder(plan.out)
    with ranks(plan.device) as r, contextlib.ExitStack() as stack:
        stack.callback(folder.release)

        def prepare() -> plans.Decisions:
            seen = plans.probe(plan)
            return folder.open(plans.narrowed(plan, seen), seen, overwrite=overwrite)

        decisions = _shared(r, prepare)
        plan = plan.keep_metrics(decisions.metrics)
        worker = ShardWorker(plan, decisions)
        mine = decisions.todo[r.rank :: r.world]
        ok = False
        try:
            _compute(plan, worker, folder, mine, r, progress=progress)
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
            lambda: finish(
                plan, folder, worker, class_names=class_names, mean=mean, std=std, report=report
            ),
        )
    summary = json.loads((plan.out / "summary.json").read_text())
    return AuditRun(
        out_dir=plan.out,
        manifest=plan.out / manifests.NAME,
        summary=summary,
        report=plan.out / "report.html" if report else None,
        shards=len(plan.shards),
        computed=len(mine),
        resumed=len(plan.shards) - len(decisions.todo),
        skipped={int(s["index"]): s["reason"] for s in summary.get("skipped", [])},
        estimated_bytes=decisions.estimated_bytes,
    )


def _compute(
    plan: plans.Plan,
    worker: ShardWorker,
    folder: RunFolder,
    mine: list[int],
    r: Ranks,
    *,
    progress: bool,
) -> None:
    """Compute this rank's shards; the leader records each in the manifest as it completes."""
    total = sum(len(plan.shards[i]) for i in mine)
    with _bar(total, progress and r.leader, r, worker.decisions.estimated_bytes) as bar:
        for j, samples in plan.source.batches([plan.shards[i] for i in mine]):
            worker.write(mine[j], samples)
            bar.update(len(plan.shards[mine[j]]))
            if r.leader:
                folder.completed(mine[j])


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


@contextlib.contextmanager
def _bar(total: int, enabled: bool, r: Ranks, size: int) -> Iterator[object]:
    """A progress bar on stderr stating, from the start, the bytes this launch expects to write."""
    from tqdm.auto import tqdm

    desc = f"audit, ~{human(size)} to write"
    if r.world > 1:
        desc += f" (rank 0 of {r.world})"
    bar = tqdm(total=total, disable=not enabled, unit="sample", file=sys.stderr, desc=desc)
    try:
        yield bar
    finally:
        bar.close()
