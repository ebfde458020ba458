"""Real-world architectures: HuggingFace ViT, ResNet and BERT built from small configs (no
downloads), passed as they are (output objects), in training mode (refused, state untouched) and in
eval mode against torch.func and Captum per class."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, LayerIntegratedGradients, Saliency

import saliency
from saliency.engine import GuardError, evaluate, forget_strategy_choices

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients",
    "ignore::DeprecationWarning",
    "ignore:There is a performance drop:UserWarning",  # the oracle's own vmap over attention
)


def vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=12,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    return transformers.ViTForImageClassification(cfg), torch.randn(3, 3, 16, 16)


def resnet():
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=40
    )
    model = transformers.ResNetForImageClassification(cfg)
    with torch.no_grad():  # running statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(2, 3, 32, 32)


def bert(attn: str = "sdpa"):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        attn_implementation=attn,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg)
    ids = torch.randint(1, 40, (3, 7))
    return model, ids


def snapshot(model):
    return (
        copy.deepcopy(model.state_dict()),
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_unchanged(model, before):
    state, modes, grads = snapshot(model)
    assert modes == before[1] and grads == before[2]
    for k, v in before[0].items():
        assert torch.equal(state[k], v), k


def logits_of(model):
    return lambda t: model(t).logits


def jacrev(f, x):
    return torch.func.vmap(torch.func.jacrev(lambda xi: f(xi.unsqueeze(0)).squeeze(0)))(x)


@pytest.fixture(autouse=True)
def _fresh():
    forget_strategy_choices()


@pytest.mark.parametrize("make", [vit, resnet], ids=["vit", "resnet"])
def test_image_classifiers_in_training_mode_are_refused_untouched(make):
    model, x = make()
    assert model.training  # HuggingFace models start in training mode
    before = snapshot(model)
    with pytest.raises(GuardError, match=r"model\.eval\(\)"):
        saliency.class_jacobian(model, x)
    assert_unchanged(model, before)


@pytest.mark.parametrize("make", [vit, resnet], ids=["vit", "resnet"])
def test_image_classifiers_passed_directly_match_jacrev_and_captum(make):
    model, x = make()
    model.eval()
    before = snapshot(model)
    r = evaluate(model, x)  # an ImageClassifierOutput: read through .logits
    assert r.values.shape == (x.shape[0], model.config.num_labels, *x.shape[1:])
    torch.testing.assert_close(r.values, jacrev(logits_of(model), x), atol=1e-5, rtol=1e-4)
    sal = Saliency(logits_of(model))
    for k in range(0, model.config.num_labels, 5):
        ref = sal.attribute(x.clone(), target=k, abs=False)
        torch.testing.assert_close(r.values[:, k], ref, atol=1e-5, rtol=1e-4)
    again = evaluate(model, x)
    torch.testing.assert_close(again.values, r.values, atol=1e-5, rtol=1e-4)
    assert_unchanged(model, before)


def test_resnet_uses_its_head_and_stays_exact():
    model, x = resnet()
    model.eval()
    r = evaluate(model, x)
    assert r.strategy == "head"  # 16 features into 40 classes
    torch.testing.assert_close(r.values, jacrev(logits_of(model), x), atol=1e-5, rtol=1e-4)


def test_bert_through_inputs_embeds():
    model, ids = bert()
    before = snapshot(model)
    embeds = model.bert.embeddings.word_embeddings(ids).detach()
    mask = torch.ones_like(ids)
    f = lambda e, attention_mask: model(inputs_embeds=e, attention_mask=attention_mask)  # noqa: E731
    with pytest.raises(GuardError, match="dropout"):
        saliency.class_jacobian(f, embeds, attention_mask=mask)
    assert_unchanged(model, before)
    model.eval()
    J = saliency.class_jacobian(f, embeds, attention_mask=mask)
    ref = jacrev(lambda e: model(inputs_embeds=e).logits, embeds)
    torch.testing.assert_close(J, ref, atol=1e-5, rtol=1e-4)


def test_bert_layer_integrated_gradients_on_token_ids_equal_captum():
    model, ids = bert()
    model.eval()
    layer = model.bert.embeddings.word_embeddings
    a = saliency.integrated_gradients(model, ids, layer=layer, baseline=0, steps=20)
    assert a.values.shape == (3, 3, 7, 16)
    lig = LayerIntegratedGradients(logits_of(model), layer)
    for k in range(3):
        ref = lig.attribute(ids, baselines=torch.zeros_like(ids), target=k, n_steps=20)
        torch.testing.assert_close(a.values[:, k], ref, atol=1e-5, rtol=1e-4)


def test_fused_attention_without_a_forward_mode_rule_is_explained():
    model, ids = bert("sdpa")
    model.eval()
    embeds = model.bert.embeddings.word_embeddings(ids).detach()
    f = lambda e: model(inputs_embeds=e)  # noqa: E731
    try:
        saliency.class_jacobian(f, embeds, strategy="forward")
    except RuntimeError as e:
        assert "attn_implementation='eager'" in str(e)
    eager, _ = bert("eager")
    eager.eval()
    J = saliency.class_jacobian(lambda e: eager(inputs_embeds=e), embeds, strategy="forward")
    ref = jacrev(lambda e: eager(inputs_embeds=e).logits, embeds)
    torch.testing.assert_close(J, ref, atol=1e-5, rtol=1e-4)


def test_gradcam_on_a_resnet_equals_captum():
    model, x = resnet()
    model.eval()
    layer = model.resnet.encoder.stages[1]
    a = saliency.gradcam(model, x, [0, 7, 39], layer=layer, mode="nearest")
    cam = LayerGradCam(logits_of(model), layer)
    for j, k in enumerate([0, 7, 39]):
        ref = LayerAttribution.interpolate(
            cam.attribute(x, target=k, relu_attributions=True), (32, 32), interpolate_mode="nearest"
        )
        torch.testing.assert_close(a.values[:, j], ref[:, 0], atol=1e-5, rtol=1e-4)
