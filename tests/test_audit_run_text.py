"""``saliency.audit.run`` on text: token ids, per-sample forward arguments, HF-style dict data."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import transformers
from torch.utils.data import DataLoader, Dataset

import saliency
import saliency.audit
from saliency import models

FAST = {"strategy": "loop", "report": False}


@pytest.fixture(scope="module")
def bert():
    """A small BERT classifier and right-padded sentences whose padding changes its outputs
    unless the attention mask hides it (pad id 0 still goes through the embeddings)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).eval()
    lengths = torch.tensor([7, 3, 5, 2, 6, 4, 7, 1, 3, 5])
    ids = torch.randint(1, 40, (10, 7))
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0 after each sentence
    types = torch.zeros_like(ids)
    labels = torch.arange(10) % 3
    return model, ids, mask, types, labels


def _gradients_by_autograd(model, ids, mask):
    """The oracle: d logit_c / d word embeddings, by autograd on inputs_embeds, every class."""
    words = model.get_input_embeddings()
    embedded = words(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embedded, attention_mask=mask).logits
    rows = [torch.autograd.grad(logits[:, c].sum(), embedded, retain_graph=True)[0]
            for c in range(logits.shape[1])]  # fmt: skip
    return torch.stack(rows, 1), logits.detach()


class _Items(Dataset):
    """HF-style items: a dict per sample, labels under "labels"."""

    def __init__(self, ids, mask, types, labels):
        self.ids, self.mask, self.types, self.labels = ids, mask, types, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {
            "input_ids": self.ids[i],
            "attention_mask": self.mask[i],
            "token_type_ids": self.types[i],
            "labels": int(self.labels[i]),
        }


def test_attention_masks_reach_methods_from_every_data_form(bert, tmp_path):
    model, ids, mask, types, labels = bert
    want, logits = _gradients_by_autograd(model, ids, mask)
    unmasked, _ = _gradients_by_autograd(model, ids, torch.ones_like(mask))
    assert not torch.allclose(want, unmasked, atol=1e-4)  # the mask matters for this data

    forms = {
        "dict": {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                 "labels": labels},
        "triple": (ids, labels, {"attention_mask": mask, "token_type_ids": types}),
        "items": _Items(ids, mask, types, labels),
        "loader": DataLoader(_Items(ids, mask, types, labels), batch_size=4),
    }  # fmt: skip
    files = {}
    for name, data in forms.items():
        out = tmp_path / name
        run = saliency.audit.run(
            model, data, out_dir=out, methods="gradients", metrics=["norms"],
            batch_size=None if name == "loader" else 4, keep_values=True, **FAST,
        )  # fmt: skip
        assert run.shards == 3 and run.summary["explained"] == 10
        kept = [saliency.Attribution.load(out / "shards" / f"00000{i}.gradients.safetensors")
                for i in range(3)]  # fmt: skip
        values = torch.cat([a.values for a in kept])
        torch.testing.assert_close(values, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.cat([a.outputs for a in kept]), logits)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config"]["methods"]["gradients"]["keywords"] == {
            "layer": "bert.embeddings.word_embeddings"
        }
        files[name] = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    # every form is the same data: the same shards, byte for byte
    assert files["dict"] == files["triple"] == files["items"] == files["loader"]

    # unlabelled, with forward arguments only
    run = saliency.audit.run(
        model, (ids, {"attention_mask": mask}), out_dir=tmp_path / "unlabelled",
        metrics=["norms"], batch_size=5, **FAST,
    )  # fmt: skip
    assert "accuracy" not in run.summary and run.summary["explained"] == 10


def test_integrated_gradients_on_token_ids_start_from_the_padding_id(bert, tmp_path):
    model, ids, mask, _, labels = bert
    data = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    run = saliency.audit.run(
        model, data, out_dir=tmp_path, methods={"ig": functools.partial(
            saliency.integrated_gradients, steps=8)}, metrics=["completeness", "norms"],
        batch_size=5, keep_values=True, **FAST,
    )  # fmt: skip
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["methods"]["ig"]["keywords"] == {
        "steps": 8, "layer": "bert.embeddings.word_embeddings", "baseline": 0,
    }  # fmt: skip
    direct = saliency.integrated_gradients(
        model, ids[5:], layer=model.get_input_embeddings(), baseline=0, steps=8,
        attention_mask=mask[5:], strategy="loop",
    )  # fmt: skip
    kept = saliency.Attribution.load(tmp_path / "shards" / "000001.ig.safetensors")
    torch.testing.assert_close(kept.values, direct.values, rtol=1e-5, atol=1e-7)
    gaps = run.summary["methods"]["ig"]["columns"]["completeness.abs_gap"]["all"]
    assert gaps["count"] == 30 and gaps["max"] < 1e-2  # the mask was used by every path point


def test_the_bundled_sentiment_model_runs_with_named_methods(tmp_path):
    model, info = models.load("sentiment")
    ids, labels = models.held_out("sentiment", 24)
    run = saliency.audit.run(
        model, (ids, labels), out_dir=tmp_path, methods=["gradients", "ig", "smoothgrad"],
        batch_size=8, class_names=info.class_names, keep_values=True, strategy="loop",
    )  # fmt: skip
    assert run.summary["accuracy"] == 1.0 and run.report.exists()
    # deletion perturbs the inputs: left out of the defaults for token ids
    columns = run.summary["methods"]["ig"]["columns"]
    assert "class_sensitivity.mean_other" in columns and not any("deletion" in c for c in columns)
    direct = saliency.integrated_gradients(
        model, ids[8:16], layer=model.embedding, baseline=0, strategy="loop"
    )
    kept = saliency.Attribution.load(tmp_path / "shards" / "000001.ig.safetensors")
    assert torch.equal(kept.values, direct.values)
    with pytest.raises(ValueError, match=r"'deletion' perturbs or differentiates the inputs"):
        saliency.audit.run(model, (ids, labels), out_dir=tmp_path / "d", metrics=["deletion"])


class _TwoTables(torch.nn.Module):
    """Token ids through two embedding tables and no get_input_embeddings()."""

    def __init__(self):
        super().__init__()
        self.words = torch.nn.Embedding(20, 4)
        self.tags = torch.nn.Embedding(20, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, ids):
        return self.head((self.words(ids) + self.tags(ids)).mean(1))


def test_token_ids_without_a_layer_to_find_are_refused_with_the_call_that_works(tmp_path):
    ids = torch.randint(0, 20, (6, 5))
    model = _TwoTables()
    with pytest.raises(ValueError, match=r"nn.Embedding modules are \['words', 'tags'\].*layer="):
        saliency.audit.run(model, ids, out_dir=tmp_path / "a", metrics=["norms"], **FAST)
    ig = functools.partial(saliency.integrated_gradients, layer="words")
    with pytest.raises(ValueError, match=r"names no padding id .* baseline=<pad id>"):
        saliency.audit.run(model, ids, out_dir=tmp_path / "b", methods={"ig": ig}, **FAST)
    run = saliency.audit.run(
        model, ids, out_dir=tmp_path / "c", methods={"ig": functools.partial(ig, baseline=3)},
        metrics=["norms"], **FAST,
    )  # fmt: skip
    assert run.summary["explained"] == 6


@pytest.mark.parametrize(
    "data, match",
    [
        ({"ids": torch.ones(4, 3)}, r"none of them an input \(input_ids"),
        ({"input_ids": torch.ones(4, 3).long(), "x": torch.ones(4, 3)}, r"several inputs"),
        (
            {
                "input_ids": torch.ones(4, 3).long(),
                "label": torch.zeros(4).long(),
                "labels": torch.zeros(4).long(),
            },
            r"labels under \['labels', 'label'\]",
        ),
        (
            {"input_ids": torch.ones(4, 3).long(), "attention_mask": torch.ones(3, 3)},
            r"'attention_mask' has shape \(3, 3\) for 4 samples",
        ),
    ],
)
def test_dict_data_that_cannot_be_read_is_named(data, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        saliency.audit.run(torch.nn.Linear(3, 2), data, out_dir=tmp_path)


class _WithText(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"input_ids": torch.ones(3, dtype=torch.long), "text": "a sentence"}


def test_a_dict_entry_that_is_no_tensor_says_it_would_reach_the_model(tmp_path):
    with pytest.raises(TypeError, match=r"'text' holds a str, not a tensor .* keyword argument"):
        saliency.audit.run(torch.nn.Linear(3, 2), _WithText(), out_dir=tmp_path)


class _Scaled(torch.nn.Module):
    """Float inputs and a per-sample keyword argument that changes every output."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x, scale):
        return torch.tanh(self.linear(x)) * scale[:, None]


def test_forward_arguments_reach_the_metrics_and_follow_skipped_samples(tmp_path):
    torch.manual_seed(0)
    model = _Scaled()
    x, scale = torch.randn(12, 6), torch.linspace(0.5, 3.0, 12)
    x[2, 0] = float("nan")  # left out: the scales of the others must stay theirs
    options = {"deletion": {"steps": 3, "seed": 1}}
    run = saliency.audit.run(
        model, (x, {"scale": scale}), out_dir=tmp_path, metrics=["deletion"], batch_size=6,
        metric_options=options, **FAST,
    )  # fmt: skip
    assert list(run.skipped) == [2]
    rows = [json.loads(line) for line in (tmp_path / "shards" / "000000.jsonl").open()]
    keep = [0, 1, 3, 4, 5]
    a = saliency.gradients(model, x[keep], scale=scale[keep], strategy="loop")
    want = saliency.audit.deletion(model, x[keep], a, steps=3, seed=1, scale=scale[keep])
    got = torch.tensor([r["deletion.auc"] for r in rows]).view(5, 3)
    torch.testing.assert_close(got, want.auc, rtol=1e-5, atol=1e-6)


def test_the_command_audits_the_bundled_sentiment_data(tmp_path, monkeypatch, capsys):
    from saliency.cli import main

    real = models.held_out
    # the first 24 held-out sentences: the command reads the whole split otherwise
    monkeypatch.setattr(models, "held_out", lambda name, n=None: real(name, n or 24))
    out = tmp_path / "out"
    code = main(["audit", "sentiment", "sentiment", "--out", str(out), "--method", "gradients",
                 "ig", "--steps", "8", "--batch-size", "12", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "Audited 24 of 24 samples (accuracy 100.0%)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    methods = manifest["config"]["methods"]
    assert methods["ig"]["keywords"]["layer"] == "embedding"
    assert methods["ig"]["keywords"]["baseline"] == 0
    # The report draws the sentences' words (the bundled vocabulary), not token ids: its
    # sample lists show many of them.
    report = (out / "report.html").read_text(encoding="utf-8")
    words = {w for row in models.tokens("sentiment", real("sentiment", 24)[0]) for w in row}
    shown = {w for w in words - {"<pad>", "<cls>", "<unk>"} if f">{w}<" in report}
    assert len(shown) >= 40, sorted(shown)


def test_changed_forward_arguments_are_changed_data(bert, tmp_path):
    model, ids, mask, _, labels = bert
    args = dict(out_dir=tmp_path, methods="gradients", metrics=["norms"], batch_size=5, **FAST)
    saliency.audit.run(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, **args)
    other = mask.clone()
    other[9, 0] = 0  # the second shard's mask, after the first samples the manifest hashes
    with pytest.raises(ValueError, match=r"data: samples 5-9 are not those their complete"):
        saliency.audit.run(
            model, {"input_ids": ids, "attention_mask": other, "labels": labels}, **args
        )
    again = saliency.audit.run(
        model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, **args
    )
    assert (again.computed, again.resumed) == (0, 2)


def test_every_metric_that_perturbs_the_inputs_is_refused_on_token_ids(tmp_path):
    from saliency.audit import records

    model, _ = models.load("sentiment")
    ids, labels = models.held_out("sentiment", 8)
    perturbing = ["deletion", "insertion", "road", "infidelity", "sensitivity_max", "margins"]
    assert set(perturbing) <= set(records.names(in_runs=True))
    for name in perturbing:
        with pytest.raises(ValueError, match=rf"'{name}' perturbs or differentiates the inputs"):
            saliency.audit.run(model, (ids, labels), out_dir=tmp_path / name, metrics=[name])
        assert not (tmp_path / name).exists()


def test_class_sensitivity_in_a_run_leaves_the_padding_out(bert, tmp_path):
    model, ids, mask, _, labels = bert
    keep = mask.sum(1) >= 2  # class_sensitivity needs 2 kept positions per sample
    ids, mask, labels = ids[keep], mask[keep], labels[keep]
    data = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    run = saliency.audit.run(
        model, data, out_dir=tmp_path, methods="gradients", metrics=["class_sensitivity"],
        batch_size=len(ids), **FAST,
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "shards" / "000000.jsonl").open()]
    got = {(r["index"], r["class"]): r["class_sensitivity.mean_other"] for r in rows}
    a = saliency.gradients(
        model, ids, layer=model.get_input_embeddings(), attention_mask=mask, strategy="loop"
    )
    masked = saliency.audit.class_sensitivity(a, mask=mask).mean_other
    padded = saliency.audit.class_sensitivity(a).mean_other
    for (s, c), value in got.items():
        assert value == pytest.approx(float(masked[s, c]), rel=1e-5, abs=1e-6)
    assert not torch.allclose(masked, padded)  # the padding would have counted
    assert run.summary["explained"] == len(ids)
