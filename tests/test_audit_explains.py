"""Every metric of a model, inputs and an Attribution refuses an Attribution of other inputs."""

from __future__ import annotations

import functools

import pytest
import torch

import saliency
from saliency import audit

METRICS = {
    "deletion": functools.partial(audit.deletion, steps=4, seed=0),
    "insertion": functools.partial(audit.insertion, steps=4, seed=0),
    "road": functools.partial(audit.road, steps=4, seed=0),
    "infidelity": functools.partial(audit.infidelity, n_perturb=3, seed=0),
    "sensitivity_max": lambda model, x, a: audit.sensitivity_max(
        model, x, saliency.gradients, attribution=a, n_perturb=2, seed=0
    ),
    "margins": audit.margins,
}


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(3 * 16, 4),
    ).eval()  # fmt: skip
    x = torch.randn(6, 1, 4, 4)
    return model, x, saliency.gradients(model, x)


@pytest.mark.parametrize("name", list(METRICS))
def test_an_attribution_of_reordered_inputs_is_refused(cnn, name):
    model, x, a = cnn
    METRICS[name](model, x, a)  # its own inputs: measured
    perm = torch.tensor([1, 0, 2, 3, 5, 4])
    with pytest.raises(ValueError, match=r"at x for samples \[0, 1, 4, 5\]"):
        METRICS[name](model, x[perm], a)
    other = torch.nn.Sequential(*model[:3], torch.nn.Linear(3 * 16, 4)).eval()
    with pytest.raises(ValueError, match=r"attribution: the outputs it recorded differ"):
        METRICS[name](other, x, a)


def test_the_check_uses_the_recorded_output_and_a_callable_given_again(cnn):
    model, x, a = cnn
    audit.deletion(model, x, a, steps=4, output="softmax", seed=0)  # tracks another score: fine

    def halved(out):
        return out / 2

    b = saliency.gradients(model, x, output=halved)
    audit.deletion(model, x, b, steps=4, output=halved, seed=0)
    with pytest.raises(ValueError, match=r"differ from the model's at x"):
        audit.deletion(model, x, b, steps=4, output=lambda out: out, seed=0)
    with pytest.raises(ValueError, match=r"a callable recorded by name only; pass the same"):
        audit.deletion(model, x, b, steps=4, seed=0)
