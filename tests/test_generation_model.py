"""The bundled language model "reverse": its data, weights, retraining, and known answers."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import saliency
from saliency import models
from saliency.models import WEIGHTS_DIR, ModelInfo, data
from saliency.models.architectures import ReverseLM

NAME = "reverse"
PATH = WEIGHTS_DIR / models._REGISTRY[NAME].filename


@pytest.fixture(scope="module")
def loaded():
    return models.load(NAME)


def test_prompts_answers_and_sources_agree():
    prompts, answers = models.held_out(NAME)
    assert prompts.shape == (1000, 10) and answers.shape == (1000, 9)
    again, _ = models.held_out(NAME, n=7)
    assert torch.equal(again, prompts[:7])  # the first n are the same whatever n is
    sources = models.sources(NAME, prompts)
    for p, a, s in zip(prompts[:50], answers[:50], sources[:50], strict=True):
        letters = p[(p != data.PAD_ID) & (p > data.EOS_ID)].tolist()
        assert p[p != data.PAD_ID].tolist() == [data.BOS_ID, *letters, data.SEP_ID]
        assert len(set(letters)) == len(letters) and 3 <= len(letters) <= 8
        n = len(letters)
        assert a[: n + 1].tolist() == [*letters[::-1], data.EOS_ID]
        assert bool((a[n + 1 :] == data.PAD_ID).all())
        assert p[s[:n]].tolist() == a[:n].tolist()  # every answer letter copies its source
        assert bool((s[n:] == -1).all())
    assert models.tokens(NAME, prompts[:1])[0][-1] == "<sep>"
    with pytest.raises(ValueError, match="name: expected a language model with known sources"):
        models.sources("sentiment", prompts)


def test_shipped_weights_reverse_every_held_out_prompt(loaded):
    lm, info = loaded
    assert isinstance(lm, ReverseLM) and not lm.training
    prompts, answers = models.held_out(NAME)
    a = saliency.explain_generation(
        lm, prompts[:16], attention_mask=(prompts[:16] != 0).long(), max_new_tokens=9
    )
    assert torch.equal(a.generated, answers[:16])
    assert a.real_steps.tolist() == (answers[:16] != 0).tolist()
    assert info.held_out_accuracy == 1.0
    assert info.class_names == info.vocabulary == list(data.REVERSE_VOCABULARY)


def test_the_top_context_token_is_the_true_source(loaded):
    lm, _ = loaded
    prompts, _ = models.held_out(NAME, n=40)
    sources = models.sources(NAME, prompts)
    known = sources >= 0
    a = saliency.explain_generation(
        lm, prompts, attention_mask=(prompts != 0).long(), max_new_tokens=9
    )
    hits = (a.scores.argmax(-1) == sources)[known].float().mean()
    chance = (1 / (a.scores != 0).sum(-1).float())[known].mean()
    assert hits > 0.9 and chance < 0.15


def test_weights_file_is_small_safe_and_self_describing(loaded):
    _, info = loaded
    assert PATH.stat().st_size < 1_000_000
    tensors = load_file(str(PATH))  # safetensors: raw tensors and a JSON header, no pickle
    assert set(tensors) == set(ReverseLM(len(info.vocabulary)).state_dict())
    with safe_open(str(PATH), framework="pt") as f:
        metadata = f.metadata()
    assert ModelInfo.from_metadata(metadata) == info
    assert json.loads(metadata["architecture"]) == "ReverseLM"
    assert json.loads(metadata["training"])["dropped_train_duplicates_of_held_out"] >= 0


def test_the_model_is_causal_and_padding_changes_nothing_real(loaded):
    lm, _ = loaded
    prompts, _ = models.held_out(NAME, n=4)
    mask = (prompts != 0).long()
    with torch.no_grad():
        full = lm(prompts, mask)
        for b in range(4):
            real = prompts[b][mask[b].bool()][None]
            torch.testing.assert_close(full[b][mask[b].bool()], lm(real)[0], rtol=1e-5, atol=1e-5)
        changed = prompts.clone()
        changed[:, -1] = 5
        torch.testing.assert_close(lm(changed, mask)[:, :-1][mask[:, :-1].bool()],
                                   full[:, :-1][mask[:, :-1].bool()])  # fmt: skip


def test_retraining_is_reproducible(tmp_path, capsys, monkeypatch):
    from saliency.models import train

    # The recipe's data, cut short so that the test is quick.
    small = functools.partial(data.ReversalGenerator, train_size=300, held_out_size=50)
    monkeypatch.setattr(train.data, "ReversalGenerator", small)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    path_a, info_a = train.train_model(NAME, out_dir=tmp_path / "a", epochs=1, seed=0)
    path_b, info_b = train.train_model(NAME, out_dir=tmp_path / "b", epochs=1, seed=0)
    path_c, _ = train.train_model(NAME, out_dir=tmp_path / "c", epochs=1, seed=1)
    assert capsys.readouterr() == ("", "")
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    a, b, c = (load_file(str(p)) for p in (path_a, path_b, path_c))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert info_a == info_b and info_a.generator["train_size"] == 300
    assert 0.0 <= info_a.held_out_accuracy <= 1.0
    train.main(["--out", str(tmp_path / "d"), "--epochs", "1", "--model", NAME])
    assert "reverse: held-out accuracy" in capsys.readouterr().out
