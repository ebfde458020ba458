"""explain_generation against Inseq per generation step and Captum's LLMGradientAttribution, on
GPT-2, Llama and T5 built from small configs with a locally built tokenizer, plus padding,
streaming under a budget, the caller's state, bad input and the result type."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import saliency
from saliency.generation import GenerationAttribution, contrast, merge

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning",
)

V = 60
PAD, UNK, EOS, BOS = 0, 1, 2, 3


def tokenizer(encoder_decoder: bool = False):
    """A word-level tokenizer over 'w4' ... 'w59', built locally (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": PAD, "<unk>": UNK, "<eos>": EOS, "<bos>": BOS}
    vocab.update({f"w{i}": i for i in range(4, V)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if encoder_decoder:  # sources end with <eos>, as T5's do
        tok.post_processor = processors.TemplateProcessing(
            single="$A <eos>", special_tokens=[("<eos>", EOS)]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
        bos_token="<bos>",
    )  # fmt: skip


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=BOS,
        eos_token_id=EOS, pad_token_id=PAD, attn_implementation="eager",
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, attn_implementation="eager",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
        num_heads=2, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(cfg).eval()


CAUSAL = {"gpt2": gpt2, "llama": llama}


def ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, V, (b, t), generator=g)


def text(row: torch.Tensor) -> str:
    return " ".join(f"w{int(i)}" for i in row)


def embedded_loop(lm, context, mask, steps, tokens, score="probability", alt=None):
    """The plainest oracle: for each step, one forward on its own prefix through
    ``inputs_embeds`` and one autograd.grad. ``[T_out, T_ctx, E]`` for one sample."""
    emb = lm.get_input_embeddings()
    rows = []
    for position, token, other in zip(steps, tokens, alt or [None] * len(steps), strict=True):
        n = position + 1
        e = emb(context[None, :n]).detach().requires_grad_()
        m = mask[None, :n]
        logits = lm(inputs_embeds=e, attention_mask=m, position_ids=(m.cumsum(1) - 1).clamp_min(0))
        z = logits.logits[0, -1]
        pick = {"probability": z.softmax(-1), "log_probability": z.log_softmax(-1), "logit": z}
        f = pick[score][token] - (0 if other is None else pick[score][other])
        (g,) = torch.autograd.grad(f, e)
        full = torch.zeros(len(context), e.shape[-1])
        full[:n] = g[0]
        rows.append(full)
    return torch.stack(rows)


def inseq_model(model, method, encoder_decoder=False):
    inseq = pytest.importorskip("inseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inseq.load_model(model, method, tokenizer=tokenizer(encoder_decoder))


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal on every entry ``want`` defines (Inseq puts NaN where a step cannot see), to 1e-5
    relative to the largest value, and zero where it does not."""
    defined = ~torch.isnan(want)
    scale = float(want[defined].abs().max())
    torch.testing.assert_close(got[defined], want[defined], rtol=1e-5, atol=1e-5 * scale)
    assert bool((got[~defined] == 0).all())


# -- Inseq, per step -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_equals_inseq_per_step_for_gradients_x_input_and_ig(name):
    lm = CAUSAL[name]()
    prompt = ids(1, 5)
    continuation = ids(1, 6, seed=2)
    full = text(torch.cat([prompt, continuation], 1)[0])
    cases = [
        ("saliency", "gradients", {}, {}),
        ("input_x_gradient", "x_input", {}, {}),
        (
            "integrated_gradients", "integrated_gradients", {"n_steps": 7},
            {"steps": 7, "rule": "gausslegendre", "baseline": UNK},
        ),
    ]  # fmt: skip
    for theirs, ours, inseq_args, options in cases:
        out = inseq_model(lm, theirs).attribute(
            text(prompt[0]), generated_texts=full, show_progress=False, **inseq_args
        )
        seq = out.sequence_attributions[0]
        assert [t.id for t in seq.target] == torch.cat([prompt, continuation], 1)[0].tolist()
        want = seq.target_attributions.permute(1, 0, 2)  # [T_out, T_ctx, E]
        a = saliency.explain_generation(
            lm, prompt, generated=continuation, method=ours, keep_values=True, **options
        )
        got = a.values[0].abs() if ours == "gradients" else a.values[0]
        close(got, want)
        reduced = got.norm(dim=-1) if a.params["reduce"] == "norm" else got.sum(-1)
        torch.testing.assert_close(a.scores[0], reduced.abs() if ours == "gradients" else reduced)


def test_equals_inseq_with_greedy_generation():
    lm = gpt2()
    prompt = ids(1, 4, seed=3)
    out = inseq_model(lm, "saliency").attribute(
        text(prompt[0]), generation_args={"max_new_tokens": 5, "do_sample": False},
        show_progress=False,
    )  # fmt: skip
    seq = out.sequence_attributions[0]
    a = saliency.explain_generation(lm, prompt, max_new_tokens=5, keep_values=True)
    assert a.ids[0].tolist() == [t.id for t in seq.target]
    assert a.params["greedy"] is True
    close(a.values[0].abs(), seq.target_attributions.permute(1, 0, 2))
    # The probability of each generated token given its prefix, as Inseq's step function.
    with torch.no_grad():
        probs = [
            lm(a.ids[:, : 4 + t]).logits[0, -1].softmax(-1)[a.generated[0, t]] for t in range(5)
        ]
    torch.testing.assert_close(a.step_scores["probability"][0], torch.stack(probs))


def test_equals_inseq_on_an_encoder_decoder_source_and_target():
    model = t5()
    tok = tokenizer(encoder_decoder=True)
    source = "w5 w9 w7 w8"
    src = tok(source, return_tensors="pt").input_ids
    out = inseq_model(model, "input_x_gradient", encoder_decoder=True).attribute(
        source, generation_args={"max_new_tokens": 4, "do_sample": False},
        attribute_target=True, show_progress=False,
    )  # fmt: skip
    seq = out.sequence_attributions[0]
    target = torch.tensor([[t.id for t in seq.target][1:]])  # after the decoder's start token
    a = saliency.explain_generation(
        model, src, generated=target, method="x_input", keep_values=True, tokenizer=tok
    )
    assert a.source_ids[0].tolist() == [t.id for t in seq.source]
    assert a.ids[0].tolist() == [t.id for t in seq.target]
    close(a.source_values[0].transpose(0, 1), seq.source_attributions)
    close(a.values[0], seq.target_attributions.permute(1, 0, 2))
    assert a.tokens[0][0] == "<pad>" and a.source_tokens[0][-1] == "<eos>"


# -- Captum's LLMGradientAttribution ----------------------------------------------------------


def test_equals_captum_llm_gradient_attribution_on_the_prompt():
    from captum.attr import (
        LayerGradientXActivation,
        LayerIntegratedGradients,
        LLMGradientAttribution,
        TextTokenInput,
    )

    lm = gpt2()
    tok = tokenizer()
    prompt, continuation = ids(1, 5, seed=4), ids(1, 4, seed=5)
    emb = lm.get_input_embeddings()
    inp = TextTokenInput(text(prompt[0]), tok)
    # Captum attributes the log probability of each token to the prompt's tokens only, summed
    # over the embedding.
    gxa = LLMGradientAttribution(LayerGradientXActivation(lm, emb), tok)
    want = gxa.attribute(inp, target=continuation[0]).token_attr
    a = saliency.explain_generation(
        lm, prompt, generated=continuation, method="x_input", target="log_probability"
    )
    torch.testing.assert_close(a.scores[0, :, :5], want, rtol=1e-5, atol=1e-6)

    # IG with Captum's baseline: pad ids in the prompt, the generated tokens themselves after it.
    lig = LLMGradientAttribution(LayerIntegratedGradients(lm, emb), tok)
    want = lig.attribute(inp, target=continuation[0], n_steps=9).token_attr
    baseline = torch.cat([torch.zeros_like(prompt), continuation], 1)
    a = saliency.explain_generation(
        lm, prompt, generated=continuation, method="integrated_gradients",
        target="log_probability", steps=9, baseline=baseline,
    )  # fmt: skip
    torch.testing.assert_close(a.scores[0, :, :5], want, rtol=1e-5, atol=1e-6)
    assert bool((a.scores[0, :, 5:] == 0).all())  # the generated tokens did not move


# -- targets, methods -------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["probability", "log_probability", "logit"])
def test_targets_against_a_loop_over_steps(score):
    lm = llama()
    prompt, continuation = ids(2, 4, seed=6), ids(2, 3, seed=7)
    alt = torch.tensor([9, 10, 11])
    for target in (score, contrast(alt, score)):
        a = saliency.explain_generation(
            lm, prompt, generated=continuation, target=target, keep_values=True
        )
        for b in range(2):
            context = torch.cat([prompt[b], continuation[b]])
            want = embedded_loop(
                lm, context, torch.ones_like(context), [3, 4, 5], continuation[b].tolist(), score,
                None if isinstance(target, str) else alt.tolist(),
            )  # fmt: skip
            torch.testing.assert_close(a.values[b], want, rtol=1e-5, atol=1e-7)
    assert a.params["target"] == {"contrast": score, "alternatives": [9, 10, 11]}


def test_ig_completeness_and_one_path_for_every_step():
    lm = gpt2()
    prompt, continuation = ids(2, 4, seed=8), ids(2, 5, seed=9)
    a = saliency.explain_generation(
        lm, prompt, generated=continuation, method="integrated_gradients", steps="auto", tol=1e-3
    )
    # Completeness per step: the step's scores add up to F(x) - F(baseline); "auto" refines
    # every step's row until its gap is within tol.
    assert a.delta.shape == (2, 5)
    gap = a.scores.sum(-1) - a.delta
    assert bool((a.delta.abs() <= 1e-3 * gap.abs().clamp_min(1e-3 * 1)).all())
    assert len(a.params["steps_used"]) == 2 and len(a.params["steps_used"][0]) == 5


def test_smoothgrad_is_one_noise_draw_per_copy_of_the_whole_context():
    lm = gpt2()
    prompt, continuation = ids(1, 4, seed=10), ids(1, 4, seed=11)
    n, noise = 3, 0.1
    a = saliency.explain_generation(
        lm, prompt, generated=continuation, method="smoothgrad", n_samples=n, noise=noise,
        seed=5, keep_values=True,
    )  # fmt: skip
    context = torch.cat([prompt, continuation], 1)
    e = lm.get_input_embeddings()(context).detach()
    std = noise * (e.max() - e.min())
    g = torch.Generator().manual_seed(5)
    draws = [torch.randn(e.shape, generator=g) * std for _ in range(n)]
    want = torch.zeros(4, 8, 16)
    for d in draws:
        for t in range(4):
            p = 3 + t
            x = (e + d)[:, : p + 1].clone().requires_grad_()
            f = lm(inputs_embeds=x).logits[0, -1].softmax(-1)[continuation[0, t]]
            (grad,) = torch.autograd.grad(f, x)
            want[t, : p + 1] += grad[0] / n
    torch.testing.assert_close(a.values[0], want, rtol=1e-4, atol=1e-7)
    assert a.params["seed"] == 5


def test_smoothgrads_noise_scale_ignores_padding():
    # The noise is relative to the range of the real tokens' embeddings: what fills the padding
    # (its id, a huge pad embedding) must change nothing.
    lm = gpt2()
    with torch.no_grad():
        lm.get_input_embeddings().weight[PAD] *= 20
    prompt, continuation = ids(1, 3, seed=30), ids(1, 3, seed=31)
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    runs = []
    for pad in (PAD, 5):
        padded = torch.cat([torch.full((1, 2), pad), prompt], 1)
        options = dict(method="smoothgrad", n_samples=4, seed=2)
        a = saliency.explain_generation(
            lm, padded, attention_mask=mask, generated=continuation, **options
        )
        runs.append(a)
    torch.testing.assert_close(runs[0].scores, runs[1].scores, rtol=1e-5, atol=1e-9)
    e = lm.get_input_embeddings()(torch.cat([prompt, continuation], 1)).detach()
    want = 0.15 * float(e.max() - e.min())
    assert runs[0].params["noise_std"] == pytest.approx([want], rel=1e-5)
    assert runs[0].params.get("noise") is None  # what the caller gave: nothing
    # A contrastive target reads its alternatives in the same pass.
    why = saliency.explain_generation(
        lm, prompt, generated=continuation, method="smoothgrad", n_samples=2, seed=2,
        target=contrast(1),
    )  # fmt: skip
    assert why.scores.shape == (1, 3, 6) and bool(torch.isfinite(why.scores).all())


# -- padding, batches, streaming ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_padding_anywhere_equals_each_prompt_alone(name):
    lm = CAUSAL[name]()
    lengths = [5, 3, 4]
    prompts = [ids(1, n, seed=20 + n)[0] for n in lengths]
    continuation = ids(3, 4, seed=12)
    alone = [
        saliency.explain_generation(
            lm, p[None], generated=continuation[b : b + 1], method="x_input"
        )
        for b, p in enumerate(prompts)
    ]
    for side in ("left", "right"):
        batch = torch.full((3, 5), PAD)
        mask = torch.zeros(3, 5, dtype=torch.long)
        for b, p in enumerate(prompts):
            cols = slice(5 - len(p), 5) if side == "left" else slice(0, len(p))
            batch[b, cols], mask[b, cols] = p, 1
        a = saliency.explain_generation(
            lm, batch, attention_mask=mask, generated=continuation, method="x_input"
        )
        for b, one in enumerate(alone):
            real = torch.cat([mask[b], torch.ones(4, dtype=torch.long)]).bool()
            torch.testing.assert_close(a.scores[b][:, real], one.scores[0], rtol=1e-4, atol=1e-7)
            assert bool((a.scores[b][:, ~real] == 0).all())  # padding is never scored
            torch.testing.assert_close(a.step_scores["probability"][b], one.step_scores[
                "probability"][0])  # fmt: skip


def test_greedy_generation_of_a_batch_stops_at_the_end_token():
    lm = gpt2()
    prompt = ids(2, 3, seed=13)
    a = saliency.explain_generation(lm, prompt, max_new_tokens=6, eos_token_id=[7, 8, 9, 10])
    free = saliency.explain_generation(lm, prompt, max_new_tokens=6, eos_token_id=[])
    for b in range(2):
        row = free.generated[b].tolist()
        ended = [i for i, t in enumerate(row) if t in (7, 8, 9, 10)]
        n = ended[0] + 1 if ended else 6
        assert a.generated[b, :n].tolist() == row[:n]
        assert a.real_steps[b].tolist() == [True] * n + [False] * (a.generated.shape[1] - n)
        assert bool((a.scores[b, n:] == 0).all())


def test_a_results_generated_ids_passed_back_are_explained_as_generated():
    # A finished row is filled after its end token; forcing those ids must not explain the fill.
    lm, _ = saliency.models.load("reverse")
    prompts, _ = saliency.models.held_out("reverse", n=4)
    mask = (prompts != 0).long()
    a = saliency.explain_generation(lm, prompts, attention_mask=mask, max_new_tokens=12)
    assert not bool(a.real_steps.all())  # the bundled model stops before 12 letters
    again = saliency.explain_generation(lm, prompts, attention_mask=mask, generated=a.generated)
    assert again.real_steps.tolist() == a.real_steps.tolist()
    torch.testing.assert_close(again.scores, a.scores, rtol=1e-5, atol=1e-9)
    whole = saliency.explain_generation(
        lm, prompts, attention_mask=mask, generated=a.generated, eos_token_id=[]
    )
    assert bool(whole.real_steps.all())


def test_continuations_of_different_lengths():
    lm = llama()
    prompt = ids(2, 3, seed=14)
    a = saliency.explain_generation(lm, prompt, generated=[[5, 6, 7], [8]])
    assert a.generated.shape == (2, 3)
    assert a.real_steps.tolist() == [[True, True, True], [True, False, False]]
    one = saliency.explain_generation(lm, prompt[1:], generated=torch.tensor([[8]]))
    torch.testing.assert_close(a.scores[1, 0, :4], one.scores[0, 0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("gradients", {}),
        ("integrated_gradients", {"steps": 4}),
        ("smoothgrad", {"n_samples": 3, "seed": 1}),
    ],
)
def test_a_budget_that_forces_streaming_gives_the_same_result(method, options):
    lm = gpt2()
    prompt, continuation = ids(2, 6, seed=15), ids(2, 12, seed=16)
    whole = saliency.explain_generation(
        lm, prompt, generated=continuation, method=method, **options
    )
    # A budget for about one sample at a time: the engine splits the rows of every chunk.
    small = saliency.explain_generation(
        lm, prompt, generated=continuation, method=method, max_memory="800KB", **options
    )
    torch.testing.assert_close(small.scores, whole.scores, rtol=1e-5, atol=1e-8)
    with pytest.raises(MemoryError, match=r"max_memory=2000: .* need"):
        saliency.explain_generation(
            lm, prompt, generated=continuation, method=method, max_memory=2000, **options
        )


def test_a_budget_splits_steps_when_their_values_would_not_fit():
    from saliency.generation import _context, _plan

    prompt, continuation = ids(2, 10), ids(2, 30, seed=2)
    mask = torch.ones_like(prompt)
    ctx = _context.build("decoder", prompt, mask, continuation, torch.ones_like(continuation) > 0,
                         None)  # fmt: skip
    budget = 4 * 2 * 39 * 512 * 4 * 3  # three steps' values [B, L, E] in a quarter
    free = _plan.chunks(ctx, "gradients", {}, None, 512, torch.float32, 0, "decoder")
    tight = _plan.chunks(ctx, "gradients", {}, budget, 512, torch.float32, 0, "decoder")
    assert len(tight) > len(free)
    assert all((s1 - s0) * 2 * length * 512 * 4 <= budget / 4 for s0, s1, length in tight)
    for plan in (free, tight):  # every step once, in order, each chunk on its own prefix
        assert [s for s0, s1, _ in plan for s in range(s0, s1)] == list(range(30))
        assert all(length == 10 + s1 - 1 for _, s1, length in plan)
    ig = _plan.chunks(ctx, "integrated_gradients", {}, budget, 512, torch.float32, 0, "decoder")
    assert max(s1 - s0 for s0, s1, _ in ig) < max(s1 - s0 for s0, s1, _ in tight)
    whole = _plan.chunks(ctx, "smoothgrad", {}, None, 512, torch.float32, 0, "decoder")
    assert {length for _, _, length in whole} == {40}  # one noise draw over the whole context


def test_chunks_run_on_the_prefix_they_need():
    lm = gpt2()
    prompt, continuation = ids(1, 10, seed=17), ids(1, 40, seed=18)
    a = saliency.explain_generation(lm, prompt, generated=continuation)
    chunks = a.params["chunks"]
    assert len(chunks) > 1 and chunks[0][0] == 0 and chunks[-1][1] == 40
    for (_, s1, length), (n0, _, _) in zip(chunks, [*chunks[1:], [40, 0, 0]], strict=True):
        assert s1 == n0 and length == 10 + s1 - 1  # the column predicting the chunk's last step


# -- the caller's things, bad input -------------------------------------------------------------


def test_the_callers_model_and_tensors_are_untouched():
    lm = gpt2().train()  # training mode with dropout: refused, and left in training mode
    prompt, continuation = ids(1, 4, seed=19), ids(1, 3, seed=20)
    with pytest.raises(ValueError, match=r"dropout|random|eval"):
        saliency.explain_generation(lm, prompt, generated=continuation)
    assert lm.training
    lm.eval()
    lm.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)
    grads = {n: p.requires_grad for n, p in lm.named_parameters()}
    state = {k: v.clone() for k, v in lm.state_dict().items()}
    before = prompt.clone(), continuation.clone()
    with torch.no_grad():  # the caller's no_grad does not stop it
        saliency.explain_generation(lm, prompt, generated=continuation, method="x_input")
    assert not lm.training
    assert {n: p.requires_grad for n, p in lm.named_parameters()} == grads
    assert all(torch.equal(v, state[k]) for k, v in lm.state_dict().items())
    assert torch.equal(prompt, before[0]) and torch.equal(continuation, before[1])
    assert all(p.grad is None for p in lm.parameters())


def test_bad_input_gets_clear_errors():
    lm = gpt2()
    prompt = ids(2, 4)
    with pytest.raises(ValueError, match=r"input_ids: token ids must lie in \[0, 60\)"):
        saliency.explain_generation(lm, prompt + 100, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"generated: token ids must lie in \[0, 60\)"):
        saliency.explain_generation(lm, prompt, generated=torch.full((2, 2), 60))
    with pytest.raises(ValueError, match=r"generated: expected one row per prompt \(2\), got 3"):
        saliency.explain_generation(lm, prompt, generated=ids(3, 2))
    with pytest.raises(ValueError, match=r"generated: expected one continuation per prompt"):
        saliency.explain_generation(lm, prompt, generated=[[5]])
    with pytest.raises(ValueError, match="max_new_tokens: expected a positive int"):
        saliency.explain_generation(lm, prompt)
    with pytest.raises(ValueError, match="max_new_tokens: only used to generate"):
        saliency.explain_generation(lm, prompt, generated=ids(2, 2), max_new_tokens=2)
    with pytest.raises(TypeError, match="input_ids: expected integer token ids"):
        saliency.explain_generation(lm, prompt.float(), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids: expected token ids \[B, T\]"):
        saliency.explain_generation(lm, prompt[0], max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask: rows \\[1\\] have no real token"):
        mask = torch.ones(2, 4, dtype=torch.long)
        mask[1] = 0
        saliency.explain_generation(lm, prompt, attention_mask=mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="method: expected one of"):
        saliency.explain_generation(lm, prompt, max_new_tokens=2, method="lime")
    with pytest.raises(TypeError, match="n_samples: not an option of method='gradients'"):
        saliency.explain_generation(lm, prompt, max_new_tokens=2, n_samples=4)
    with pytest.raises(ValueError, match="target: expected one of"):
        saliency.explain_generation(lm, prompt, max_new_tokens=2, target="prob")
    with pytest.raises(ValueError, match="reduce: expected one of"):
        saliency.explain_generation(lm, prompt, max_new_tokens=2, reduce="max")
    with pytest.raises(ValueError, match="target: the contrast's alternatives have shape"):
        saliency.explain_generation(lm, prompt, generated=ids(2, 2), target=contrast([1, 2, 3]))
    with pytest.raises(ValueError, match="baseline: expected ids"):
        saliency.explain_generation(
            lm, prompt, generated=ids(2, 2), method="integrated_gradients",
            baseline=torch.zeros(2, 3, dtype=torch.long),
        )  # fmt: skip
    with pytest.raises(ValueError, match="layer: an encoder-decoder"):
        saliency.explain_generation(t5(), prompt, max_new_tokens=2, layer="shared")
    with pytest.raises(TypeError, match=r"generated: expected integer token ids, got .*float"):
        saliency.explain_generation(lm, prompt, generated=[[5.7, 6.2], [7]])
    for bad in ("x", [1, "2"], 2.0):
        with pytest.raises(TypeError, match="eos_token_id: expected a token id"):
            saliency.explain_generation(lm, prompt, max_new_tokens=2, eos_token_id=bad)
    with pytest.raises(ValueError, match="tokenizer: a vocabulary of 3 strings has none for id"):
        saliency.explain_generation(lm, prompt, generated=ids(2, 2), tokenizer=["a", "b", "c"])
    # numpy ids are ids
    a = saliency.explain_generation(lm, prompt, generated=ids(2, 2), eos_token_id=np.int64(7))
    assert a.generated.shape == (2, 2)


def test_models_that_cannot_generate_are_refused_by_name():
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="model: GPT2Model cannot generate text"):
        saliency.explain_generation(transformers.GPT2Model(cfg).eval(), ids(1, 3), max_new_tokens=2)
    bert = transformers.BertConfig(
        vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16,
    )  # fmt: skip
    with pytest.raises(ValueError, match="encoder-only"):
        saliency.explain_generation(
            transformers.BertForMaskedLM(bert).eval(), ids(1, 3), generated=ids(1, 2)
        )

    class Bidirectional(torch.nn.Module):  # a plain module: caught by what it does
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, 8)
            self.head = torch.nn.Linear(8, V)

        def get_input_embeddings(self):
            return self.embedding

        def forward(self, input_ids, attention_mask=None):
            h = self.embedding(input_ids)
            return self.head(h + h.mean(1, keepdim=True))

    with pytest.raises(ValueError, match="model: Bidirectional is not causal"):
        saliency.explain_generation(Bidirectional(), ids(1, 3), generated=ids(1, 2))

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, 8)

        def get_input_embeddings(self):
            return self.embedding

        def forward(self, input_ids):
            return self.embedding(input_ids).sum(1)

    with pytest.raises(ValueError, match=r"model: expected language-model logits \[B, T, V\]"):
        saliency.explain_generation(Classifier(), ids(1, 3), generated=ids(1, 2))


# -- the result ---------------------------------------------------------------------------------


def test_result_selects_saves_loads_and_merges(tmp_path):
    lm = gpt2()
    tok = tokenizer()
    prompt, continuation = ids(3, 4, seed=21), ids(3, 3, seed=22)
    a = saliency.explain_generation(
        lm, prompt, generated=continuation, method="integrated_gradients", steps=3,
        keep_values=True, tokenizer=tok,
    )  # fmt: skip
    assert isinstance(a, GenerationAttribution) and len(a) == 3
    assert a.columns.tolist() == [4, 5, 6]
    assert a.tokens[0] == tok.convert_ids_to_tokens(a.ids[0].tolist())
    one = a[1]
    assert len(one) == 1 and torch.equal(one.scores[0], a.scores[1])
    assert one.tokens == a.tokens[1:2] and torch.equal(one.delta, a.delta[1:2])
    picked = a[torch.tensor([True, False, True])]
    assert torch.equal(picked.step_scores["target"], a.step_scores["target"][[0, 2]])
    path = tmp_path / "generation.safetensors"
    a.save(path)
    b = GenerationAttribution.load(path)
    for name in ("generated", "ids", "attention_mask", "scores", "values", "delta"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert b.params == a.params and b.tokens == a.tokens and b.method == a.method
    assert b.step_scores.keys() == a.step_scores.keys()
    assert [p.name for p in tmp_path.iterdir()] == ["generation.safetensors"]  # atomic
    (tmp_path / "other.safetensors").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"other\.safetensors"):
        GenerationAttribution.load(tmp_path / "other.safetensors")
    saliency.gradients(torch.nn.Linear(2, 2), torch.randn(1, 2)).save(tmp_path / "attr.st")
    with pytest.raises(ValueError, match="not a saved GenerationAttribution"):
        GenerationAttribution.load(tmp_path / "attr.st")

    # Words and spans: sums of scores over the context's columns.
    spans = merge(a, [(0, 2), (2, 4), (4, 7)])
    assert spans.scores.shape == (3, 3, 3)
    torch.testing.assert_close(spans.scores[..., 1], a.scores[..., 2:4].sum(-1))
    words = a.merge([[0, 0, 1, None, 2, 2, 3]] * 3)
    torch.testing.assert_close(words.scores[..., 0], a.scores[..., :2].sum(-1))
    assert words.scores.shape == (3, 3, 4) and words.labels[0][0] == "".join(a.tokens[0][:2])
    with pytest.raises(ValueError, match="spans: range \\(5, 9\\)"):
        merge(a, [(5, 9)])
    # "words" leave padding out and start a word after it.
    padded = GenerationAttribution(
        generated=torch.tensor([[9]]), ids=torch.tensor([[0, 4, 5, 0, 6, 9]]),
        attention_mask=torch.tensor([[0, 1, 1, 0, 1, 1]]),
        scores=torch.tensor([[[7.0, 0.1, 0.2, 7.0, 0.3, 0.0]]]),
        tokens=[["<pad>", "a", "b", "<pad>", "c", "Ġd"]],
    )  # fmt: skip
    words = padded.merge("words")
    assert words.labels == [["ab", "c", "Ġd"]] and words.groups == [[[1, 2], [4], [5]]]
    torch.testing.assert_close(words.scores, torch.tensor([[[0.1 + 0.2, 0.3, 0.0]]]))
    # Top sources: only columns a step sees (signed IG scores: an unseen 0 may beat them).
    cols = torch.arange(a.ids.shape[1])
    seen = (cols[None, None, :] < torch.tensor([4, 5, 6])[None, :, None]) & a.real_steps[..., None]
    assert torch.equal(a.visible, seen & a.attention_mask.bool()[:, None, :])
    top = a.top_sources(2)
    assert torch.equal(top[..., 0], torch.where(seen, a.scores, -torch.inf).argmax(-1))
    assert bool(seen.gather(2, top).all())
    assert a.top_sources(6)[:, 0, 4:].tolist() == [[-1, -1]] * 3  # step 0 sees 4 columns
    assert torch.equal(a[np.int64(1)].scores, a.scores[1:2])
    with pytest.raises(ValueError, match="k: expected a positive int"):
        a.top_sources(0)


def test_load_of_a_crafted_generation_file_names_the_file_and_what_is_wrong(tmp_path):
    from safetensors.torch import save

    a = saliency.explain_generation(gpt2(), ids(1, 3, seed=23), generated=ids(1, 2, seed=24))
    tensors = {k: getattr(a, k) for k in ("generated", "ids", "attention_mask", "scores")}
    meta = {"format": "saliency.GenerationAttribution", "method": "m", "params": "{}"}
    crafted = {
        "'method' missing": save(tensors, metadata={"format": meta["format"], "params": "{}"}),
        "Expecting property name": save(tensors, metadata={**meta, "params": "{oops"}),
        "scores": save({**tensors, "scores": a.scores[:, :1]}, metadata=meta),
        "ids": save({k: v for k, v in tensors.items() if k != "ids"}, metadata=meta),
        "SafetensorError.*incomplete": save(tensors, metadata=meta)[:-10],
        "SafetensorError.*too large": (10**15).to_bytes(8, "little") + b"{}",
    }
    path = tmp_path / "crafted.safetensors"
    for why, data in crafted.items():
        path.write_bytes(data)
        with pytest.raises(ValueError, match=why) as info:
            GenerationAttribution.load(path)
        prefix = f"path: {str(path)!r} cannot be read as a saved GenerationAttribution"
        assert str(info.value).startswith(prefix), str(info.value)
    with pytest.raises(FileNotFoundError, match=r"path: 'gone\.st' is not a file"):
        GenerationAttribution.load("gone.st")


def test_sources_padded_before_real_tokens_warn_where_positions_are_absolute():
    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=32, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=EOS,
    )  # fmt: skip
    bart = transformers.BartForConditionalGeneration(cfg).eval()
    src, gen = ids(2, 5, seed=32), ids(2, 2, seed=33)
    left = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    with pytest.warns(UserWarning, match=r"attention_mask: sources \[0\] have padding before"):
        saliency.explain_generation(bart, src, attention_mask=left, generated=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saliency.explain_generation(bart, src, attention_mask=left.flip(1), generated=gen)
        saliency.explain_generation(t5(), src, attention_mask=left, generated=gen)  # relative


@pytest.mark.parametrize("name", ["bart", "marian"])
def test_other_encoder_decoders_and_their_embedding_scales(name):
    common = dict(
        vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=32, scale_embedding=True, eos_token_id=EOS,
    )  # fmt: skip
    torch.manual_seed(0)
    if name == "bart":  # scales inside its embedding module
        cfg = transformers.BartConfig(**common, pad_token_id=1, decoder_start_token_id=EOS)
        model = transformers.BartForConditionalGeneration(cfg).eval()
    else:  # scales after the module: the encoder only for ids, the decoder always
        cfg = transformers.MarianConfig(**common, pad_token_id=PAD, decoder_start_token_id=PAD)
        model = transformers.MarianMTModel(cfg).eval()
    src = ids(2, 5, seed=30)
    a = saliency.explain_generation(
        model, src, generated=ids(2, 3, seed=31), method="x_input", keep_values=True
    )
    # Gradient x input by hand for step 1, from the ids: hooks on both embedding calls.
    embeds = []

    def keep(module, args, output):
        e = output.detach().requires_grad_()
        embeds.append(e)
        return e

    parts = (model.get_encoder(), model.get_decoder())
    modules = {id(p.embed_tokens): p.embed_tokens for p in parts}  # often one, shared
    handles = [m.register_forward_hook(keep) for m in modules.values()]
    out = model(input_ids=src, decoder_input_ids=a.ids[:, :2]).logits[:, -1].softmax(-1)
    for h in handles:
        h.remove()
    f = out.gather(1, a.generated[:, 1:2]).sum()
    grads = torch.autograd.grad(f, embeds)
    # The encoder's call comes first. Gradient x input is the same before or after a scale:
    # d/d(s e) . (s e) = d/de . e.
    by_hand = (grads[0] * embeds[0]).sum(-1)
    torch.testing.assert_close(a.source_scores[:, 1], by_hand, rtol=1e-4, atol=1e-6)
