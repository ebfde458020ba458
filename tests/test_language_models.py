"""Language models used as classifiers: every method with ``layer=`` (the embeddings) and a callable
``output=`` that picks label tokens from ``[B, T, V]`` logits, on Llama and GPT-2 built from small
configs, against Captum per target and hand loops through ``inputs_embeds``."""

from __future__ import annotations

import functools

import pytest
import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

import saliency
from saliency import audit

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients",
    "ignore::DeprecationWarning",
)

LABELS = [5, 17, 42]


def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        attn_implementation="eager",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=60, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
        eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


MODELS = {"llama": llama, "gpt2": gpt2}


def pick(o):
    return o.logits[:, -1, LABELS]


def ids_for(b=3, t=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 60, (b, t), generator=g)


def embedded_loop(lm, embeds, scores, **kwargs):
    """The oracle: one autograd.grad per class through ``inputs_embeds``, ``[B, K, T, E]``."""
    e = embeds.detach().clone().requires_grad_()
    out = scores(lm(inputs_embeds=e, **kwargs))
    grad = torch.autograd.grad
    rows = [grad(out[:, k].sum(), e, retain_graph=True)[0] for k in range(out.shape[1])]
    return torch.stack(rows, 1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_smoothgrad_and_ig_at_the_embeddings(name):
    lm = MODELS[name]()
    ids = ids_for()
    emb = lm.get_input_embeddings()
    embeds = emb(ids).detach()

    g = saliency.gradients(lm, ids, layer=emb, output=pick)
    torch.testing.assert_close(g.values, embedded_loop(lm, embeds, pick), atol=1e-5, rtol=1e-4)
    assert g.outputs.shape == (3, len(LABELS))

    # Gradient x activation: Captum's LayerGradientXActivation per target.
    gx = saliency.gradients(lm, ids, layer=emb, output=pick, times_input=True)
    lgxa = LayerGradientXActivation(lambda t: pick(lm(t)), emb)
    for k in range(len(LABELS)):
        ref = lgxa.attribute(ids, target=k)
        torch.testing.assert_close(gx.values[:, k], ref, atol=1e-5, rtol=1e-4)

    # SmoothGrad at the layer: the documented noise on the embeddings, by hand.
    n, std = 3, 0.05
    s = saliency.smoothgrad(lm, ids, layer=emb, output=pick, n_samples=n, noise_std=std, seed=4)
    gen = torch.Generator().manual_seed(4)
    draws = [torch.randn(embeds.shape, generator=gen) * std for _ in range(n)]
    ref = sum(embedded_loop(lm, embeds + d, pick) for d in draws) / n
    torch.testing.assert_close(s.values, ref, atol=1e-5, rtol=1e-4)

    # Integrated Gradients from the pad id 0: Captum's LayerIntegratedGradients per target.
    ig = saliency.integrated_gradients(lm, ids, layer=emb, output=pick, baseline=0, steps=16)
    lig = LayerIntegratedGradients(lambda t: pick(lm(t)), emb)
    for k in range(len(LABELS)):
        ref = lig.attribute(ids, baselines=torch.zeros_like(ids), target=k, n_steps=16)
        torch.testing.assert_close(ig.values[:, k], ref, atol=1e-5, rtol=1e-4)
    tokens = saliency.token_scores(ig)
    assert tokens.values.shape == (3, len(LABELS), 7)
    torch.testing.assert_close(tokens.values, ig.values.sum(-1))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_next_token_reads_the_rows_attention_mask_for_both_paddings(name):
    lm = MODELS[name]()
    emb = lm.get_input_embeddings()
    real = ids_for(3, 5, seed=2)
    pad = 0
    right = torch.cat([real, torch.full((3, 2), pad)], 1)
    right_mask = torch.cat([torch.ones(3, 5), torch.zeros(3, 2)], 1).long()
    right[1, 4], right_mask[1, 4] = pad, 0  # three lengths: a misaligned mask would show
    right[2, 3:5], right_mask[2, 3:5] = pad, 0
    out = saliency.next_token(LABELS, then="log_softmax")

    a = saliency.gradients(lm, right, layer=emb, output=out, attention_mask=right_mask)
    # The oracle: each sample alone, unpadded, with the last position's scores.
    for b in range(3):
        n = int(right_mask[b].sum())
        alone = embedded_loop(
            lm, emb(right[b : b + 1, :n]).detach(), lambda o: torch.log_softmax(pick(o), 1)
        )
        torch.testing.assert_close(a.values[b : b + 1, :, :n], alone, atol=1e-5, rtol=1e-4)
        assert bool((a.values[b, :, n:] == 0).all())  # padding after the sequence: no influence

    # Chunked by the engine (a budget for about one row at a time): the mask follows its rows.
    seen = []

    def spy(raw, attention_mask=None):
        seen.append(attention_mask.shape[0])
        return out(raw, attention_mask=attention_mask)

    spy.reads = ("attention_mask",)
    chunked = saliency.gradients(
        lm, right, layer=emb, output=spy, attention_mask=right_mask, max_memory="300KB",
        strategy="loop",
    )  # fmt: skip
    assert 3 not in seen  # every pass saw fewer rows than the batch
    torch.testing.assert_close(chunked.values, a.values, atol=1e-6, rtol=1e-5)

    # Integrated Gradients and SmoothGrad repeat the mask along with the path points and copies.
    ig = saliency.integrated_gradients(
        lm, right, layer=emb, output=out, attention_mask=right_mask, baseline=pad, steps=8
    )
    for b in range(3):
        n = int(right_mask[b].sum())
        alone = saliency.integrated_gradients(
            lm, right[b : b + 1, :n], layer=emb, output=out, baseline=pad, steps=8
        )
        torch.testing.assert_close(ig.values[b : b + 1, :, :n], alone.values, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ig.delta[b : b + 1], alone.delta, atol=1e-5, rtol=1e-4)

    if name == "llama":  # left padding: rotary positions follow position_ids from the mask
        left = torch.cat([torch.full((3, 2), pad), real], 1)
        left_mask = torch.cat([torch.zeros(3, 2), torch.ones(3, 5)], 1).long()
        positions = (left_mask.cumsum(1) - 1).clamp_min(0)
        lf = saliency.gradients(
            lm, left, layer=emb, output=out, attention_mask=left_mask, position_ids=positions
        )
        unpadded = saliency.gradients(lm, real, layer=emb, output=out)
        torch.testing.assert_close(lf.values[:, :, 2:], unpadded.values, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lf.outputs, unpadded.outputs, atol=1e-5, rtol=1e-4)


def test_next_token_checks_its_arguments():
    with pytest.raises(ValueError, match="then"):
        saliency.next_token([1], then="probabilities")
    with pytest.raises(ValueError, match="ids"):
        saliency.next_token([1, -2])
    lm = gpt2()
    ids = ids_for()
    emb = lm.get_input_embeddings()
    with pytest.raises(ValueError, match="vocabulary size 60"):
        saliency.gradients(lm, ids, layer=emb, output=saliency.next_token([60]))
    with pytest.raises(ValueError, match="attention_mask"):
        saliency.gradients(
            lm, ids, layer=emb, output=saliency.next_token([1]),
            attention_mask=torch.zeros(3, 7, dtype=torch.long),
        )  # fmt: skip
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=2,
    )  # fmt: skip
    seq = transformers.BertForSequenceClassification(cfg).eval()
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        saliency.gradients(
            seq, ids, layer=seq.bert.embeddings.word_embeddings, output=saliency.next_token([1])
        )


def test_audit_run_with_ig_on_a_language_model(tmp_path):
    lm = llama()
    ids = ids_for(4, 6)
    emb = lm.get_input_embeddings()
    ig = functools.partial(saliency.integrated_gradients, layer=emb, baseline=0, steps=8)
    result = audit.run(
        lm, ids, out_dir=tmp_path / "run", methods={"ig": ig}, metrics=["norms"],
        output=pick, batch_size=2, report=False,
    )  # fmt: skip
    assert result.shards == 2 and result.computed == 2
    assert result.summary["samples"] == 4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradcam_over_the_tokens_of_a_decoder_block(name):
    lm = MODELS[name]()
    ids = ids_for()
    blocks = [m for m in lm.modules() if type(m).__name__ in ("LlamaDecoderLayer", "GPT2Block")]
    layer = blocks[-1]  # its output [B, T, E]: one map value per token, E channels
    cam = saliency.gradcam(lm, ids, layer=layer, output=pick, size=None)
    # The oracle: channel weights are the gradients averaged over the tokens, by autograd.
    seen = {}

    def keep(module, args, out):
        seen["a"] = out[0] if isinstance(out, tuple) else out

    handle = layer.register_forward_hook(keep)
    scores = pick(lm(ids))
    handle.remove()
    acts = seen["a"]
    maps = []
    for k in range(len(LABELS)):
        (g,) = torch.autograd.grad(scores[:, k].sum(), acts, retain_graph=True)
        maps.append(torch.relu((g.mean(1, keepdim=True) * acts).sum(-1)))
    torch.testing.assert_close(cam.values, torch.stack(maps, 1).detach(), atol=1e-6, rtol=1e-5)
    assert cam.values.shape == (3, len(LABELS), ids.shape[1])
