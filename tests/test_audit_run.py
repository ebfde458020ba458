"""``saliency.audit.run`` in one process: results against direct computation, resume, refusals."""

from __future__ import annotations

import functools
import json
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


def test_nan_output_is_skipped(tmp_path):
    class NanOnNegativeFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            out = self.linear(x)
            return torch.where(x[:, :1] < -5, torch.full_like(out, float("nan")), out)

    x = torch.randn(6, 3)
    x[4, 0] = -10.0
    run = saliency.audit.run(NanOnNegativeFirst(), x, out_dir=tmp_path, metrics=["norms"], **FAST)
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
