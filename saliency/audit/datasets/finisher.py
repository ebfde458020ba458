"""The finisher: once every rank is done, the leader merges the shards into the summary and draws
the report, recomputing the maps its pictures need exactly as their shards computed them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from saliency.attribution import Attribution

from . import manifest as manifests
from . import shards
from .folder import RunFolder
from .plan import Plan
from .worker import ShardWorker

__all__ = ["finish"]


def finish(
    plan: Plan,
    folder: RunFolder,
    worker: ShardWorker,
    *,
    class_names,
    mean,
    std,
    report: bool,
) -> None:
    """Write ``summary.json``, ``summary.safetensors`` and (``report``) ``report.html``.

    A finished run keeps them when each still has the SHA-256 its manifest recorded and the
    report was drawn with these ``class_names``, ``mean`` and ``std``; a damaged or edited file
    is written again, and a report drawn otherwise is drawn again.
    """
    from .summary import write_summary

    digest = worker.decisions.digest
    missing = [i for i in range(len(plan.shards)) if not shards.complete(folder.shards, i, digest)]
    if missing:
        raise RuntimeError(
            f"shards {shards.compress(missing)} are not complete after every rank finished; "
            "run again with the same arguments to compute them"
        )
    manifest = folder.manifest
    manifest["complete"] = shards.compress(range(len(plan.shards)))
    results = dict(manifest.get("results") or {})
    files = dict(results.get("files") or {})
    drawn = manifests.describe({"class_names": class_names, "mean": mean, "std": std})
    summary_whole = bool(manifest.get("finished")) and all(
        _whole(plan.out, name, files) for name in SUMMARY
    )
    report_whole = not report or (
        summary_whole and _whole(plan.out, REPORT, files) and results.get("report") == drawn
    )
    if summary_whole and report_whole:
        folder.write_manifest()
        return
    manifest["finished"] = False
    folder.write_manifest()
    if summary_whole:
        summary = json.loads((plan.out / "summary.json").read_text())
    else:
        summary = write_summary(
            plan.out,
            manifest,
            [m.name for m in plan.methods],
            {m.name: m.better for ms in plan.metrics.values() for m in ms},
        )
        files.update({name: shards.hashed(plan.out / name) for name in SUMMARY})
    if report:
        from .report import write_report  # matplotlib: imported only when drawing

        write_report(
            plan.out,
            summary,
            Pictures(plan, folder, worker),
            class_names=class_names,
            mean=mean,
            std=std,
            inputs=lambda samples: inputs_of(plan, samples),
        )
        files[REPORT] = shards.hashed(plan.out / REPORT)
        results["report"] = drawn
    manifest["results"] = {**results, "files": files}
    manifest["finished"] = True
    folder.write_manifest()


SUMMARY = ("summary.json", "summary.safetensors")
REPORT = "report.html"


def _whole(out: Path, name: str, files: dict) -> bool:
    """Whether ``out / name`` has the size and SHA-256 recorded in ``files``."""
    recorded = files.get(name)
    try:
        return recorded is not None and shards.hashed(out / name) == recorded
    except OSError:
        return False


def inputs_of(plan: Plan, samples: Sequence[int]) -> torch.Tensor:
    """The inputs of ``samples`` (sample ids), read again from the data, in that order (the
    report's mean inputs)."""
    by_shard: dict[int, list[int]] = {}
    for s in samples:
        by_shard.setdefault(s // plan.batch_size, []).append(s)
    order = sorted(by_shard)
    found: dict[int, torch.Tensor] = {}
    for j, read in plan.source.batches([plan.shards[i] for i in order]):
        start = plan.shards[order[j]].start
        for s in by_shard[order[j]]:
            found[s] = read.x[s - start]
    return torch.stack([found[s] for s in samples])


class Pictures:
    """The report's material: ``pictures(method, wanted)`` returns the inputs of the samples in
    ``wanted`` (sample -> class ids), for each sample found a dict class id -> map of one method
    (read back when kept, else recomputed as its shard was), and the samples found, in order."""

    def __init__(self, plan: Plan, folder: RunFolder, worker: ShardWorker) -> None:
        self.plan, self.folder, self.worker = plan, folder, worker

    def __call__(self, method: str, wanted: dict[int, list[int]]):
        plan, folder = self.plan, self.folder.shards
        by_shard: dict[int, list[int]] = {}
        for s in sorted(wanted):
            by_shard.setdefault(s // plan.batch_size, []).append(s)
        order = sorted(by_shard)
        xs, maps, found = [], [], []
        for j, samples in plan.source.batches([plan.shards[i] for i in order]):
            i = order[j]
            r = plan.shards[i]
            if shards.read_record(folder, i)["data"] != samples.digest():
                raise ValueError(
                    f"data: samples {r.start}-{r.stop - 1} changed while the run was finishing "
                    "(they are not those their shard was made from); run again with the data as "
                    "it was, or pass overwrite=True to start over"
                )
            kept = folder / f"{shards.stem(i)}.{method}.safetensors"
            if plan.keep_values and kept.exists():
                index = load_file(folder / f"{shards.stem(i)}.safetensors")["index"]
                a = Attribution.load(kept)
            else:
                done = self.worker.explain(i, samples, only=method, rows=wanted)
                index = done.index
                a = done.results[0].attribution if done.results else None
            position = {v: p for p, v in enumerate(index.tolist())}
            here = [s for s in by_shard[i] if s in position and a is not None]
            if here:
                xs.append(samples.x[[s - r.start for s in here]])
                for s in here:
                    ids, values = a.classes[position[s]].tolist(), a.values[position[s]]
                    maps.append(
                        {c: values[k].detach().cpu() for k, c in reversed(list(enumerate(ids)))}
                    )
                found += here
        if not xs:
            return torch.empty(0), [], []
        return torch.cat(xs), maps, found
