"""``saliency.audit.run`` in one process: results against direct computation, resume, refusals."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, TensorDataset

import saliency
import saliency.audit
from saliency import models
from saliency.audit.datasets import shards

# No report, and a fixed strategy instead of measuring: the tests that need those ask for them.
FAST = {"strategy": "loop", "report": False}


@pytest.fixture(scope="module")
def digits():
    model, info = models.load("digits")
    x, y = models.held_out("digits", 24)
    return model, info, x, y


def _rows(out):
    lines = []
    for path in sorted((out / "shards").glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def test_rows_and_summary_match_direct_computation(digits, tmp_path):
    model, _, x, y = digits
    result = saliency.audit.run(
        model, (x, y), out_dir=tmp_path, metrics=["norms"], batch_size=10, **FAST
    )
    assert (result.shards, result.computed, result.resumed) == (3, 3, 0)  # 10 + 10 + 4

    direct = saliency.gradients(model, x)
    rows = _rows(tmp_path)
    assert len(rows) == 24 * 10
    assert [(r["index"], r["class"]) for r in rows[:3]] == [(0, 0), (0, 1), (0, 2)]
    l1 = torch.tensor([r["norms.l1"] for r in rows]).view(24, 10)
    score = torch.tensor([r["score"] for r in rows]).view(24, 10)
    torch.testing.assert_close(l1, direct.values.flatten(2).abs().sum(-1), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(score, model(x), rtol=1e-5, atol=1e-5)  # other batch sizes
    assert [r["label"] for r in rows[::10]] == y.tolist()

    summary = result.summary
    predicted = direct.outputs.argmax(1)
    assert summary["accuracy"] == pytest.approx(float((predicted == y).double().mean()))
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (y.numpy(), predicted.numpy()), 1)
    assert summary["confusion"] == expected.tolist()

    # per-class distributions against NumPy, over the rows of each class
    column = summary["methods"]["gradients"]["columns"]["norms.l1"]
    for c in (0, 7):
        values = l1[:, c].double().numpy()
        stats = column["by_class"][str(c)]
        assert stats["count"] == 24
        assert stats["median"] == pytest.approx(np.quantile(values, 0.5), rel=1e-6)
        assert stats["q05"] == pytest.approx(np.quantile(values, 0.05), rel=1e-6)
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-6)
    highest = column["highest"][0]
    b, k = divmod(int(l1.argmax()), 10)
    assert (highest["index"], highest["class"]) == (b, k)

    # mean maps: the predicted class's gradient averaged over each (label, predicted) cell
    maps = load_file(tmp_path / "summary.safetensors")
    cells = maps["gradients/cells"].tolist()
    for n, (label, pred) in enumerate(cells):
        members = (y == label) & (predicted == pred)
        want = direct.values[members, pred].mean(0)
        torch.testing.assert_close(maps["gradients/cell_means"][n], want, rtol=1e-5, atol=1e-6)
    assert sum(c[2] for c in summary["methods"]["gradients"]["maps"]["cells"]) == 24


def test_seeded_methods_get_per_shard_seeds(digits, tmp_path):
    model, _, x, y = digits
    smooth = functools.partial(saliency.smoothgrad, n_samples=3)
    saliency.audit.run(
        model,
        (x, y),
        out_dir=tmp_path,
        methods={"sg": smooth},
        metrics=[],
        batch_size=8,
        keep_values=True,
        seed=5,
        **FAST,
    )
    for shard, start in ((0, 0), (2, 16)):
        kept = saliency.Attribution.load(tmp_path / "shards" / f"{shard:06d}.sg.safetensors")
        direct = smooth(
            model, x[start : start + 8], seed=shards.shard_seed(5, start, "sg"), strategy="loop"
        )
        assert torch.equal(kept.values, direct.values)
    first = saliency.Attribution.load(tmp_path / "shards" / "000000.sg.safetensors")
    second = saliency.Attribution.load(tmp_path / "shards" / "000001.sg.safetensors")
    assert first.params["seed"] != second.params["seed"]


def test_resume_computes_nothing_and_changed_model_is_refused(digits, tmp_path):
    model, _, x, y = digits
    args = dict(out_dir=tmp_path, metrics=["norms"], batch_size=8, **FAST)
    saliency.audit.run(model, (x, y), **args)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    again = saliency.audit.run(model, (x, y), **args)
    assert (again.computed, again.resumed) == (0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == before

    changed = models.load("digits")[0]
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    with pytest.raises(ValueError, match=r"model\.fingerprint") as info:
        saliency.audit.run(changed, (x, y), **args)
    assert "overwrite=True" in str(info.value)
    with pytest.raises(ValueError, match=r"config\.batch_size: 8 then, 4 now"):
        saliency.audit.run(model, (x, y), **{**args, "batch_size": 4})
    with pytest.raises(ValueError, match=r"config\.seed"):
        saliency.audit.run(model, (x, y), **args, seed=1)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == before

    fresh = saliency.audit.run(changed, (x, y), **args, overwrite=True)
    assert (fresh.computed, fresh.resumed) == (3, 0)


def test_resume_redoes_a_damaged_shard_and_reuses_the_fixed_strategy(digits, tmp_path):
    model, _, x, y = digits
    args = dict(out_dir=tmp_path, metrics=["norms"], batch_size=8, keep_values=True, report=False)
    saliency.audit.run(model, (x, y), **args)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    chosen = manifest["strategy"]["gradients"]
    assert chosen in saliency.engine.STRATEGIES
    reference = (tmp_path / "shards" / "000001.jsonl").read_bytes()
    # a power cut after the rename but before the data reached the disk: a truncated file
    (tmp_path / "shards" / "000001.jsonl").write_bytes(reference[:100])
    (tmp_path / "shards" / ".000002.jsonl.123-0badf00d.tmp").write_bytes(b"half")
    again = saliency.audit.run(model, (x, y), **args)
    assert (again.computed, again.resumed) == (1, 2)
    assert (tmp_path / "shards" / "000001.jsonl").read_bytes() == reference
    assert not list((tmp_path / "shards").glob(".*.tmp"))
    kept = saliency.Attribution.load(tmp_path / "shards" / "000001.gradients.safetensors")
    assert kept.params["strategy"] == chosen


class _Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_dataset_and_loader_give_the_tensors_results(digits, tmp_path):
    model, _, x, y = digits
    args = dict(metrics=["norms"], **FAST)
    saliency.audit.run(model, (x, y), out_dir=tmp_path / "t", batch_size=6, **args)
    saliency.audit.run(model, _Pairs(x, y), out_dir=tmp_path / "d", batch_size=6, **args)
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    run = saliency.audit.run(model, loader, out_dir=tmp_path / "l", **args)
    assert run.shards == 4
    for name in ("000000.jsonl", "000003.safetensors"):
        reference = (tmp_path / "t" / "shards" / name).read_bytes()
        assert (tmp_path / "d" / "shards" / name).read_bytes() == reference
        assert (tmp_path / "l" / "shards" / name).read_bytes() == reference

    # workers read ahead across shards, in order
    workers = DataLoader(TensorDataset(x, y), batch_size=6, num_workers=1)
    saliency.audit.run(model, workers, out_dir=tmp_path / "w", **args)
    for name in ("000000.jsonl", "000003.jsonl"):
        assert (tmp_path / "w" / "shards" / name).read_bytes() == (
            tmp_path / "t" / "shards" / name
        ).read_bytes()

    with pytest.raises(ValueError, match="shuffle=False"):
        saliency.audit.run(model, DataLoader(TensorDataset(x, y), shuffle=True), out_dir=tmp_path)
    with pytest.raises(ValueError, match="differs from the DataLoader's batch_size 6"):
        saliency.audit.run(model, loader, out_dir=tmp_path / "x", batch_size=4)


def test_unlabelled_tensor_explains_without_labels(digits, tmp_path):
    model, _, x, _ = digits
    run = saliency.audit.run(
        model, x[:5], out_dir=tmp_path, metrics=["norms"], classes=saliency.top_k(2), **FAST
    )
    assert "accuracy" not in run.summary and sum(run.summary["predicted_counts"]) == 5
    rows = _rows(tmp_path)
    assert len(rows) == 10 and "label" not in rows[0]
    assert all(r["class"] == r["predicted"] for r in rows[::2])  # top 1 is the prediction


def test_non_finite_samples_are_skipped_and_named(digits, tmp_path):
    model, _, x, y = digits
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    x[9] = float("inf")
    run = saliency.audit.run(
        model, (x, y), out_dir=tmp_path, metrics=["norms"], batch_size=8, **FAST
    )
    assert sorted(run.skipped) == [3, 9]
    assert "NaN or inf" in run.skipped[3]
    assert run.summary["explained"] == 22
    assert {r["index"] for r in _rows(tmp_path)} == set(range(24)) - {3, 9}


class _NanOnNegativeFirst(torch.nn.Module):
    """A linear model whose outputs are NaN for samples with a very negative first feature."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        out = self.linear(x)
        return torch.where(x[:, :1] < -5, torch.full_like(out, float("nan")), out)


def test_nan_output_is_skipped(tmp_path):
    x = torch.randn(6, 3)
    x[4, 0] = -10.0
    run = saliency.audit.run(_NanOnNegativeFirst(), x, out_dir=tmp_path, metrics=["norms"], **FAST)
    assert list(run.skipped) == [4] and "output" in run.skipped[4]
    assert run.summary["explained"] == 5


def test_model_and_inputs_are_left_alone(digits, tmp_path):
    _, _, x, y = digits
    model = models.load("digits")[0].train()
    for p in model.parameters():
        p.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_before, y_before = x.clone(), y.clone()
    saliency.audit.run(model, (x, y), out_dir=tmp_path, metrics=["norms"], **FAST)
    assert model.training and not any(p.requires_grad for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


def test_a_run_that_would_not_fit_the_disk_is_refused(digits, tmp_path, monkeypatch):
    model, _, x, y = digits
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=50_000))
    with pytest.raises(OSError, match=r"needs about .* but .* has 50 KB free; keep_values"):
        saliency.audit.run(model, (x, y), out_dir=tmp_path, keep_values=True, metrics=[], **FAST)
    assert not list((tmp_path / "shards").iterdir())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"methods": "nope"}, ValueError, "methods: unknown method 'nope'"),
        ({"metrics": ["nope"]}, ValueError, "metrics: unknown metric 'nope'"),
        ({"metrics": ["randomization_test"]}, ValueError, "not a per-sample metric"),
        ({"metrics": {"ig": ["norms"]}}, ValueError, r"\['ig'\] are not among methods"),
        ({"classes": "label", "data": "unlabelled"}, ValueError, "data has none"),
        ({"classes": torch.zeros(24, 2, dtype=torch.long)}, ValueError, "per-sample ids"),
        ({"classes": saliency.top_k(11)}, ValueError, "top_k.11. asks for more classes"),
        ({"classes": [3, 12]}, ValueError, r"ids \[12\] are out of range"),
        ({"batch_size": 0}, ValueError, "batch_size: expected a positive int, got 0"),
        ({"max_memory": "lots"}, ValueError, "max_memory: could not read 'lots'"),
        ({"seed": -1}, ValueError, "seed: expected a non-negative int"),
    ],
)
def test_bad_arguments_are_named(digits, tmp_path, kwargs, error, match):
    model, _, x, y = digits
    data = x if kwargs.pop("data", None) == "unlabelled" else (x, y)
    with pytest.raises(error, match=match):
        saliency.audit.run(
            model, data, out_dir=tmp_path, **{"metrics": ["norms"], **FAST, **kwargs}
        )


def test_a_process_group_the_caller_made_is_used_and_left_alone(digits, tmp_path):
    import torch.distributed as dist

    model, _, x, y = digits
    dist.init_process_group(
        "gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0, world_size=1
    )
    try:
        run = saliency.audit.run(model, (x, y), out_dir=tmp_path / "out", metrics=["norms"],
                                 batch_size=12, **FAST)  # fmt: skip
        assert dist.is_initialized()  # still the caller's, not destroyed
        assert (run.computed, run.shards) == (2, 2)
    finally:
        dist.destroy_process_group()


def _numpy_stats(column: np.ndarray) -> dict:
    finite = column[np.isfinite(column)]
    quantiles = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "count": column.size,
        "nonfinite": column.size - finite.size,
        "mean": finite.mean(),
        "std": finite.std(),
        "min": finite.min(),
        "max": finite.max(),
        **dict(zip(["q05", "q25", "median", "q75", "q95"], quantiles, strict=True)),
    }


def test_per_class_statistics_sort_once_instead_of_a_pass_per_class():
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from saliency.audit.datasets.summary import column_stats, grouped_stats

    class Elements(TorchDispatchMode):
        """Counts the elements every tensor operation produces: the work done, without a clock."""

        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.count += sum(t.numel() for t in tree_flatten(out)[0] if torch.is_tensor(t))
            return out

    n, k = 40, 200
    values = torch.randn(n, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values[3, 5], values[7, 5], values[0, 9] = float("nan"), float("inf"), float("-inf")
    classes = torch.arange(k).expand(n, k)
    with Elements() as work:
        by = grouped_stats(values, classes)
    # One sort of all n * k rows: work in proportion to the rows, not to rows times classes
    # (a pass per class over every row costs about k * n * k elements).
    assert work.count < 50 * n * k
    assert list(by) == [str(c) for c in range(k)]
    for c in (0, 5, 9, 199):
        want = _numpy_stats(values[:, c].numpy())
        assert by[str(c)].keys() == want.keys() == column_stats(values[:, c]).keys()
        for name, value in want.items():
            assert by[str(c)][name] == pytest.approx(value, rel=1e-8, abs=1e-12), (c, name)
    assert by["5"]["nonfinite"] == 2 and by["9"]["count"] == n
    # per-sample columns grouped by label: uneven groups, one key with no finite value
    labels = torch.tensor([2, 0, 2, 2, 1])
    column = torch.tensor([1.0, 4.0, 3.0, 2.0, float("nan")])
    grouped = grouped_stats(column, labels)
    assert grouped["2"]["median"] == 2.0 and grouped["0"]["count"] == 1
    assert grouped["1"] == {"count": 1, "nonfinite": 1}
    assert grouped["2"]["q25"] == pytest.approx(np.quantile([1.0, 3.0, 2.0], 0.25))


# -- regressions: every launch and rank alike, checks at the door, data and files verified -------


class _InfOnLargeFirst(torch.nn.Module):
    """Logits times exp(x0): infinite for samples whose first feature is large."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * torch.exp(x[:, :1])


def _files(out):
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_shard_of_bad_samples_is_skipped_by_every_launch_alike(tmp_path):
    torch.manual_seed(0)
    model = _InfOnLargeFirst()
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    x[8:, 0] = 1000.0  # shard 1: every sample's output is infinite
    args = dict(metrics=["norms"], batch_size=8, **FAST)
    whole = saliency.audit.run(model, (x, y), out_dir=tmp_path / "whole", **args)
    assert sorted(whole.skipped) == list(range(8, 16))

    # a later launch (or another rank) meets shard 1 without having explained a batch itself
    out = tmp_path / "resumed"
    saliency.audit.run(model, (x, y), out_dir=out, **args)
    for path in [*(out / "shards").glob("000001*"), out / "summary.json"]:
        path.unlink()
    again = saliency.audit.run(model, (x, y), out_dir=out, **args)
    assert (again.computed, again.resumed) == (1, 1)
    assert sorted(again.skipped) == list(range(8, 16))
    assert _files(out) == _files(tmp_path / "whole")

    # a first shard that is all bad, while the probe (first 8 samples) finds good ones
    x = torch.randn(12, 4)
    x[:4, 0] = 1000.0
    first_bad = saliency.audit.run(
        model, x, out_dir=tmp_path / "first", metrics=["norms"], batch_size=4, **FAST
    )
    assert sorted(first_bad.skipped) == [0, 1, 2, 3] and first_bad.summary["explained"] == 8


def test_a_batch_error_names_the_data_sets_samples():
    from saliency.audit.datasets.screen import screen

    torch.manual_seed(0)
    x = torch.randn(4, 4)
    x[:, 0] = 1000.0
    with pytest.raises(ValueError) as info:
        screen(_InfOnLargeFirst(), x, output="logits", index=range(8, 12))
    message = str(info.value)
    assert re.search(r"samples \[8, 9, 10, 11\]|data: samples 8-11: ", message), message
    assert "[0, 1" not in message


def test_auto_strategy_is_decided_without_timing_so_fresh_launches_agree(tmp_path, monkeypatch):
    from saliency.audit.datasets import methods as method_specs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    x, y = torch.randn(16, 6), torch.arange(16) % 4
    strategies = []
    real = method_specs.call

    def spy(*args, **kwargs):
        strategies.append(kwargs["strategy"])
        return real(*args, **kwargs)

    monkeypatch.setattr(method_specs, "call", spy)
    methods = {
        "gradients": saliency.gradients,
        "sg": functools.partial(saliency.smoothgrad, n_samples=3),
    }
    args = dict(methods=methods, metrics=["norms"], batch_size=8, report=False)  # strategy auto
    saliency.audit.run(model, (x, y), out_dir=tmp_path / "a", **args)
    # one call per shard and method: no call spent timing strategies, and no timing to differ
    assert strategies == ["loop"] * 4
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["strategy"] == {"gradients": "loop", "sg": "loop"}
    assert manifest["config"]["strategy"] == "auto"
    saliency.audit.run(model, (x, y), out_dir=tmp_path / "b", **args)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"classes": "label", "metrics": ["class_sensitivity"]},
            r"'class_sensitivity' compares each sample's classes .* classes='label' gives 1",
        ),
        (
            {"methods": {"g": saliency.gradients, "ig": "ig"}, "metrics": ["completeness"]},
            r"'completeness' cannot measure method 'g' \(gradients\).*gap.*integrated_gradients",
        ),
        (
            {"methods": "smoothgrad", "metrics": ["margins"]},
            r"'margins' cannot measure method 'smoothgrad' \(smoothgrad\)",
        ),
        (
            {
                "methods": {"g": functools.partial(saliency.gradients, times_input=True)},
                "metrics": ["margins"],
            },
            r"'margins' cannot measure method 'g'.*plain input gradients",
        ),
        (
            {"classes": saliency.top_k(2), "metrics": ["margins"]},
            r"'margins' .* needs all 10 classes .* classes=top_k\(2\) gives 2",
        ),
        ({"data": "tabular", "metrics": ["road"]}, r"'road' needs images .* shape \[64\]"),
    ],
)
def test_metrics_that_cannot_measure_the_rows_are_refused_before_anything_is_written(
    digits, tmp_path, kwargs, match
):
    model, _, x, y = digits
    if kwargs.pop("data", None) == "tabular":
        model, x = torch.nn.Linear(64, 10), x.flatten(1)
    methods = kwargs.pop("methods", "gradients")
    if isinstance(methods, dict):
        methods = {k: saliency.integrated_gradients if v == "ig" else v for k, v in methods.items()}
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        saliency.audit.run(model, (x, y), out_dir=out, methods=methods, **FAST, **kwargs)
    assert not out.exists()


def test_default_metrics_leave_class_sensitivity_out_with_one_class_per_sample(digits, tmp_path):
    model, _, x, y = digits
    label = saliency.audit.run(
        model, (x[:8], y[:8]), out_dir=tmp_path / "label", classes="label", **FAST
    )
    columns = label.summary["methods"]["gradients"]["columns"]
    assert "deletion.auc" in columns and not any(c.startswith("class_sens") for c in columns)
    manifest = json.loads((tmp_path / "label" / "manifest.json").read_text())
    assert manifest["config"]["metrics"] == {"gradients": ["deletion"]}
    # one output: classes=None gives one row per sample too
    single = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    one = saliency.audit.run(single, x[:6], out_dir=tmp_path / "one", **FAST)
    columns = one.summary["methods"]["gradients"]["columns"]
    assert {c.split(".")[0] for c in columns if "." in c} == {"deletion"}
    two = saliency.audit.run(
        model, x[:4], out_dir=tmp_path / "two", classes=saliency.top_k(2), **FAST
    )
    assert "class_sensitivity.mean_other" in two.summary["methods"]["gradients"]["columns"]
    # a metric for the one method it fits
    ig = functools.partial(saliency.integrated_gradients, steps=4)
    both = saliency.audit.run(
        model, (x[:6], y[:6]), out_dir=tmp_path / "dict", methods={"g": saliency.gradients,
        "ig": ig}, metrics={"ig": ["completeness"]}, **FAST,
    )  # fmt: skip
    assert "completeness.gap" in both.summary["methods"]["ig"]["columns"]


def test_a_run_that_completed_no_shard_gives_way_to_the_corrected_command(digits, tmp_path):
    model, _, x, y = digits

    def mine(model, x, classes=None, **options):  # of unknown kind: only a shard can tell
        return saliency.gradients(model, x, classes, **options)

    args = dict(out_dir=tmp_path, methods={"mine": mine}, batch_size=12, **FAST)
    with pytest.raises(ValueError, match="records no completeness gap"):
        saliency.audit.run(model, (x, y), metrics=["completeness"], **args)
    assert (tmp_path / "manifest.json").exists() and not list(tmp_path.rglob("*.done.json"))
    fixed = saliency.audit.run(model, (x, y), metrics=["norms"], **args)
    assert (fixed.computed, fixed.resumed) == (2, 0)
    with pytest.raises(ValueError, match=r"config\.metrics.*overwrite=True"):
        saliency.audit.run(model, (x, y), metrics=[], **args)  # now there are results to keep


def test_resume_checks_the_data_of_every_complete_shard(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(24, 4), torch.arange(24) % 3
    args = dict(out_dir=tmp_path, metrics=["norms"], batch_size=8, **FAST)
    saliency.audit.run(model, (x, y), **args)
    x2 = x.clone()
    x2[20] += 1  # after the first 8 samples the manifest hashes
    with pytest.raises(ValueError, match=r"data: samples 16-23 are not those .*overwrite=True"):
        saliency.audit.run(model, (x2, y), **args)
    y2 = y.clone()
    y2[9] = 2  # was 0
    with pytest.raises(ValueError, match=r"data: samples 8-15 are not those"):
        saliency.audit.run(model, (x, y2), **args)
    assert saliency.audit.run(model, (x, y), **args).computed == 0
    fresh = saliency.audit.run(model, (x2, y), **args, overwrite=True)
    assert fresh.computed == 3
    reference = saliency.audit.run(model, (x2, y), **{**args, "out_dir": tmp_path / "ref"})
    assert fresh.summary == reference.summary


def test_kept_values_are_hashed_and_a_garbled_manifest_says_how_to_start_over(digits, tmp_path):
    model, _, x, y = digits
    args = dict(out_dir=tmp_path, metrics=["norms"], batch_size=12, keep_values=True, **FAST)
    saliency.audit.run(model, (x, y), **args)
    kept = tmp_path / "shards" / "000001.gradients.safetensors"
    record = json.loads((tmp_path / "shards" / "000001.done.json").read_text())
    original = kept.read_bytes()
    assert record["files"][kept.name]["sha256"] == hashlib.sha256(original).hexdigest()
    damaged = bytearray(original)
    damaged[-1] ^= 1  # same size, other bytes: only the hash can tell
    kept.write_bytes(bytes(damaged))
    again = saliency.audit.run(model, (x, y), **args)
    assert (again.computed, again.resumed) == (1, 1) and kept.read_bytes() == original

    (tmp_path / "manifest.json").write_text("")  # a power cut before the data reached the disk
    with pytest.raises(ValueError, match=r"empty or garbled .* cut off mid-write.*overwrite=True"):
        saliency.audit.run(model, (x, y), **args)
    assert saliency.audit.run(model, (x, y), **args, overwrite=True).computed == 2


def test_a_seeded_smoothgrad_in_a_run_has_no_sensitivity_at_radius_zero(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = torch.randn(12, 6)
    result = saliency.audit.run(
        model, x, out_dir=tmp_path, methods={"sg": functools.partial(saliency.smoothgrad,
        n_samples=4)}, metrics=["sensitivity_max"], batch_size=6,
        metric_options={"sensitivity_max": {"perturb_radius": 0.0, "n_perturb": 2}}, **FAST,
    )  # fmt: skip
    column = result.summary["methods"]["sg"]["columns"]["sensitivity_max.sensitivity"]["all"]
    assert column["count"] == 36 and column["max"] == 0.0


def test_an_error_that_no_sample_explains_is_raised_as_it_was(tmp_path):
    # Samples are screened only after a batch fails; when screening finds every sample fine,
    # the batch's own error stands.
    def picky(model, x, classes=None, **options):
        if x.shape[0] > 2:
            raise ValueError("picky: at most 2 samples per call")
        return saliency.gradients(model, x, classes, **options)

    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="picky: at most 2 samples"):
        saliency.audit.run(
            model, torch.randn(6, 3), out_dir=tmp_path, methods={"picky": picky},
            metrics=["norms"], **FAST,
        )  # fmt: skip


def test_nan_outputs_are_skipped_even_when_the_method_lets_them_through(tmp_path):
    def tolerant(model, x, classes=None, **options):  # a caller's method that never checks
        with torch.no_grad():
            out = model(x)
        ids = torch.zeros(x.shape[0], 1, dtype=torch.long)
        return saliency.Attribution(x[:, None].clone(), ids, out, "gradients", {})

    x = torch.randn(8, 3)
    x[4, 0] = -10.0
    run = saliency.audit.run(
        _NanOnNegativeFirst(), x, out_dir=tmp_path, methods={"tolerant": tolerant},
        metrics=["norms"], batch_size=4, report=False,
    )  # fmt: skip
    assert list(run.skipped) == [4] and "output" in run.skipped[4]
    assert run.summary["explained"] == 7


# -- regressions: runs that never lose, mix or miscount (issue 17) -------------------------------


@pytest.mark.parametrize("bad", [-1, 3, 40])
def test_labels_outside_the_models_classes_are_refused_before_anything_is_written(tmp_path, bad):
    # -1 was counted in the last class's row (a negative index wraps); 3 and 40 gave a 4x4 and a
    # 41x41 confusion matrix for a 3-class model
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    y[10] = bad
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"samples 10 are {bad}, not class ids of a model with 3"):
        saliency.audit.run(model, (x, y), out_dir=out, metrics=["norms"], batch_size=4, **FAST)
    assert not out.exists()


def test_a_label_out_of_range_deep_in_a_dataset_stops_at_its_shard(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(24, 4), torch.arange(24) % 3
    bad = y.clone()
    bad[21] = 40  # past the first samples the leader reads: only its shard can see it
    args = dict(out_dir=tmp_path, metrics=["norms"], batch_size=8, **FAST)
    with pytest.raises(ValueError, match=r"labels of samples 21 are 40, .* 3 outputs \(0-2\)"):
        saliency.audit.run(model, _Pairs(x, bad), **args)
    fixed = saliency.audit.run(model, _Pairs(x, y), **args)
    assert (fixed.computed, fixed.resumed) == (1, 2)
    assert np.array(fixed.summary["confusion"]).shape == (3, 3)
    assert np.array(fixed.summary["confusion"]).sum() == 24


def test_a_folder_of_the_users_own_files_is_not_written_into(digits, tmp_path):
    model, _, x, y = digits
    args = dict(metrics=["norms"], batch_size=12, **FAST)
    (tmp_path / "summary.json").write_text('{"mine": 1}')  # the user's, from another tool
    (tmp_path / "report.html").write_text("<p>my report</p>")
    with pytest.raises(FileExistsError, match=r"files of its own \(summary\.json, report\.html\)"):
        saliency.audit.run(model, (x, y), out_dir=tmp_path, **args)
    assert (tmp_path / "summary.json").read_text() == '{"mine": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.json"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"notes\.txt.*empty folder or its own run"):
        saliency.audit.run(model, (x, y), out_dir=other, **args)
    run = saliency.audit.run(model, (x, y), out_dir=other, overwrite=True, **args)
    assert run.computed == 2 and (other / "notes.txt").read_text() == "keep me"

    replaced = saliency.audit.run(model, (x, y), out_dir=tmp_path, overwrite=True, **args)
    assert json.loads((tmp_path / "summary.json").read_text()) == replaced.summary


def test_shards_whose_manifest_is_gone_are_refused_not_replaced(digits, tmp_path):
    model, _, x, y = digits
    args = dict(out_dir=tmp_path, metrics=["norms"], batch_size=8, **FAST)
    saliency.audit.run(model, (x, y), **args)
    (tmp_path / "manifest.json").unlink()
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()}
    with pytest.raises(FileExistsError, match=r"shard files \(000000\..*no manifest\.json"):
        saliency.audit.run(model, (x, y), **args, seed=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards").iterdir()} == before
    fresh = saliency.audit.run(model, (x, y), **args, seed=1, overwrite=True)
    assert (fresh.computed, fresh.resumed) == (3, 0)


def test_out_dirs_that_cannot_be_used_are_named(digits, tmp_path, monkeypatch):
    model, _, x, y = digits
    args = dict(metrics=["norms"], batch_size=12, **FAST)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = [
        ("", ValueError, r"out_dir: '' is no folder"),
        (tmp_path / "a-file" / "sub", NotADirectoryError, r"is inside .*a-file', a file"),
        (tmp_path / "dangling", FileNotFoundError, r"dangling' is a symbolic link to .*nowhere"),
        (tmp_path / "dangling" / "sub", FileNotFoundError, r"symbolic link .* does not exist"),
        ("/sys/kernel/saliency-audit", PermissionError, r"cannot be written \(permission denied"),
    ]
    for out, error, match in cases:
        with pytest.raises(error, match=match):
            saliency.audit.run(model, (x, y), out_dir=out, **args)
    assert not (tmp_path / "nowhere").exists()

    # a finished run on a file system mounted read-only: reopening it takes its lock
    import errno

    from saliency.audit.datasets import folder

    saliency.audit.run(model, (x, y), out_dir=tmp_path / "done", **args)

    def read_only(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(folder, "open", read_only, raising=False)
    with pytest.raises(PermissionError, match=r"read-only file system: .*\.lock\); a run writes"):
        saliency.audit.run(model, (x, y), out_dir=tmp_path / "done", **args)


class _Tempered(torch.nn.Module):
    """Logits divided by a plain attribute: no parameter or buffer sees it change."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.temperature = 1.0

    def forward(self, x):
        return self.linear(x) / self.temperature


def test_a_model_that_behaves_otherwise_is_refused_whatever_changed(tmp_path):
    torch.manual_seed(0)
    model = _Tempered()
    x, y = torch.randn(40, 4), torch.arange(40) % 3
    args = dict(metrics=["norms"], batch_size=4, **FAST)
    out = tmp_path / "t"
    saliency.audit.run(model, (x, y), out_dir=out, **args)
    for path in (out / "shards").glob("00000[5-9].done.json"):
        path.unlink()  # as if killed after 5 of 10 shards
    reference = _files(out)

    model.temperature = 10.0  # the fingerprint of parameters, buffers and modes is the same
    with pytest.raises(ValueError, match=r"model\.outputs: on sample \d, class \d scored .* now"):
        saliency.audit.run(model, (x, y), out_dir=out, **args)
    assert _files(out) == reference

    model.temperature = 1.0  # as before: resumes, and the manifest keeps its first record
    again = saliency.audit.run(model, (x, y), out_dir=out, **args)
    assert (again.computed, again.resumed) == (5, 5)
    whole = saliency.audit.run(model, (x, y), out_dir=tmp_path / "whole", **args)
    assert _files(out) == _files(tmp_path / "whole") and whole.computed == 10

    # a callable that is no Module is fingerprinted by name only; its outputs tell
    def call(inputs):
        return model(inputs)

    saliency.audit.run(call, (x, y), out_dir=tmp_path / "c", **args)
    (tmp_path / "c" / "shards" / "000009.done.json").unlink()
    with torch.no_grad():
        model.linear.bias += 0.5
    with pytest.raises(ValueError, match=r"model\.outputs: on sample \d"):
        saliency.audit.run(call, (x, y), out_dir=tmp_path / "c", **args)


def test_a_finished_runs_summary_and_report_are_verified_and_drawn_again(digits, tmp_path):
    model, info, x, y = digits
    args = dict(out_dir=tmp_path, metrics=["norms"], batch_size=12, strategy="loop")
    saliency.audit.run(model, (x[:12], y[:12]), **args)
    original = _files(tmp_path)

    def stamps():
        return {n: (tmp_path / n).stat().st_mtime_ns for n in ("summary.json", "report.html")}

    before = stamps()
    saliency.audit.run(model, (x[:12], y[:12]), **args)  # nothing to do: nothing written
    assert stamps() == before and _files(tmp_path) == original

    damaged = bytearray(original["summary.safetensors"])
    damaged[-1] ^= 1  # same size, other bytes
    (tmp_path / "summary.safetensors").write_bytes(bytes(damaged))
    (tmp_path / "summary.json").write_text(original["summary.json"].decode().replace("1.0", "0.5"))
    (tmp_path / "report.html").write_text("<p>cut")
    again = saliency.audit.run(model, (x[:12], y[:12]), **args)
    assert _files(tmp_path) == original and again.summary["accuracy"] == 1.0

    names = [f"digit {c}" for c in info.class_names]
    saliency.audit.run(model, (x[:12], y[:12]), **args, class_names=names, mean=0.3, std=0.4)
    assert "digit 7" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "summary.json").read_bytes() == original["summary.json"]


class _SqrtOfFirst(torch.nn.Module):
    """Finite everywhere, but the derivative of sqrt(|x0|) is infinite where x0 = 0."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.linear(x) + torch.sqrt(x[:, :1].abs())


def test_a_sample_with_an_infinite_gradient_is_skipped_and_named_and_resumes(tmp_path):
    # It stopped the run naming "(row in the chunk, target)", and every resume stopped there.
    torch.manual_seed(0)
    model = _SqrtOfFirst()
    x = torch.randn(12, 5)
    x[5, 0] = 0.0
    args = dict(out_dir=tmp_path, metrics=["norms", "deletion"], batch_size=4, **FAST)
    run = saliency.audit.run(model, x, **args)
    assert list(run.skipped) == [5] and "gradient is infinite or NaN" in run.skipped[5]
    rows = _rows(tmp_path)
    assert {r["index"] for r in rows} == set(range(12)) - {5}
    direct = saliency.gradients(model, x[[4, 6, 7]], strategy="loop")  # shard 1 without 5
    l1 = torch.tensor([r["norms.l1"] for r in rows if r["index"] in (4, 6, 7)]).view(3, 2)
    torch.testing.assert_close(l1, direct.values.abs().sum(-1), rtol=1e-6, atol=1e-6)
    again = saliency.audit.run(model, x, **args)
    assert (again.computed, again.resumed) == (0, 3) and list(again.skipped) == [5]


class _Ragged(Dataset):
    """Samples of 3 features, then of 4 from ``change`` on."""

    def __init__(self, n, change):
        self.n, self.change = n, change

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3 if i < self.change else 4,), float(i))


def test_empty_data_and_samples_that_change_shape_are_named(tmp_path):
    model = torch.nn.Linear(3, 2)
    args = dict(metrics=["norms"], batch_size=4, **FAST)
    with pytest.raises(ValueError, match=r"data: x holds no sample \(shape \(0, 3\)\)"):
        saliency.audit.run(model, torch.empty(0, 3), out_dir=tmp_path / "e", **args)
    with pytest.raises(ValueError, match=r"no sample"):
        saliency.audit.run(model, (torch.empty(0, 3), torch.empty(0, dtype=torch.long)),
                           out_dir=tmp_path / "e", **args)  # fmt: skip
    # within the first samples, within a later shard, and between shards
    for change, match in [
        (6, r"samples 0-7 cannot be stacked .*sample 0 has shape \[3\] and sample 6 \[4\]"),
        (14, r"samples 12-15 cannot be stacked .*sample 12 has shape \[3\] and sample 14 \[4\]"),
        (12, r"samples 12-15 have shape \[4\], the first samples \[3\]; every sample must"),
    ]:
        with pytest.raises(ValueError, match=match):
            saliency.audit.run(model, _Ragged(20, change), out_dir=tmp_path / f"r{change}", **args)
    loader = DataLoader(_Ragged(20, 14), batch_size=4)
    with pytest.raises(ValueError, match=r"samples 12-15 cannot be stacked into one batch"):
        saliency.audit.run(model, loader, out_dir=tmp_path / "l", **{**args, "batch_size": None})
