"""A run's folder: the lock, the manifest, what is resumed and what is started afresh.

The leader opens the folder before any rank starts: it takes the lock (one launch per folder),
removes the temporary files of a killed write, compares the manifest of an earlier launch with
this one, finds the complete shards and checks their data, checks the free space, and writes the
manifest. While shards complete it keeps the manifest's list of them current.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from . import manifest as manifests
from . import shards
from .arguments import rows_per_sample
from .plan import Decisions, Plan, Probe, choose_strategy, identity

__all__ = ["RunFolder"]

LOCK = ".lock"
RESULTS = ("summary.json", "summary.safetensors", "report.html")


class RunFolder:
    """The folder of a run, as its leader holds it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.manifest: dict = {}
        self.done: set[int] = set()
        self._lock = None

    @property
    def shards(self) -> Path:
        return self.out / shards.SHARDS

    # -- opening ---------------------------------------------------------------------------
    def open(self, plan: Plan, seen: Probe, *, overwrite: bool) -> Decisions:
        """Check the folder against this launch and write the manifest; what every rank needs.

        Nothing is written before the arguments, the model and the data passed their checks
        (the caller has probed them), and nothing of an earlier run is deleted unless it cannot
        be resumed and ``overwrite`` says so.
        """
        parts = identity(plan, seen)
        self._enter(overwrite=overwrite)
        old = self._previous(parts, seen, overwrite=overwrite)
        strategy = old["strategy"] if old else choose_strategy(plan)
        digest = manifests.digest({**parts, "strategy": strategy})
        done = self._complete(plan, digest, overwrite=overwrite)
        if done is None:  # their data changed, and overwrite=True: start afresh
            done, old = [], None
        todo = sorted(set(range(len(plan.shards))) - set(done))
        estimate = _estimate(plan, todo, seen)
        self._check_space(estimate, len(todo), plan.keep_values)
        # What the model answered on the first samples: compared within rounding, never part
        # of the digest, and kept as first recorded so that a resumed run writes the same bytes.
        recorded = (old or {}).get("model", {}).get("outputs") or _outputs(seen)
        self.manifest = {
            "format": manifests.FORMAT,
            "version": manifests.VERSION,
            **parts,
            "model": {**parts["model"], "outputs": recorded},
            "strategy": strategy,
            "digest": digest,
            "shards": {"size": plan.batch_size, "count": len(plan.shards)},
            "complete": shards.compress(done),
            "estimated_bytes": _estimate(plan, range(len(plan.shards)), seen),
            "finished": bool(old and old.get("finished")) and not todo,
        }
        if old and old.get("results"):  # the hashes of the summary and report, checked at the end
            self.manifest["results"] = old["results"]
        manifests.write(self.out, self.manifest)
        self.done = set(done)
        return Decisions(
            todo=todo,
            digest=digest,
            strategy=strategy,
            metrics=plan.config["metrics"],
            n_outputs=seen.n_outputs,
            shape=list(seen.samples.x.shape[1:]),
            estimated_bytes=estimate,
        )

    def _enter(self, *, overwrite: bool) -> None:
        """Create the folder, take its lock, check what it holds, remove killed writes."""
        had_lock = (self.out / LOCK).exists()
        with _writable(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock()
        try:
            self._check_contents(overwrite=overwrite)
        except Exception:
            self.release()
            if not had_lock:
                (self.out / LOCK).unlink(missing_ok=True)  # leave the folder as it was found
            raise
        with _writable(self.out):
            self.shards.mkdir(exist_ok=True)
        shards.clean_temporary(self.shards)
        shards.clean_temporary(self.out)

    def _previous(self, parts: dict, seen: Probe, *, overwrite: bool) -> dict | None:
        """The manifest of the run to resume, or None to start afresh: refused when it was made
        differently and has complete shards to lose, unless ``overwrite``."""
        try:
            old = manifests.read(self.out)
        except manifests.Unreadable:
            if not overwrite:
                raise
            self.delete_results()
            return None
        if old is None:
            return None
        then = {k: old.get(k) for k in parts}
        then["model"] = {k: v for k, v in (then["model"] or {}).items() if k != "outputs"}
        changed = manifests.differences(then, parts)
        if not any(line.startswith("data.") for line in changed):  # else other samples' outputs
            changed += _other_outputs(old, seen)
        if not changed:
            return old
        # A run that completed no shard has nothing to lose (a launch refused by a check of its
        # first shard, say): another configuration simply starts afresh.
        if not overwrite and any(self.shards.glob("*.done.json")):
            raise ValueError(
                f"out_dir: {str(self.out)!r} holds a run made differently, so it cannot be "
                f"resumed: {'; '.join(changed)}. Run again as before, choose another out_dir, "
                "or pass overwrite=True to delete its results"
            )
        self.delete_results()
        return None

    def _complete(self, plan: Plan, digest: str, *, overwrite: bool) -> list[int] | None:
        """The complete shards of this configuration, their data read again and compared; None
        when the data changed and ``overwrite`` deleted the results."""
        done = [i for i in range(len(plan.shards)) if shards.complete(self.shards, i, digest)]
        changed = self._changed_data(plan, done)
        if not changed:
            return done
        if not overwrite:
            raise ValueError(
                f"data: samples {', '.join(changed)} are not those their complete shards in "
                f"{str(self.out)!r} were made from (other inputs or labels), so the run cannot be "
                "resumed. Run again with the data as before, choose another out_dir, or pass "
                "overwrite=True to delete its results"
            )
        self.delete_results()
        return None

    def _check_space(self, estimate: int, count: int, keep_values: bool) -> None:
        free = shutil.disk_usage(self.out).free
        if estimate > free:
            hint = "; keep_values=True stores every attribution: leave it off"
            raise OSError(
                errno.ENOSPC,
                f"out_dir: this run needs about {human(estimate)} for {count} shard(s) but "
                f"{str(self.out)!r} has {human(free)} free" + (hint if keep_values else ""),
            )

    def _check_contents(self, *, overwrite: bool) -> None:
        """A run writes only into an empty folder or its own run. A folder holding other files
        (the user's own ``summary.json``, shards whose manifest is gone) is refused, unless
        ``overwrite``: then the files a run writes are deleted, and nothing else."""
        if (self.out / manifests.NAME).exists():
            return  # a run's (read and checked by the caller)
        produced = [n for n in RESULTS if (self.out / n).exists()]
        found = (
            sorted(e.name for e in self.shards.iterdir() if e.is_file() and e.name[:6].isdigit())
            if self.shards.is_dir()
            else []
        )
        others = sorted(
            e.name
            for e in self.out.iterdir()
            if not e.name.startswith(".") and e.name not in (*RESULTS, shards.SHARDS)
        )
        if not (produced or found or others):
            return
        if overwrite:
            self.delete_results()
            return
        if found:
            what = (
                f"shard files ({_few(found)}) but no {manifests.NAME}, so what made them cannot "
                "be checked (was the manifest deleted?)"
            )
        else:
            what = (
                f"files of its own ({_few(produced + others)}) and no run of "
                "saliency.audit.run; a run writes only into an empty folder or its own run"
            )
        raise FileExistsError(
            f"out_dir: {str(self.out)!r} holds {what}. Choose another out_dir, or pass "
            "overwrite=True to delete the files a run writes there (summary.json, "
            "summary.safetensors, report.html, shards) and start over"
        )

    def _changed_data(self, plan: Plan, done: Sequence[int]) -> list[str]:
        """The sample ranges of the complete shards whose data differ from what they were made
        from: each is read again (no model call) and hashed."""
        changed = []
        for j, samples in plan.source.batches([plan.shards[i] for i in done]):
            record = shards.read_record(self.shards, done[j])
            if record["data"] != samples.digest():
                r = plan.shards[done[j]]
                changed.append(f"{r.start}-{r.stop - 1}")
        return changed

    # -- while shards complete ---------------------------------------------------------------
    def completed(self, shard: int) -> None:
        """Record ``shard`` as complete in the manifest (the leader's own shards)."""
        self.done.add(shard)
        self.manifest["complete"] = shards.compress(self.done)
        manifests.write(self.out, self.manifest)

    def write_manifest(self) -> None:
        manifests.write(self.out, self.manifest)

    # -- the lock ------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder's lock, held until :meth:`release` or the process's end (the kernel
        releases it even after SIGKILL), so that a second launch in this folder is refused."""
        path = self.out / LOCK
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.close()
            raise RuntimeError(
                f"out_dir: another run is using {str(self.out)!r} right now; wait for it to end"
            ) from e
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None

    # -- deleting ------------------------------------------------------------------------------
    def delete_results(self) -> None:
        """Delete what a run writes (and nothing else): shards, summary, report, manifest."""
        for entry in self.shards.iterdir() if self.shards.is_dir() else []:
            if entry.is_file() and entry.name[:6].isdigit():
                entry.unlink()
        for name in (*RESULTS, manifests.NAME):
            (self.out / name).unlink(missing_ok=True)


# Outputs recorded to tell a model that behaves otherwise: a few samples' worth, and a tolerance
# for what only rounding changes (another number of threads, another launch on a GPU).
_OUTPUT_VALUES = 2048
_RTOL, _ATOL = 1e-4, 1e-5  # relative to each score, and to the largest one


def _outputs(seen: Probe) -> dict:
    scores = seen.scores.double()
    rows = max(1, min(len(scores), _OUTPUT_VALUES // max(1, scores.shape[1])))
    return {
        "samples": seen.kept_index[:rows],
        "values": scores[:rows, :_OUTPUT_VALUES].tolist(),
    }


def _other_outputs(old: dict, seen: Probe) -> list[str]:
    """A line naming how the model's outputs on the first samples differ from those recorded,
    if they do beyond rounding (a plain attribute changed, another wrapper); none else."""
    recorded = (old.get("model") or {}).get("outputs")
    if not isinstance(recorded, dict) or "values" not in recorded:
        return []  # a run made before outputs were recorded: nothing to compare
    then = torch.tensor(recorded["values"], dtype=torch.float64)
    rows, columns = then.shape if then.ndim == 2 else (0, 0)
    now = seen.scores.double()
    if recorded.get("samples") != seen.kept_index[:rows] or now.shape[1] < columns:
        return [
            f"model.outputs: scores of samples {recorded.get('samples')} then, of samples "
            f"{seen.kept_index[:rows]} now (the model's outputs or which samples it can explain "
            "changed)"
        ]
    now = now[:rows, :columns]
    gap = (now - then).abs()
    scale = float(then.abs().max()) if then.numel() else 0.0
    if bool((gap <= _RTOL * then.abs() + _ATOL * scale + 1e-30).all()):
        return []
    b, c = divmod(int(gap.argmax()), columns)
    return [
        f"model.outputs: on sample {seen.kept_index[b]}, class {c} scored {float(then[b, c]):.6g} "
        f"then, {float(now[b, c]):.6g} now (the model behaves otherwise, whatever changed: an "
        "attribute, a wrapper, a preprocessing step)"
    ]


@contextlib.contextmanager
def _writable(out: Path) -> Iterator[None]:
    """Turn a folder that cannot be written into an error that says so."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        why = "a read-only file system" if e.errno == errno.EROFS else "permission denied"
        raise PermissionError(
            f"out_dir: {str(out)!r} cannot be written ({why}: {e.filename}); a run writes its "
            "lock, manifest and results there, even to reopen a finished run. Choose a "
            "writable out_dir (to read a finished run, open its summary.json and report.html, "
            "or copy the folder somewhere writable)"
        ) from e


def _few(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _estimate(plan: Plan, todo: Sequence[int], seen: Probe) -> int:
    """Bytes the shards ``todo`` will take, generously (values dominate when kept)."""
    x = seen.samples.x
    samples = sum(len(plan.shards[i]) for i in todo)
    k, d = rows_per_sample(plan.classes, seen.n_outputs), x[0].numel()
    rows = samples * k * len(plan.methods)
    columns = 1 + 3 * max(len(m) for m in plan.metrics.values())
    per_row = 60 + 25 * columns + 4 * columns  # JSON line and binary columns
    cells = samples * d * 8 * len(plan.methods)  # at most one mean-map cell per sample
    values = rows * d * x.element_size() if plan.keep_values else 0
    return int(rows * per_row + samples * seen.n_outputs * 4 + cells + values)


def human(n: float) -> str:
    """A byte count for people: ``"1.5 GB"``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} TB"
