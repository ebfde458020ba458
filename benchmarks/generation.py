"""Every generated token explained: explain_generation against Inseq and Captum's per-step loops.

The same GPT-2 models (built from configs, random weights, a local word-level tokenizer over a
1000-token vocabulary; no downloads), the same prompt (20 tokens) and the same forced continuation
(16, 64 and 256 tokens; no generation is timed) go through

- Inseq: ``inseq.load_model(model, "saliency" | "integrated_gradients", tokenizer=...)
  .attribute(prompt, generated_texts=prompt + continuation)`` (IG with ``n_steps=16``), which
  runs one forward and one backward pass per generated token, each on its own prefix;
- Captum: ``LLMGradientAttribution(LayerGradientXActivation(model, embeddings,
  multiply_by_inputs=False) | LayerIntegratedGradients(model, embeddings), tokenizer)
  .attribute(TextTokenInput(prompt), target=continuation_ids)`` (IG with ``n_steps=16``), a loop
  over target tokens as well (it attributes the log probability, to the prompt only);
- ours: ``saliency.explain_generation(model, prompt_ids, generated=continuation_ids,
  method="gradients" | "integrated_gradients", steps=16)``: steps as classes of the engine,
  chunked by position, each chunk on the prefix it needs.

Two model sizes: "tiny" (width 64, 2 layers), where the peers' per-step overhead dominates, and
"compute" (width 512, 6 layers), where only structure helps. Times are per sequence, medians of
interleaved rounds (ours, Inseq, Captum in turn); ours' first call runs on a fresh copy of the
model (nothing cached) and is reported beside the later calls. Peak memory is one call's
resident-set growth. A last table explains a long context (1024 prompt tokens, 256 generated) on
a "long" model (width 256, 2 layers) under a ``max_memory`` budget, beside the peers and ours
without a budget.

Threads: one by default (``--threads 0``: torch's default), as the other benchmarks: on a shared
2-core machine a second intra-op thread stalls whenever another process holds a core.

Run: ``python benchmarks/generation.py`` (long: about an hour on 2 busy CPU cores, most of it the
peers' IG on the compute-bound model); ``--quick`` for a small run that writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))  # run from a checkout without installing
from _report import (  # noqa: E402
    Target,
    _reset_peak,
    _rss,
    machine,
    save_results,
    table,
    write_section,
)

import saliency  # noqa: E402
from saliency.engine.budget import parse_memory  # noqa: E402

V = 1000
PROMPT = 20
STEPS = 16  # IG path points
SIZES = {"tiny": (64, 2, 2), "compute": (512, 6, 8), "long": (256, 2, 4)}
LENGTHS = (16, 64, 256)
LONG = (1024, 256, "800MB")  # prompt, generated, our budget (one step needs about 540 MB)


def build(size: str):
    import transformers

    width, layers, heads = SIZES[size]
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=V, n_embd=width, n_layer=layers, n_head=heads, n_positions=1400,
        bos_token_id=3, eos_token_id=2, pad_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


def tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, "<bos>": 3, **{f"w{i}": i for i in range(4, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
        bos_token="<bos>",
    )  # fmt: skip


def text(ids: torch.Tensor) -> str:
    return " ".join(f"w{int(i)}" for i in ids)


def tokens(prompt: int, generated: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(prompt * 1000 + generated)
    return torch.randint(4, V, (1, prompt), generator=g), torch.randint(4, V, (1, generated),
                                                                        generator=g)  # fmt: skip


def runners(model, method: str, prompt, continuation, tok, budget=None) -> dict[str, Callable]:
    import inseq
    from captum.attr import (
        LayerGradientXActivation,
        LayerIntegratedGradients,
        LLMGradientAttribution,
        TextTokenInput,
    )

    emb = model.get_input_embeddings()
    full = text(torch.cat([prompt, continuation], 1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inseq.load_model(
            model, "saliency" if method == "gradients" else "integrated_gradients", tokenizer=tok
        )
    inseq_args = {} if method == "gradients" else {"n_steps": STEPS}
    inner = (
        LayerGradientXActivation(model, emb, multiply_by_inputs=False)
        if method == "gradients"
        else LayerIntegratedGradients(model, emb)
    )
    llm = LLMGradientAttribution(inner, tok)
    captum_args = {} if method == "gradients" else {"n_steps": STEPS}
    ours_args = {} if method == "gradients" else {"steps": STEPS, "rule": "gausslegendre"}

    def ours_on(m):
        return lambda: saliency.explain_generation(
            m, prompt, generated=continuation, method=method, max_memory=budget, **ours_args
        )

    return {
        "ours": ours_on(model),
        "ours, first call": lambda: ours_on(copy.deepcopy(model)),  # nothing cached: call it
        "Inseq": lambda: theirs.attribute(
            text(prompt[0]), generated_texts=full, show_progress=False, **inseq_args
        ),
        "Captum": lambda: llm.attribute(
            TextTokenInput(text(prompt[0]), tok), target=continuation[0], **captum_args
        ),
    }


def measure(fn: Callable) -> tuple[float, int]:
    """Wall seconds and peak extra resident memory (bytes) of one call."""
    gc.collect()
    before = _rss()[0]
    _reset_peak()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return seconds, max(_rss()[1] - before, 0)


def rounds_for(size: str, length: int, method: str) -> int:
    if size == "tiny":
        return 3
    if length <= 16:
        return 3
    return 2 if length <= 64 and method == "gradients" else 1


def run_case(size, model, tok, length, method, rounds, names):
    prompt, continuation = tokens(PROMPT, length)
    fns = runners(model, method, prompt, continuation, tok)
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, int] = {}
    first, _ = measure(fns["ours, first call"]())  # a fresh copy, made before the clock starts
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, peak = measure(fns[name])
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0), peak)
    ours = statistics.median(times["ours"])
    row = [size, method.replace("integrated_gradients", f"IG ({STEPS} steps)"), str(length)]
    for name in names:
        row.append(f"{statistics.median(times[name]):.2f}")
    row.append(f"{first:.2f} ({first / ours:.2f}x)")
    for name in names[1:]:
        row.append(f"{statistics.median(times[name]) / ours:.2f}x")
    row += [f"{peaks[n] / 1e6:.0f}" for n in names]
    row.append(str(rounds))
    print(" | ".join(row), flush=True)
    return row, {n: statistics.median(t) for n, t in times.items()}, first


def warm_up(tok) -> None:
    """One untimed run of everything on a throwaway model: the process's one-time costs (imports,
    first kernels) are not a model's first call."""
    model = build("tiny")
    prompt, continuation = tokens(PROMPT, 4)
    for method in ("gradients", "integrated_gradients"):
        fns = runners(model, method, prompt, continuation, tok)
        for name in ("ours", "Inseq", "Captum"):
            fns[name]()


def long_context(tok) -> tuple[list[list[str]], tuple[int, int] | None]:
    """The long-context table's rows, and ours' peak under the budget with the budget (bytes)."""
    prompt_len, generated, budget = LONG
    model = build("long")
    prompt, continuation = tokens(prompt_len, generated)
    fns = runners(model, "gradients", prompt, continuation, tok)
    with_budget = runners(model, "gradients", prompt, continuation, tok, budget=budget)["ours"]
    rows, peak_in_budget = [], None
    for name, fn in (
        (f"ours, max_memory={budget}", with_budget),
        ("ours, no budget", fns["ours"]),
        ("Inseq", fns["Inseq"]),
        ("Captum", fns["Captum"]),
    ):
        try:
            seconds, peak = measure(fn)
        except MemoryError as error:  # say so in the table rather than lose the run
            rows.append([name, "did not fit", str(error).split(". ")[1][:120]])
            continue
        rows.append([name, f"{seconds:.1f}", f"{peak / 1e6:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
        if fn is with_budget:
            peak_in_budget = (peak, parse_memory(budget))
    return rows, peak_in_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--quick", action="store_true", help="tiny model, 16 and 64 tokens")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--sizes", default="tiny,compute", help="comma-separated")
    parser.add_argument("--no-long", action="store_true", help="skip the long-context table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = tokenizer()
    names = ["ours", "Inseq", "Captum"]
    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    lengths = (16, 64) if args.quick else LENGTHS
    load_before, start = os.getloadavg()[0], time.perf_counter()
    warm_up(tok)
    rows, results = [], {}
    for size in sizes:
        model = build(size)
        for method in ("gradients", "integrated_gradients"):
            for length in lengths:
                rounds = 1 if args.quick else rounds_for(size, length, method)
                row, medians, first = run_case(size, model, tok, length, method, rounds, names)
                rows.append(row)
                results[size, method, length] = (medians, first)
    long_rows, long_peak = ([], None) if (args.quick or args.no_long) else long_context(tok)
    load_after, total = os.getloadavg()[0], time.perf_counter() - start
    found = targets(results, long_peak)
    markdown = report(rows, long_rows, _lines(found), load_before, load_after, total)
    print()
    print(markdown)
    if not (args.no_write or args.quick):
        write_section("generation", markdown)
        save_results("generation", {"machine": machine(), "seconds": total, "targets": found})


def targets(results, long_peak: tuple[int, int] | None) -> list[Target]:
    """The issue's targets on these medians, as records for the page's table of targets."""
    found = []

    def ratio(size, method, length) -> float | None:
        if (size, method, length) not in results:
            return None
        medians, _ = results[size, method, length]
        return medians["Inseq"] / medians["ours"]

    def at_least(case: str, what: str, value: float | None, goal: float, also: str = "") -> None:
        if value is not None:
            met = value >= goal
            found.append(Target("generation", case, what, f">= {goal}x", value, met, also))

    for length in (64, 256):
        for method, goal in (("gradients", 4), ("integrated_gradients", 3)):
            case = f"tiny, {length} tokens"
            at_least(case, f"{_short(method)}: Inseq / ours", ratio("tiny", method, length), goal)
    for method in ("gradients", "integrated_gradients"):
        value = ratio("compute", method, 256)
        at_least("compute, 256 tokens", f"{_short(method)}: Inseq / ours", value, 1.5)
    compute = [(k, ratio(*k)) for k in results if k[0] == "compute"]
    if compute:
        (_, method, length), value = min(compute, key=lambda kv: kv[1])
        where = f"lowest at {_short(method)}, {length} tokens"
        at_least("compute, every length", "Inseq / ours", value, 1.0, where)
    firsts = {k: results[k][1] / results[k][0]["ours"] for k in results}
    if firsts:
        key, worst = max(firsts.items(), key=lambda kv: kv[1])
        where = f"worst at {key[0]}, {_short(key[1])}, {key[2]} tokens; median "
        where += f"{statistics.median(firsts.values()):.2f}x"
        found.append(Target("generation", "every case", "ours' first call / later call",
                            "<= 1.3x", worst, worst <= 1.3, where))  # fmt: skip
    if long_peak is not None:
        peak, budget = long_peak
        found.append(Target("generation", "long context", "peak extra memory / max_memory",
                            "<= 1", peak / budget, peak <= budget,
                            f"{peak / 1e6:.0f} MB of {budget / 1e6:.0f} MB"))  # fmt: skip
    return found


def _short(method: str) -> str:
    return "IG" if method == "integrated_gradients" else method


def _lines(found: list[Target]) -> list[str]:
    return [
        f"- {t.case}, {t.what}: {t.value:.2f} ({'met' if t.met else 'MISSED'}; target {t.goal})"
        + (f" ({t.also})" if t.also else "")
        for t in found
    ]


def report(rows, long_rows, summary, load_before, load_after, total) -> str:
    header = [
        "model", "method", "generated", "ours s", "Inseq s", "Captum s", "ours first call s",
        "Inseq / ours", "Captum / ours", "ours MB", "Inseq MB", "Captum MB", "rounds",
    ]  # fmt: skip
    parts = [
        "## Generation: every generated token explained (`benchmarks/generation.py`) {#generation}",
        f"Machine: {machine()}; 1-minute load average {load_before:.1f} at the start, "
        f"{load_after:.1f} at the end; whole run {total:.0f} s.",
        "GPT-2 built from configs (tiny: width 64, 2 layers; compute: width 512, 6 layers; "
        f"vocabulary {V}), one prompt of {PROMPT} tokens and a forced continuation; gradients "
        f"and IG ({STEPS} Gauss-Legendre points) at the input embeddings. Times per sequence in "
        "seconds, medians of interleaved rounds; ours' first call runs on a fresh copy of the "
        "model, nothing cached (in brackets: over the later calls' median). Peak: one call's "
        "resident-set growth in MB. Inseq attributes the probability of each token to the "
        "whole prefix; Captum's LLMGradientAttribution the log probability to the prompt only: "
        "both run a forward and a backward pass per generated token.",
        table(header, rows),
        "Targets:",
        "\n".join(summary),
    ]
    if long_rows:
        prompt_len, generated, budget = LONG
        parts += [
            f"### Long context: {prompt_len} prompt tokens, {generated} generated (width 256, "
            "2 layers), gradients",
            table(["run", "seconds", "peak extra MB"], long_rows),
            f"The full values `[T_out, T_ctx, E]` of this case are "
            f"{generated * (prompt_len + generated) * 256 * 4 / 1e6:.0f} MB; ours reduces them "
            f"chunk by chunk to one score per token, under the budget ({budget}) with it. Peak "
            "extra MB is the process's resident-set growth: it also counts memory the C "
            "allocator keeps after tensors are freed, which `max_memory` (a bound on live "
            "tensors) does not see.",
        ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
