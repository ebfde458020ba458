"""Names for classes: in titles, labels and file names."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["class_label", "class_name", "file_stem", "output_word", "true_labels"]

ClassNames = Sequence[str] | Mapping[int, str] | None


def class_label(class_id: int, class_names: ClassNames) -> str:
    """The name of ``class_id`` in ``class_names`` (a sequence or a mapping), or the id itself.

    >>> class_label(1, ["cat", "dog"]), class_label(1, None)
    ('dog', '1')
    """
    class_id = int(class_id)
    if class_names is None:
        return str(class_id)
    if isinstance(class_names, Mapping):
        if class_id in class_names:
            return str(class_names[class_id])
    elif 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    raise ValueError(
        f"class_names has no entry for class {class_id} (it has {len(class_names)} entries)"
    )


def class_name(class_id: int, class_names: ClassNames) -> str:
    """:func:`class_label`, or the id itself where ``class_names`` has no entry for it.

    >>> class_name(1, ["cat", "dog"]), class_name(5, ["cat", "dog"])
    ('dog', '5')
    """
    try:
        return class_label(class_id, class_names)
    except ValueError:
        return str(int(class_id))


def output_word(attribution: object) -> str:
    """What an attribution's ``outputs`` hold, in one word for a label: ``logit``,
    ``probability``, ``log-probability``, or ``score`` (a callable ``output=``).

    >>> from types import SimpleNamespace
    >>> output_word(SimpleNamespace(params={"output": "softmax"}))
    'probability'
    """
    params = getattr(attribution, "params", None)
    output = params.get("output") if isinstance(params, dict) else None
    words = {"logits": "logit", "softmax": "probability", "log_softmax": "log-probability"}
    return words.get(output, "score") if isinstance(output, str) else "score"


def file_stem(index: int, class_id: int, class_names: ClassNames) -> str:
    """``{index}_{class-name}`` with characters unsafe in file names replaced by ``_``.

    >>> file_stem(7, 2, ["cat", "dog", "n/a: other"])
    '7_n_a_other'
    """
    name = re.sub(r"[^\w.-]+", "_", class_label(class_id, class_names)).strip("._")[:100]
    return f"{index}_{name or int(class_id)}"


def true_labels(labels: object, n: int) -> list[int] | None:
    """``labels`` (one integer class id per sample, ``n`` samples) as ints; None stays None.

    >>> true_labels([3, 1], 2), true_labels(None, 2)
    ([3, 1], None)
    """
    if labels is None:
        return None
    import numpy as np

    from saliency.viz.images import to_numpy

    arr = to_numpy(labels, "labels").reshape(-1)
    if arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"labels: expected one integer class id per sample ({n}), got {arr.dtype} "
            f"{list(arr.shape)}"
        )
    return [int(v) for v in arr]
