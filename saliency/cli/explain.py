"""``saliency explain``: overlays for image or tensor inputs, batch by batch, resumable."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import viz
from .._atomic import atomic_write
from ..engine import outputs
from ..io import InputError, LoadedModel, Sample, find_inputs, iter_inputs, load_model
from ..targets import top_k
from ..viz.labels import file_stem
from .console import Interrupted, progress, report
from .options import (
    build_method,
    check_classes,
    check_free,
    check_out,
    method_settings,
    parse_classes,
    read_class_names,
    read_memory,
    refuse_text_model,
)

_DEFAULT_CLASSES = object()  # the 3 highest-scoring classes, or all when there are at most 3


def explain(args: argparse.Namespace) -> int:
    """Explain inputs with a model; see ``saliency explain --help``."""
    out = Path(args.out)
    refuse_text_model(args.model, "explain")
    loaded = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle)
    names = read_class_names(args.class_names, loaded)
    classes = parse_classes(args.classes) if args.classes is not None else _DEFAULT_CLASSES
    method = build_method(args.method, args, seed=args.seed)
    max_memory = read_memory(args.max_memory)
    mean = args.mean if args.mean is not None else loaded.mean
    std = args.std if args.std is not None else loaded.std
    check_out(out)
    size = tuple(args.size) if args.size else None
    if size and loaded.input_shape and len(loaded.input_shape) == 3:
        if size != tuple(loaded.input_shape[1:]):
            raise ValueError(
                f"--size {size[0]} {size[1]}: {loaded.source} takes inputs of shape "
                f"{tuple(loaded.input_shape)}; leave --size out to use its own"
            )
    folder = _Outputs(out, _settings(args, loaded, names, mean, std), overwrite=args.overwrite)
    paths, errors = find_inputs(args.inputs, recursive=args.recursive)
    stream = iter_inputs(
        paths,
        size=size,
        channels=args.channels,
        mean=mean,
        std=std,
        shape=loaded.input_shape,
        key=args.key,
    )
    bar = progress(len(paths), args.progress)
    index, written, reused = 0, [], 0
    try:
        for batch in _batches(stream, args.batch_size, errors):
            x = torch.stack([s.tensor for s in batch])
            with _model_errors(loaded, x, batch):
                batch, x = _screened(loaded, x, batch, args.output, errors, index > 0)
                if batch and (classes is _DEFAULT_CLASSES or index == 0):  # settled once
                    n_out = outputs(loaded.model, x[:1], output=args.output).shape[1]
                    if classes is _DEFAULT_CLASSES:
                        classes = top_k(3) if n_out > 3 else None
                    check_classes(classes, args.classes, n_out)
            if not batch:
                continue
            if folder.complete(index, [s.name for s in batch]):
                reused += len(batch)
            else:
                with _model_errors(loaded, x, batch):
                    attr = method(
                        loaded.model, x, classes, output=args.output, max_memory=max_memory
                    )
                written += _write_batch(
                    attr, batch, x, index, loaded, names, args, mean, std, folder
                )
            index += len(batch)
            bar.update(len(batch))
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; the outputs of {index} input(s) are saved in {out}/: run the same "
            "command again to resume"
        ) from None
    finally:
        bar.close()
    again = f" ({reused} already done, kept)" if reused else ""
    print(
        f"Explained {index} input(s) with {args.method}{again}; wrote {len(written)} file(s) "
        f"to {out}/"
    )
    if errors:
        print(f"{len(errors)} input(s) failed and were skipped:", file=sys.stderr)
        for err in errors:
            print(f"  {err.path}: {err.message}", file=sys.stderr)
        return 1
    return 0


def _batches(stream, size: int, errors: list[InputError]) -> Iterator[list[Sample]]:
    """Lists of up to ``size`` samples of one shape; inputs that failed go to ``errors``."""
    batch: list[Sample] = []
    first_shape = None
    for item in stream:
        if not isinstance(item, InputError):
            # One batch needs one shape: the first input sets it, the others must match.
            first_shape = first_shape or tuple(item.tensor.shape)
            if tuple(item.tensor.shape) != first_shape:
                item = InputError(
                    item.path,
                    f"has shape {tuple(item.tensor.shape)} after loading, unlike the first "
                    f"input's {first_shape}; pass --size H W and --channels N to make them agree",
                )
        if isinstance(item, InputError):
            errors.append(item)
            report(item)
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _screened(loaded, x, batch, output, errors, whole_batch_may_fail):
    """The batch without the inputs that cannot be explained (each named, by file and row)."""
    from ..audit.datasets.screen import screen

    keep, problems = screen(
        loaded.model, x, output=output, whole_batch_may_fail=whole_batch_may_fail
    )
    for j, why in problems.items():
        err = InputError(Path(batch[j].name), why)
        errors.append(err)
        report(err)
    return [s for s, k in zip(batch, keep.tolist(), strict=True) if k], x[keep.to(x.device)]


@contextlib.contextmanager
def _model_errors(loaded: LoadedModel, x: torch.Tensor, batch: list[Sample]) -> Iterator[None]:
    """Report a model that refuses its inputs as a usage error, not a traceback."""
    try:
        yield
    except RuntimeError as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"MODEL: {loaded.source} failed on inputs of shape {tuple(x.shape[1:])} "
            f"(e.g. {batch[0].name}): {last}. Check --size, --channels, --mean and --std."
        ) from error


class _Outputs:
    """The output folder of ``explain``: which batches are complete, made with these settings.

    ``explain.json`` records the settings; each batch's ``inputs_NNNNNN.json``, written after its
    pictures, lists its inputs and files and marks it complete. A run with the same settings
    skips complete batches and may replace what an interrupted one left; other settings are
    refused (naming what differs) unless ``--overwrite``.
    """

    NAME = "explain.json"

    def __init__(self, out: Path, settings: dict, *, overwrite: bool) -> None:
        from ..audit.datasets.manifest import differences, digest

        self.out, self.settings, self.overwrite = out, settings, overwrite
        self.digest = digest(settings)
        self.resuming = False
        try:
            before = json.loads((out / self.NAME).read_text())
        except (OSError, ValueError):
            return
        if before.get("digest") == self.digest:
            self.resuming = True
        elif not overwrite:
            changed = "; ".join(differences(before.get("settings", {}), settings))
            raise ValueError(
                f"--out {out}: holds outputs made with other settings ({changed}); run it as "
                "before to resume, use --overwrite to replace them, or choose another --out"
            )

    @property
    def may_replace(self) -> bool:
        return self.resuming or self.overwrite

    def begin(self) -> None:
        """Record the settings, before the first file of a batch is written."""
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.out / self.NAME, "w") as f:
            json.dump({"digest": self.digest, "settings": self.settings}, f, indent=1)
        self.resuming = True

    def complete(self, start: int, names: list[str]) -> bool:
        """Whether the batch starting at ``start`` was written whole, for these inputs."""
        if not self.resuming or self.overwrite:
            return False
        try:
            record = json.loads((self.out / f"inputs_{start:06d}.json").read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(record, dict)
            and record.get("settings") == self.digest
            and [r.get("input") for r in record.get("inputs", [])] == names
            and all((self.out / f).exists() for f in record.get("files", []))
        )


def _settings(args, loaded: LoadedModel, names, mean, std) -> dict:
    """What decides explain's outputs, by option (a changed one is named when refused)."""
    from ..audit.datasets.manifest import fingerprint

    return {
        "MODEL": args.model,
        "model fingerprint": fingerprint(loaded.model),
        "--weights": args.weights,
        "--method": args.method,
        **method_settings(args.method, args),
        "--classes": args.classes,
        "--output": args.output,
        "--size": args.size,
        "--channels": args.channels,
        "--mean": None if mean is None else list(mean),
        "--std": None if std is None else list(std),
        "--key": args.key,
        "--class-names": names,
        "--top": args.top,
        "--batch-size": args.batch_size,
        "--save-values": args.save_values,
    }


def _write_batch(attr, batch: list[Sample], x, start, loaded, names, args, mean, std, folder):
    """Overlays (or feature charts), the optional raw values, then the batch's JSON index."""
    out = Path(args.out)
    index_file = out / f"inputs_{start:06d}.json"
    planned = [index_file]
    if args.save_values:
        planned.append(out / f"values_{start:06d}.safetensors")
    images = x.ndim == 4  # images, or image-shaped tensors drawn under their own (undone) values
    if images:
        planned += [
            out / f"{file_stem(start + b, c, names)}.png"
            for b in range(len(batch))
            for c in attr.classes[b].tolist()
        ]
    else:
        planned += [out / f"{start + b}_features.png" for b in range(len(batch))]
    check_free(planned, folder.may_replace)
    folder.begin()
    written: list[Path] = []
    if images:
        written += viz.save_overlays(
            attr,
            viz.enlarge(_pictures(batch, x, mean, std)),
            out,
            class_names=names,
            start=start,
            overwrite=True,  # checked above, with the command's words
            sign="all",
            value_range=(0.0, 1.0),
        )
    else:
        feature_names = loaded.feature_names or [str(i) for i in range(x[0].numel())]
        for b in range(len(batch)):
            path = out / f"{start + b}_features.png"
            fig = viz.plot_features(attr, feature_names, top=args.top, sample=b, class_names=names)
            with atomic_write(path) as f:
                fig.savefig(f, format="png", dpi=100)
            written.append(path)
    if args.save_values:
        attr.save(planned[1])
        written.append(planned[1])
    record = {
        "settings": folder.digest,
        "inputs": [
            {
                "index": start + b,
                "input": s.name,
                "classes": [names[c] if names else c for c in attr.classes[b].tolist()],
                "scores": [float(attr.outputs[b, c]) for c in attr.classes[b].tolist()],
            }
            for b, s in enumerate(batch)
        ],
        "files": [p.name for p in written],
    }
    with atomic_write(index_file, "w") as f:
        json.dump(record, f, indent=1)
    return [*written, index_file]


def _pictures(batch: list[Sample], x: torch.Tensor, mean, std) -> torch.Tensor:
    """The pictures to draw overlays on, in [0, 1] at the model's input size."""
    if all(s.image is not None for s in batch):
        return _resize_like(
            [torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in batch], x
        )
    return viz.input_pictures(x, mean=mean, std=std)


def _resize_like(images: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-2:]
    return torch.stack(
        [
            torch.nn.functional.interpolate(i[None], size=tuple(size), mode="bilinear")[0]
            for i in images
        ]
    ).clamp(0, 1)
