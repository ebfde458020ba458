"""Model audits: can an explanation be trusted, for every class at once, over whole data sets.

Metrics are pure functions of a model, inputs and an :class:`saliency.Attribution`, batched over
every class; dataset runs shard, resume and scale out with ``torch.distributed``.
"""

# -- metrics (one module each) ---------------------------------------------------------------------

# -- dataset runs ----------------------------------------------------------------------------------

__all__: list[str] = []
