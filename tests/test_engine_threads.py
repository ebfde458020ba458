"""State confined to the call and its thread: four threads share one model, mixing ``layer=``
calls, plain calls, the ``head`` strategy and the caller's own training step; every result equals
its single-thread oracle, and no call sees another's hooks."""

from __future__ import annotations

import copy
import threading

import torch
from torch import nn

import saliency

CALLS = 300


def test_four_threads_sharing_one_model_each_get_their_own_results():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5)
    )
    model.eval()
    xs = [torch.randn(4, 6) for _ in range(4)]
    layer = model[1]
    # Single-thread oracles, computed before any thread starts.
    plain = [torch.func.vmap(torch.func.jacrev(model))(x) for x in xs]
    tail = model[2:]
    at_layer = [torch.func.vmap(torch.func.jacrev(tail))(model[:2](x)) for x in xs]
    ig = [saliency.integrated_gradients(model, x, layer=layer, steps=4).values for x in xs]
    twin = copy.deepcopy(model)  # the training step's oracle: the same step, alone
    target = torch.randn(4, 5)
    loss = ((twin(xs[3]) - target) ** 2).sum()
    step_grads = torch.autograd.grad(loss, list(twin.parameters()))

    failures: list[str] = []

    def worker(kind: int) -> None:
        x = xs[kind]
        try:
            for i in range(CALLS):
                if kind == 0:  # layer= through a method (path points, several engine calls)
                    got = saliency.integrated_gradients(model, x, layer=layer, steps=4).values
                    want = ig[0]
                elif kind == 1:  # plain calls, every strategy by turns
                    strategy = ("loop", "vmap", "auto")[i % 3]
                    got, want = saliency.class_jacobian(model, x, strategy=strategy), plain[1]
                elif kind == 2:  # the head strategy, and layer= on the engine
                    if i % 2:
                        got, want = saliency.class_jacobian(model, x, strategy="head"), plain[2]
                    else:
                        got, want = saliency.class_jacobian(model, x, layer=layer), at_layer[2]
                else:  # the caller's own training step on the same model, hooks or not
                    loss = ((model(x) - target) ** 2).sum()
                    got = torch.autograd.grad(loss, list(model.parameters()))
                    want = step_grads
                    for g, w in zip(got, want, strict=True):
                        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
                    continue
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        except Exception as e:  # reported, with its kind, after every thread ended
            failures.append(f"thread {kind}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:3]
    assert not model._forward_hooks and not layer._forward_hooks  # every hook removed
