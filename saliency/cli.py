"""The ``saliency`` command: ``demo`` and ``explain`` (the only module that prints).

Examples
--------
  saliency demo --out saliency-out
  saliency explain digits digit.png --method ig --classes top3 --out maps/
  saliency explain model.pt2 photos/ --method smoothgrad --classes all --size 224 224 \\
      --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --class-names classes.txt --out maps/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from . import models, viz
from ._atomic import atomic_write
from .attribution import Attribution
from .io import InputError, LoadedModel, Sample, find_inputs, iter_inputs, load_model
from .methods import gradients, integrated_gradients, smoothgrad
from .targets import Classes, top_k

METHODS = {"gradients": gradients, "smoothgrad": smoothgrad, "ig": integrated_gradients}
# Small inputs such as 8x8 digits are enlarged (nearest neighbour) before overlays are drawn.
_MIN_PICTURE = 96
_DEFAULT_CLASSES = object()  # the 3 highest-scoring classes, or all when there are at most 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some inputs failed, 2 usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except FileExistsError as error:
        print(f"saliency {args.command}: error: {error} (use --overwrite)", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, MemoryError) as error:
        print(f"saliency {args.command}: error: {error}", file=sys.stderr)
        return 2


# -- demo -----------------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    """All-class gradients, SmoothGrad and IG for held-out digits; overlays, a summary, the gap."""
    start = time.perf_counter()
    out = Path(args.out)
    _check_out(out)
    if args.samples < 1:
        raise ValueError(f"--samples: expected a positive number of digits, got {args.samples}")
    out.mkdir(parents=True, exist_ok=True)
    model, info = models.load("digits")
    x, labels = models.held_out("digits", n=args.samples)
    # Pixel 0 (black) in the model's normalised space: the natural IG baseline for digits.
    black = (0.0 - info.mean[0]) / info.std[0]
    runs = {
        "gradients": lambda: gradients(model, x),
        "smoothgrad": lambda: smoothgrad(model, x, n_samples=50, noise=0.15, seed=0),
        "ig": lambda: integrated_gradients(model, x, baseline=black, steps=50),
    }
    images = _enlarge(x * info.std[0] + info.mean[0])
    results: dict[str, Attribution] = {}
    files: list[Path] = []
    for name, run in runs.items():
        results[name] = attr = run()
        files += viz.save_overlays(
            attr,
            images,
            out / name,
            class_names=info.class_names,
            overwrite=args.overwrite,
            sign="all",
            value_range=(0.0, 1.0),
        )
    summary = out / "summary.png"
    _check_free([summary], args.overwrite)
    _save_image(_summary(results, images, info.class_names), summary)
    elapsed = time.perf_counter() - start

    correct = int((results["ig"].outputs.argmax(1) == labels).sum())
    print(f"Explained {len(x)} held-out digits ({correct} classified correctly) for all 10 classes")
    print("with vanilla gradients, SmoothGrad (50 samples) and Integrated Gradients (50 steps).")
    with torch.no_grad():
        change = model(x) - model(torch.full_like(x, black))
    print("\nIntegrated Gradients completeness gap per class, |sum(attr) - (F(x) - F(baseline))|:")
    _print_gap(results["ig"], change, info.class_names)
    print(f"\nWrote {len(files)} overlays under {out}/{{gradients,smoothgrad,ig}}/")
    print(f"Summary grid (samples x classes, per method): {summary}")
    print(f"Done in {elapsed:.1f} s.")
    return 0


def _summary(results: dict[str, Attribution], images: torch.Tensor, names) -> object:
    tiles, labels = [], []
    for b in range(min(4, images.shape[0])):
        for method, attr in results.items():
            for k, class_id in enumerate(attr.classes[b].tolist()):
                score = float(attr.outputs[b, class_id])
                tiles.append(viz.overlay(images[b], attr.values[b, k], sign="all"))
                labels.append(f"{method} {names[class_id]}: {score:.1f}")
    return viz.grid(tiles, rows=len(tiles) // results["ig"].values.shape[1], labels=labels)


def _print_gap(attr: Attribution, change: torch.Tensor, names) -> None:
    gap = attr.delta.abs()  # [B, K]; classes are all C in order
    relative = gap / change.abs().clamp_min(1e-12)
    for k in range(attr.values.shape[1]):
        print(
            f"  class {names[k]}: max {gap[:, k].max():.2e}, "
            f"max relative to |F(x) - F(baseline)| {relative[:, k].max():.2%}"
        )


# -- explain --------------------------------------------------------------------------------------


def explain(args: argparse.Namespace) -> int:
    """Explain inputs with a model; see ``saliency explain --help``."""
    out = Path(args.out)
    loaded = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle)
    names = _class_names(args.class_names, loaded)
    classes = parse_classes(args.classes) if args.classes is not None else _DEFAULT_CLASSES
    method = _method(args)
    mean = args.mean if args.mean is not None else loaded.mean
    std = args.std if args.std is not None else loaded.std
    _check_out(out)
    size = tuple(args.size) if args.size else None
    if size and loaded.input_shape and len(loaded.input_shape) == 3:
        if size != tuple(loaded.input_shape[1:]):
            raise ValueError(
                f"--size {size[0]} {size[1]}: {loaded.source} takes inputs of shape "
                f"{tuple(loaded.input_shape)}; leave --size out to use its own"
            )
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
    bar = _progress(len(paths), args.progress)
    index, written = 0, []
    for batch in _batches(stream, args.batch_size, errors):
        x = torch.stack([s.tensor for s in batch])
        with _model_errors(loaded, x, batch):
            if classes is _DEFAULT_CLASSES:  # settled once, on the first batch
                with torch.no_grad():
                    n_out = loaded.model(x[:1]).reshape(1, -1).shape[1]
                classes = top_k(3) if n_out > 3 else None
            attr = method(loaded.model, x, classes, output=args.output, max_memory=args.max_memory)
        written += _write_batch(attr, batch, x, index, loaded, names, args, mean, std)
        index += len(batch)
        bar.update(len(batch))
    bar.close()
    print(f"Explained {index} input(s) with {args.method}; wrote {len(written)} file(s) to {out}/")
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
            _report(item)
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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


def _write_batch(attr, batch: list[Sample], x, start, loaded, names, args, mean, std):
    """Overlays (or feature charts), the batch's JSON index and optionally the raw values."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index_file = out / f"inputs_{start:06d}.json"
    planned = [index_file]
    if args.save_values:
        planned.append(out / f"values_{start:06d}.safetensors")
    _check_free(planned, args.overwrite)
    if x.ndim == 4:  # images, or image-shaped tensors drawn under their own (undone) values
        written += viz.save_overlays(
            attr,
            _enlarge(_pictures(batch, x, mean, std)),
            out,
            class_names=names,
            start=start,
            overwrite=args.overwrite,
            sign="all",
            value_range=(0.0, 1.0),
        )
    else:
        for b in range(len(batch)):
            path = out / f"{start + b}_features.png"
            _check_free([path], args.overwrite)
            feature_names = loaded.feature_names or [str(i) for i in range(x[0].numel())]
            fig = viz.plot_features(attr, feature_names, top=args.top, sample=b, class_names=names)
            with atomic_write(path) as f:
                fig.savefig(f, format="png", dpi=100)
            written.append(path)
    if args.save_values:
        attr.save(planned[1])
        written.append(planned[1])
    record = [
        {
            "index": start + b,
            "input": s.name,
            "classes": [names[c] if names else c for c in attr.classes[b].tolist()],
            "scores": [float(attr.outputs[b, c]) for c in attr.classes[b].tolist()],
        }
        for b, s in enumerate(batch)
    ]
    with atomic_write(index_file, "w") as f:
        json.dump(record, f, indent=1)
    return [*written, index_file]


def parse_classes(text: str) -> Classes:
    """``all`` -> every class, ``top3`` -> the 3 highest, ``4`` or ``1,5,7`` -> those ids.

    Examples
    --------
    >>> parse_classes("all") is None, parse_classes("top2"), parse_classes("1,5")
    (True, TopK(k=2), [1, 5])
    """
    text = text.strip().lower()
    if text == "all":
        return None
    if text.startswith("top") and text[3:].isdigit():
        return top_k(int(text[3:]))
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if len(set(ids)) != len(ids):
        raise ValueError(f"--classes: each class once, got {text!r}")
    if not ids:
        raise ValueError(
            f"--classes: expected 'all', 'topN' or class ids like '3' or '1,5,7', got {text!r}"
        )
    return ids


def _method(args: argparse.Namespace) -> Callable[..., Attribution]:
    if args.method == "gradients":
        return gradients
    if args.method == "smoothgrad":
        return lambda m, x, c, **kw: smoothgrad(
            m, x, c, n_samples=args.n_samples, noise=args.noise, seed=args.seed, **kw
        )
    return lambda m, x, c, **kw: integrated_gradients(m, x, c, steps=args.steps, **kw)


def _class_names(path: str | None, loaded: LoadedModel) -> list[str] | None:
    if path is None:
        return list(loaded.class_names) if loaded.class_names else None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise FileNotFoundError(f"--class-names: cannot read {path!r}: {error}") from error
    return [line.strip() for line in lines if line.strip()]


# -- small helpers --------------------------------------------------------------------------------


def _enlarge(images: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour enlargement of small images by a whole factor, for legible pictures."""
    factor = max(1, -(-_MIN_PICTURE // images.shape[-1]))
    return images.repeat_interleave(factor, -1).repeat_interleave(factor, -2)


def _pictures(batch: list[Sample], x: torch.Tensor, mean, std) -> torch.Tensor:
    """The pictures to draw overlays on, in [0, 1] at the model's input size."""
    if all(s.image is not None for s in batch):
        return _resize_like(
            [torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in batch], x
        )
    raw = x
    if std is not None:
        raw = raw * torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    if mean is not None:
        raw = raw + torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    lo, hi = raw.amin(dim=(1, 2, 3), keepdim=True), raw.amax(dim=(1, 2, 3), keepdim=True)
    return (raw - lo) / (hi - lo).clamp_min(1e-12)


def _resize_like(images: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-2:]
    return torch.stack(
        [
            torch.nn.functional.interpolate(i[None], size=tuple(size), mode="bilinear")[0]
            for i in images
        ]
    ).clamp(0, 1)


def _check_out(out: Path) -> None:
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"--out: {str(folder)!r} is a file, not a folder")
            break


def _check_free(paths: list[Path], overwrite: bool) -> None:
    taken = [str(p) for p in paths if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]} exists")


def _save_image(image, path: Path) -> None:
    with atomic_write(path) as f:
        image.save(f, format="PNG")


def _report(err: InputError) -> None:
    print(f"skipping {err.path}: {err.message}", file=sys.stderr)


def _progress(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and total > 1
    return tqdm(total=total, disable=not enabled, unit="input", file=sys.stderr)


# -- argument parsing -----------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saliency",
        description="Per-class input-gradient explanations for every class in one call.",
        epilog=__doc__.split("Examples\n--------\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo",
        help="explain held-out digits with the bundled model (gradients, SmoothGrad, IG)",
        description="Explain held-out digits with the bundled CNN for all 10 classes with vanilla "
        "gradients, SmoothGrad and Integrated Gradients; save per-class overlays and a summary "
        "grid, and print the IG completeness gap per class.",
        epilog="example: saliency demo --out saliency-out --overwrite",
    )
    d.add_argument("--out", default="saliency-out", help="output folder (default: saliency-out)")
    d.add_argument("--samples", type=int, default=8, help="held-out digits to explain (default 8)")
    d.add_argument("--overwrite", action="store_true", help="replace existing output files")
    d.set_defaults(run=demo)

    e = sub.add_parser(
        "explain",
        help="explain image or tensor inputs with a model",
        description="Explain inputs with a model for the chosen classes; write one overlay per "
        "input and class ({index}_{class}.png), a JSON index per batch, and optionally the raw "
        "attributions. Unreadable inputs are reported by name and skipped; the exit status is 1 "
        "if any input failed.",
        epilog="examples:\n"
        "  saliency explain digits a.png b.png --method ig --classes top3 --out m/\n"
        "  saliency explain mypkg.nets:resnet --weights w.safetensors imgs/ --size 224 224 "
        "--out m/\n  saliency explain breast_cancer rows.npy --classes all --out m/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "model",
        help="a bundled model name (digits, breast_cancer), a TorchScript file, a torch.export "
        ".pt2 file, or package.module:factory together with --weights",
    )
    e.add_argument(
        "inputs", nargs="+", help="image files or folders, or .npy / .safetensors tensor files"
    )
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument(
        "--method", choices=sorted(METHODS), default="gradients", help="default: gradients"
    )
    e.add_argument(
        "--classes",
        default=None,
        help="'all', 'topN' (the N highest per input) or ids like '3' or '1,5,7' (default: "
        "top3, or all when the model has at most 3 classes)",
    )
    e.add_argument("--weights", help="safetensors or state-dict file for a factory MODEL")
    e.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled full model (this can run arbitrary code: only for files "
        "you trust)",
    )
    e.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="resize images to H W")
    e.add_argument(
        "--mean",
        nargs="+",
        type=float,
        help="per-channel mean to normalise with, for pixels scaled to [0, 1] (bundled models "
        "bring their own)",
    )
    e.add_argument(
        "--std", nargs="+", type=float, help="per-channel std to normalise with (as --mean)"
    )
    e.add_argument("--class-names", help="text file with one class name per line")
    e.add_argument("--key", help="tensor name inside a .safetensors input with several")
    e.add_argument(
        "--output",
        choices=["logits", "softmax", "log_softmax"],
        default="logits",
        help="explain raw logits (default) or probabilities",
    )
    e.add_argument("--steps", type=int, default=50, help="IG path points (default 50)")
    e.add_argument("--n-samples", type=int, default=50, help="SmoothGrad samples (default 50)")
    e.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise, fraction of range")
    e.add_argument("--seed", type=int, default=0, help="SmoothGrad seed (default 0)")
    e.add_argument("--batch-size", type=_positive, default=32, help="inputs per batch (default 32)")
    e.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        help="convert images to 1 (grayscale) or 3 (RGB) channels (default: the model's, else "
        "as stored)",
    )
    e.add_argument("--max-memory", help="memory budget such as 2GB (default: none)")
    e.add_argument("--top", type=int, default=None, help="features shown per class (tabular)")
    e.add_argument("--save-values", action="store_true", help="also save raw attributions")
    e.add_argument("--recursive", action="store_true", help="search folders recursively")
    e.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    e.add_argument("--overwrite", action="store_true", help="replace existing output files")
    e.set_defaults(run=explain)
    return parser
