"""Token deletion and insertion (issue 15, item 6): checked against a hand loop on a HuggingFace
BERT built from a small config (attention mask, special tokens, a [MASK] substitute by id and by
embedding), and on the bundled sentiment model, where deleting the top Integrated Gradients tokens
must lower the class score faster than a random order."""

from __future__ import annotations

import pytest
import torch

import saliency
from saliency import models
from saliency.audit import token_deletion, token_insertion

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CLS, SEP, MASK, PAD = 1, 2, 3, 0
LENGTHS = [8, 5, 7]


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3, pad_token_id=PAD,
        initializer_range=0.5,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.full((len(LENGTHS), max(LENGTHS)), PAD)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(LENGTHS):  # [CLS] words [SEP], then padding
        ids[i, :n] = torch.cat([torch.tensor([CLS]), torch.randint(4, 30, (n - 2,), generator=g),
                                torch.tensor([SEP])])  # fmt: skip
        mask[i, :n] = 1
    return model, ids, mask


def scores_of(model, ids, mask):
    layer = model.bert.embeddings.word_embeddings
    a = saliency.integrated_gradients(
        model, ids, layer=layer, baseline=0, steps=8, attention_mask=mask
    )
    return saliency.token_scores(a, attention_mask=mask)


def hand_curves(model, ids, mask, values, order_of, substitute, steps, insertion):
    """Every (sample, row, point) by hand: rank the sample's real words, substitute the first
    ``floor(i * D / steps)`` (or all but them), run the model on that one text."""
    n, k, _ = values.shape
    out = torch.empty(n, k, steps + 1)
    for b in range(n):
        words = [j for j in range(ids.shape[1]) if mask[b, j] and int(ids[b, j]) not in (CLS, SEP)]
        for r in range(k):
            ranked = order_of(b, r, words)
            for i in range(steps + 1):
                top = set(ranked[: i * len(words) // steps])
                gone = [j for j in words if (j not in top) == insertion]
                text = ids[b].clone()
                text[gone] = substitute
                with torch.no_grad():
                    logits = model(text[None], attention_mask=mask[b : b + 1]).logits
                out[b, r, i] = logits[0, r]
    return out


@pytest.mark.parametrize("insertion", [False, True], ids=["deletion", "insertion"])
def test_token_curves_equal_a_hand_loop_on_bert(insertion):
    model, ids, mask = bert()
    a = scores_of(model, ids, mask)
    fn = token_insertion if insertion else token_deletion
    r = fn(model, ids, a, substitute=MASK, keep_ids=[CLS, SEP], steps=4, seed=5,
           attention_mask=mask)  # fmt: skip
    assert r.curves.shape == (3, 3, 5) and r.params["deletable"] == [n - 2 for n in LENGTHS]
    assert r.kind == ("insertion" if insertion else "deletion")
    assert r.params["features"] == "tokens"

    def by_score(b, row, words):  # decreasing score, ties by position
        return sorted(words, key=lambda j: (-float(a.values[b, row, j]), j))

    ref = hand_curves(model, ids, mask, a.values, by_score, MASK, 4, insertion)
    torch.testing.assert_close(r.curves, ref, atol=1e-5, rtol=1e-4)

    keys = torch.rand(ids.shape, generator=torch.Generator().manual_seed(5)).double()

    def by_random(b, row, words):
        return sorted(words, key=lambda j: (-float(keys[b, j]), j))

    ref = hand_curves(model, ids, mask, a.values, by_random, MASK, 4, insertion)
    torch.testing.assert_close(r.random_curves, ref, atol=1e-5, rtol=1e-4)
    frac = torch.linspace(0, 1, 5, dtype=r.curves.dtype)
    torch.testing.assert_close(r.auc, torch.trapezoid(r.curves, frac, dim=-1))


def test_padding_and_special_tokens_are_never_substituted():
    model, ids, mask = bert()
    a = scores_of(model, ids, mask)
    seen = []

    def watched(t, attention_mask):
        seen.append(t.clone())
        return model(t, attention_mask=attention_mask)

    token_deletion(watched, ids, a, substitute=MASK, keep_ids=[CLS, SEP], seed=0,
                   output=lambda o: o.logits, attention_mask=mask)  # fmt: skip
    texts = torch.cat(seen)
    fixed = ~mask.bool() | (ids == CLS) | (ids == SEP)  # per sample; rows are copies of samples
    hits = [(texts == ids[b]) | ~fixed[b] for b in range(len(ids))]
    # every text the model saw keeps its sample's padding and special tokens as they were
    assert bool(torch.stack(hits).all(-1).any(0).all())
    assert bool((texts[:, 0] == CLS).all())


def test_an_embedding_substitute_equals_its_token_id():
    model, ids, mask = bert()
    a = scores_of(model, ids, mask)
    layer = model.bert.embeddings.word_embeddings
    by_id = token_deletion(model, ids, a, substitute=MASK, keep_ids=[CLS, SEP], steps=3,
                           seed=1, attention_mask=mask)  # fmt: skip
    vector = layer.weight[MASK].detach()
    by_vector = token_deletion(model, ids, a, substitute=vector, layer=layer, keep_ids=[CLS, SEP],
                               steps=3, seed=1, attention_mask=mask)  # fmt: skip
    torch.testing.assert_close(by_vector.curves, by_id.curves, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(by_vector.random_curves, by_id.random_curves, atol=1e-5, rtol=1e-4)
    assert by_vector.params["substitute"] == "embedding[16]"


def test_deleting_top_ig_tokens_lowers_the_sentiment_score_faster_than_random():
    model, _ = models.load("sentiment")
    ids, labels = models.held_out("sentiment", 32)
    ig = saliency.integrated_gradients(model, ids, layer=model.embedding, baseline=0, steps=16)
    scores = saliency.token_scores(ig)
    r = token_deletion(model, ids, scores, substitute=0, seed=0)  # PAD: the word is gone
    label = r.classes == labels[:, None]
    assert r.params["deletable"] == (ids != 0).sum(1).tolist()  # padding is already PAD
    gap = r.random_auc[label] - r.auc[label]
    assert float(gap.mean()) > 2.0  # the label's score falls much faster than at random
    assert float((gap > 0).float().mean()) >= 0.9
    unk = token_insertion(model, ids, scores, substitute=1, keep_ids=[0], seed=0)  # UNK
    assert float((unk.auc[label] > unk.random_auc[label]).float().mean()) >= 0.9


def test_token_metric_errors_name_the_argument():
    model, ids, mask = bert()
    a = scores_of(model, ids, mask)
    layer = model.bert.embeddings.word_embeddings
    with pytest.raises(TypeError, match="x: expected token ids"):
        token_deletion(model, ids.float(), a, substitute=MASK)
    embeddings = saliency.integrated_gradients(
        model, ids, layer=layer, baseline=0, steps=4, attention_mask=mask
    )
    with pytest.raises(ValueError, match=r"saliency\.token_scores"):
        token_deletion(model, ids, embeddings, substitute=MASK, attention_mask=mask)
    with pytest.raises(ValueError, match="layer: an embedding substitute"):
        token_deletion(model, ids, a, substitute=torch.zeros(16), attention_mask=mask)
    with pytest.raises(ValueError, match="layer: a token id substitute"):
        token_deletion(model, ids, a, substitute=MASK, layer=layer, attention_mask=mask)
    with pytest.raises(ValueError, match=r"substitute: a vector of shape \[5\]"):
        token_deletion(model, ids, a, substitute=torch.zeros(5), layer=layer, attention_mask=mask)
    with pytest.raises(ValueError, match=r"x: samples \[0, 1, 2\] have no token"):
        token_deletion(model, ids, a, substitute=MASK, keep_ids=list(range(30)),
                       attention_mask=mask)  # fmt: skip
    with pytest.raises(ValueError, match="recorded outputs differ"):
        token_deletion(model, ids.flip(0), a, substitute=MASK, attention_mask=mask.flip(0))
    with pytest.raises(ValueError, match="steps: expected a positive int"):
        token_deletion(model, ids, a, substitute=MASK, steps=0, attention_mask=mask)
