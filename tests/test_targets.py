"""Targets in Captum's habit: per-sample labels passed where a shared class list is expected are
recognised and refused with the right spelling, never silently explained for every sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import saliency


def model_and_batch():
    torch.manual_seed(0)
    return nn.Linear(4, 5), torch.randn(6, 4)


@pytest.mark.parametrize("method", [saliency.gradients, saliency.integrated_gradients])
def test_labels_as_a_tensor_or_repeated_list_are_refused(method):
    model, x = model_and_batch()
    y = torch.tensor([3, 1, 4, 1, 0, 2])  # Captum: attribute(x, target=y)
    for labels in (y, y.numpy(), y.tolist(), torch.tensor([0, 1, 2, 3, 4, 0])[:6]):
        with pytest.raises(ValueError, match=r"unsqueeze\(1\)"):
            method(model, x, labels)
    distinct = torch.tensor([0, 1, 2, 3, 4, 0])[:5]  # shorter than the batch: a class list
    assert method(model, x, distinct).values.shape[:2] == (6, 5)
    with pytest.raises(ValueError, match="repeats class ids"):
        saliency.class_jacobian(model, x, [2, 2])


def test_the_right_spellings_work_and_mean_what_they_say():
    model, x = model_and_batch()
    y = torch.tensor([3, 1, 4, 1, 0, 2])
    own = saliency.gradients(model, x, y[:, None])
    assert own.values.shape == (6, 1, 4)
    torch.testing.assert_close(own.values[:, 0], model.weight[y])
    shared = saliency.gradients(model, x, [4, 0, 2, 1, 3, 0][:5])  # a list: the same for all
    assert shared.classes.tolist() == [[4, 0, 2, 1, 3]] * 6
    wide = nn.Linear(4, 8)
    with pytest.raises(ValueError, match=r"ids\.tolist\(\)"):  # distinct, yet as long as B
        saliency.gradients(wide, x, torch.tensor([4, 0, 2, 1, 3, 7]))
    assert saliency.gradients(wide, x, [4, 0, 2, 1, 3, 7]).values.shape == (6, 6, 4)
    assert np.array_equal(
        saliency.gradients(model, x[:1], torch.tensor([2])).classes.numpy(), [[2]]
    )
