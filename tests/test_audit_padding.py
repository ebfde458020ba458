"""Padding in class-level audits (issue 15, item 8): ``token_scores(attention_mask=)`` and
``class_sensitivity(mask=)`` leave padding out, checked against the same texts run unpadded on a
HuggingFace BERT built from a small config, and against SciPy's Spearman correlation."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

import saliency
from saliency import Attribution
from saliency.audit import class_sensitivity
from saliency.tokens import token_scores

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LENGTHS = [9, 5, 7, 3]


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=4, pad_token_id=0,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).eval()
    texts = [
        torch.randint(1, 40, (n,), generator=torch.Generator().manual_seed(n)) for n in LENGTHS
    ]
    ids = torch.zeros(len(texts), max(LENGTHS), dtype=torch.long)  # right padding with id 0
    mask = torch.zeros_like(ids)
    for i, t in enumerate(texts):
        ids[i, : len(t)], mask[i, : len(t)] = t, 1
    return model, texts, ids, mask


def explain(model, ids, mask):
    layer = model.bert.embeddings.word_embeddings
    return saliency.integrated_gradients(
        model, ids, layer=layer, baseline=0, steps=16, attention_mask=mask
    )


def test_bert_padding_is_left_out_of_token_scores_and_class_sensitivity():
    model, texts, ids, mask = bert()
    a = explain(model, ids, mask)
    scores = token_scores(a, attention_mask=mask)
    assert scores.params["attention_mask"] is True
    assert bool((scores.values.masked_select(mask.unsqueeze(1) == 0) == 0).all())
    # The total still obeys completeness: delta is the gap of what is left.
    with torch.no_grad():
        fx = model(ids, attention_mask=mask).logits
        emb = model.bert.embeddings.word_embeddings
        zero = torch.zeros_like(emb(ids))
        fb = model(inputs_embeds=zero, attention_mask=mask).logits
    change = (fx - fb).gather(1, scores.classes)
    torch.testing.assert_close(scores.delta, scores.values.sum(-1) - change, atol=1e-4, rtol=1e-4)

    padded = class_sensitivity(scores)
    masked = class_sensitivity(scores, mask=mask)
    for i, t in enumerate(texts):  # oracle: each text alone, with no padding at all
        alone = token_scores(explain(model, t[None], torch.ones(1, len(t), dtype=torch.long)))
        ref = class_sensitivity(alone)
        torch.testing.assert_close(masked.matrix[i], ref.matrix[0], atol=1e-4, rtol=1e-4)
    # Padding is zero in every class's map: left in, it counts as agreement.
    assert float(padded.off_diagonal[1:].mean()) > float(masked.off_diagonal[1:].mean())
    torch.testing.assert_close(padded.matrix[0], masked.matrix[0])  # the longest has no padding


def toy(seed=0, b=4, k=3, t=8, e=None):
    g = torch.Generator().manual_seed(seed)
    shape = (b, k, t) if e is None else (b, k, t, e)
    values = torch.randn(shape, generator=g)
    classes = torch.arange(k).expand(b, k)
    return Attribution(values, classes, torch.randn(b, k, generator=g), "gradients", {})


def test_masked_similarities_equal_scipy_on_the_kept_positions():
    a = toy()
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [0, 1, 1, 0, 1, 1, 1, 0], [1, 1, 1] + [0] * 5])
    r = class_sensitivity(a, mask=mask, abs=False)
    for b in range(4):
        kept = a.values[b][:, mask[b] == 1]
        for i in range(3):
            for j in range(3):
                ref = spearmanr(kept[i].numpy(), kept[j].numpy()).statistic
                assert float(r.matrix[b, i, j]) == pytest.approx(ref, abs=1e-9)
    # Embedding attributions [B, K, T, E]: the mask covers each token's whole vector.
    emb = toy(e=2)
    r2 = class_sensitivity(emb, mask=mask, similarity="cosine", abs=False)
    for b in range(4):
        kept = emb.values[b][:, mask[b] == 1].flatten(1).double()
        unit = kept / kept.norm(dim=1, keepdim=True)
        torch.testing.assert_close(r2.matrix[b], unit @ unit.T)


def test_masked_ssim_reads_the_kept_tokens_as_one_signal():
    a = toy(t=12)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, 9:] = False
    r = class_sensitivity(a, mask=mask, similarity="ssim")
    cut = Attribution(a.values[1:2, :, :9], a.classes[1:2], a.outputs[1:2], "gradients", {})
    torch.testing.assert_close(r.matrix[1], class_sensitivity(cut, similarity="ssim").matrix[0])


def test_mask_errors_name_the_argument():
    a = toy()
    with pytest.raises(ValueError, match=r"mask: expected \[B, \*positions\] with B=4"):
        class_sensitivity(a, mask=torch.ones(4, 7))
    with pytest.raises(TypeError, match="mask: expected a tensor"):
        class_sensitivity(a, mask=[[1] * 8] * 4)
    with pytest.raises(ValueError, match=r"mask: samples \[2\] keep fewer than 2"):
        class_sensitivity(a, mask=torch.tensor([[1] * 8, [1] * 8, [1] + [0] * 7, [1] * 8]))
    with pytest.raises(ValueError, match="'ssim' compares the kept positions"):
        class_sensitivity(toy(e=8), mask=torch.ones(4, 8), similarity="ssim")
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \[4, 8\]"):
        token_scores(toy(e=2), attention_mask=torch.ones(4, 9))
