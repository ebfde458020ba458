"""Grad-CAM on token activations and 1-D maps: HuggingFace vision transformers (ViT, DeiT, BEiT,
Dinov2 with and without registers, Swin), BERT and Wav2Vec2 built from small configs, against a
hand computation (gradient-weighted tokens folded to their grid) and Captum's LayerGradCam where
its channels-first reading applies."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch.nn import functional as F

import saliency
from saliency.engine import forget_strategy_choices

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients", "ignore::DeprecationWarning"
)

_VIT = dict(
    image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=32, num_labels=5,
)  # fmt: skip


def _blocks(model, suffix):
    return [m for m in model.modules() if type(m).__name__.endswith(suffix)]


def vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(**_VIT)), "ViTLayer", 1


def deit():
    model = transformers.DeiTForImageClassification(transformers.DeiTConfig(**_VIT))
    return model, "DeiTLayer", 2  # CLS and distillation tokens


def beit():
    return transformers.BeitForImageClassification(transformers.BeitConfig(**_VIT)), "BeitLayer", 1


def dinov2():
    model = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**_VIT))
    return model, "Dinov2Layer", 1


def dinov2_registers():
    cfg = transformers.Dinov2WithRegistersConfig(**_VIT, num_register_tokens=3)
    model = transformers.Dinov2WithRegistersForImageClassification(cfg)
    return model, "Dinov2WithRegistersLayer", 4  # CLS and 3 registers


def swin():
    cfg = transformers.SwinConfig(
        image_size=16, patch_size=2, num_channels=3, embed_dim=8, depths=[1, 1],
        num_heads=[1, 2], window_size=2, num_labels=5,
    )  # fmt: skip
    return transformers.SwinForImageClassification(cfg), "SwinLayer", 0


@pytest.fixture(autouse=True)
def _fresh():
    forget_strategy_choices()


def _image(seed=1, b=2, size=16):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _captured(model, x, layer, k):
    """The layer's output at ``x`` and the gradient of class ``k``'s logit with respect to it."""
    held = {}

    def hook(module, args, out):
        held["out"] = out[0] if isinstance(out, tuple) else out

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x).logits
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, k].sum(), held["out"])  # samples are independent
    return held["out"].detach(), grad


def hand_token_cam(model, x, layer, k, lead, grid, size, relu=True):
    acts, grad = _captured(model, x, layer, k)
    acts, grad = acts[:, lead:], grad[:, lead:]  # [B, h*w, E]
    weights = grad.mean(1, keepdim=True)  # one weight per hidden unit
    cam = (weights * acts).sum(-1).view(x.shape[0], 1, *grid)
    cam = cam.clamp(min=0) if relu else cam
    if size is not None and tuple(size) != tuple(grid):
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return cam[:, 0]


@pytest.mark.parametrize("make", [vit, deit, beit, dinov2, dinov2_registers, swin])
def test_vision_transformer_tokens_fold_to_their_grid(make):
    torch.manual_seed(0)
    model, block, lead = make()
    model.eval()
    x = _image()
    layer = _blocks(model, block)[-1]
    a = saliency.gradcam(model, x, [0, 3], layer=layer)
    assert a.values.shape == (2, 2, 16, 16)
    grid = a.params["tokens"]["grid"]
    assert a.params["tokens"]["leading"] == lead and a.params["mode"] == "bilinear"
    for j, k in enumerate([0, 3]):
        ref = hand_token_cam(model, x, layer, k, lead, grid, (16, 16))
        torch.testing.assert_close(a.values[:, j], ref, atol=1e-5, rtol=1e-4)
    at_grid = saliency.gradcam(model, x, [0, 3], layer=layer, size=None, relu=False)
    assert at_grid.values.shape == (2, 2, *grid)  # the grid, never [B, K, E] hidden units
    ref = hand_token_cam(model, x, layer, 3, lead, grid, None, relu=False)
    torch.testing.assert_close(at_grid.values[:, 1], ref, atol=1e-5, rtol=1e-4)


def test_vit_grid_and_leading_token_are_read_right():
    torch.manual_seed(0)
    model, block, _ = vit()
    model.eval()
    a = saliency.gradcam(model, _image(size=16), layer=_blocks(model, block)[0], size=None)
    assert a.params["tokens"] == {"leading": 1, "grid": [4, 4]}
    wide = saliency.gradcam(  # a wider image than the config's: the grid follows the input
        model, _image(size=16)[..., :12], layer=_blocks(model, block)[0], size=None,
        interpolate_pos_encoding=True,
    )  # fmt: skip
    assert wide.params["tokens"] == {"leading": 1, "grid": [4, 3]}


def test_swin_stages_fold_at_every_resolution():
    torch.manual_seed(0)
    model, _, _ = swin()
    model.eval()
    x = _image()
    grids = []
    for stage in _blocks(model, "SwinStage"):
        a = saliency.gradcam(model, x, [1], layer=stage, size=None)
        assert a.params["tokens"]["leading"] == 0
        grids.append(a.params["tokens"]["grid"])
    assert grids == [[4, 4], [4, 4]]  # stage 1 downsamples 8x8 to 4x4; the last stage keeps it
    first = _blocks(model, "SwinLayer")[0]
    a = saliency.gradcam(model, x, [1], layer=first, size=None)
    assert a.params["tokens"]["grid"] == [8, 8]
    ref = hand_token_cam(model, x, first, 1, 0, (8, 8), None)
    torch.testing.assert_close(a.values[:, 0], ref, atol=1e-5, rtol=1e-4)


class _Tokens(torch.nn.Module):
    """A hand-written vision transformer with no config: 2 leading tokens, 4x4 patches."""

    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.lead = torch.nn.Parameter(torch.randn(1, 2, 8))
        self.block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.lead.expand(x.shape[0], -1, -1), t], 1)
        return self.head(self.block(t).mean(1))


def test_a_model_without_config_is_read_from_the_token_count_and_reshape_matches():
    torch.manual_seed(0)
    model = _Tokens().eval()
    x = _image(size=20)  # a 5x5 grid of patches after 2 leading tokens
    a = saliency.gradcam(lambda t: model(t), x, layer=model.block, size=None)
    assert a.params["tokens"] == {"leading": 2, "grid": [5, 5]}

    def fold(t):
        return t[:, 2:].unflatten(1, (5, 5)).movedim(-1, 1)

    b = saliency.gradcam(model, x, layer=model.block, size=None, reshape=fold)
    torch.testing.assert_close(b.values, a.values)
    assert b.params["reshape"].endswith("fold") and "tokens" not in b.params


def test_token_errors_name_the_way_out():
    torch.manual_seed(0)
    model = _Tokens().eval()
    x = _image(size=20)
    with pytest.raises(ValueError, match="reshape: expected channels-first maps"):
        saliency.gradcam(model, x, layer=model.block, reshape=lambda t: t[:, 2:, 0])

    calls = []

    def drifting(t):  # folds the gradients to another grid than the activations
        calls.append(len(t))
        folded = t[:, 2:].unflatten(1, (5, 5)).movedim(-1, 1)
        return folded if len(calls) == 1 else folded[..., :4]

    with pytest.raises(ValueError, match="same way for every row"):
        saliency.gradcam(model, x, layer=model.block, reshape=drifting)
    with pytest.raises(TypeError, match="reshape: expected a callable"):
        saliency.gradcam(model, x, layer=model.block, reshape="fold")
    odd = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(400, 7), torch.nn.Flatten())
    seq = torch.nn.Sequential(
        odd, torch.nn.Unflatten(1, (3, 7)), torch.nn.Flatten(), torch.nn.Linear(21, 2)
    )
    # a [B, 3, 7] output of an image: no grid holds 3 or 7 tokens plus fewer leading ones
    with pytest.raises(ValueError, match=r"does not fold into a grid.*reshape="):
        saliency.gradcam(seq, x, layer=seq[1])


def test_bert_tokens_give_one_value_per_token():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 40, (3, 7))
    layer = _blocks(model, "BertLayer")[-1]
    a = saliency.gradcam(model, ids, layer=layer, relu=False)
    assert a.values.shape == (3, 3, 7)  # positions of the text, not hidden units
    assert a.params["tokens"] == {"leading": 0, "sequence": 7}
    for k in range(3):
        acts, grad = _captured(model, ids, layer, k)
        ref = (grad.mean(1, keepdim=True) * acts).sum(-1)
        torch.testing.assert_close(a.values[:, k], ref, atol=1e-5, rtol=1e-4)


def wav2vec2():
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(
        vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, num_labels=3,
        feat_extract_norm="layer",
    )  # fmt: skip
    return transformers.Wav2Vec2ForSequenceClassification(cfg).eval(), torch.randn(2, 400)


def test_wav2vec2_feature_encoder_is_1d_gradcam_equal_to_captum():
    model, x = wav2vec2()
    layer = model.wav2vec2.feature_extractor.conv_layers[1]  # [B, 8, 39], channels first
    a = saliency.gradcam(model, x, layer=layer)
    assert a.values.shape == (2, 3, 400) and a.params["mode"] == "linear"
    assert a.params["tokens"] is None
    cam = LayerGradCam(lambda t: model(t).logits, layer)
    for k in range(3):
        ref = cam.attribute(x, target=k, relu_attributions=True)
        ref = LayerAttribution.interpolate(ref, (400,), interpolate_mode="linear")
        torch.testing.assert_close(a.values[:, k], ref[:, 0], atol=1e-5, rtol=1e-4)


def test_wav2vec2_transformer_frames_are_tokens():
    model, x = wav2vec2()
    layer = model.wav2vec2.encoder.layers[0]  # [B, 39, 16], channels last
    a = saliency.gradcam(model, x, [2], layer=layer, size=None)
    assert a.values.shape == (2, 1, 39)
    acts, grad = _captured(model, x, layer, 2)
    ref = ((grad.mean(1, keepdim=True) * acts).sum(-1)).clamp(min=0)
    torch.testing.assert_close(a.values[:, 0], ref, atol=1e-5, rtol=1e-4)


def conv1d_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv1d(2, 6, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv1d(6, 4, 3),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_conv1d_gradcam_equals_captum_at_the_input_length(mode):
    model = conv1d_net()
    x = torch.randn(3, 2, 30)
    a = saliency.gradcam(model, x, layer=model[2], mode=mode)
    assert a.values.shape == (3, 3, 30)
    cam = LayerGradCam(model, model[2])
    for k in range(3):
        ref = LayerAttribution.interpolate(
            cam.attribute(x, target=k, relu_attributions=True), (30,), interpolate_mode=mode
        )
        torch.testing.assert_close(a.values[:, k], ref[:, 0], atol=1e-5, rtol=1e-4)
    flat = torch.nn.Sequential(torch.nn.Unflatten(1, (2, 30)), *model)  # a [B, T] input
    b = saliency.gradcam(flat, x.flatten(1), layer=flat[3], size=(60,), mode=mode)
    assert b.values.shape == (3, 3, 60)


def test_1d_layouts_and_modes_are_checked():
    model = conv1d_net()
    x = torch.randn(3, 2, 30)
    with pytest.raises(ValueError, match=r"mode: 'bilinear' interpolates 2-D maps.*'linear'"):
        saliency.gradcam(model, x, layer=model[2], mode="bilinear")
    with pytest.raises(ValueError, match="size: expected 1 positive ints"):
        saliency.gradcam(model, x, layer=model[2], size=(30, 30))
    # A ReLU after a downsampling convolution: neither its make-up nor its sizes say which way
    # its [B, 6, 13] output reads, so Grad-CAM asks instead of guessing.
    with pytest.raises(ValueError, match=r"channels first.*tokens.*reshape="):
        saliency.gradcam(model, x, layer=model[1])
    a = saliency.gradcam(model, x, layer=model[1], reshape=lambda t: t)
    b = saliency.gradcam(model, x, layer=model[0])
    torch.testing.assert_close(a.values.clamp(min=0), a.values)
    assert a.values.shape == b.values.shape == (3, 3, 30)
    with pytest.raises(ValueError, match="mode: expected None or one of"):
        saliency.gradcam(model, x, layer=model[2], mode="cubic")
