"""Generated tokens as classes: every token a language model generated, explained by its context.

With teacher forcing, step ``t``'s target is the score of generated token ``y_t`` at the
position that predicts it; causal masking makes each step's gradient see exactly its prefix.
:func:`explain_generation` returns a :class:`GenerationAttribution`; :func:`merge` sums its
scores into words or spans; :func:`contrast` is the contrastive target.
"""

from ._explain import METHODS, explain_generation
from ._result import GenerationAttribution
from ._spans import SpanScores, merge, word_ids
from ._targets import SCORES, Contrast, contrast

__all__ = [
    "METHODS",
    "SCORES",
    "Contrast",
    "GenerationAttribution",
    "SpanScores",
    "contrast",
    "explain_generation",
    "merge",
    "word_ids",
]
