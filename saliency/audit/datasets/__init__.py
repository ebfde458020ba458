"""Audits of whole data sets: shards, a manifest, resume, torch.distributed ranks, a report.

:func:`run` (in ``runner``) is the door; the modules behind it each do one thing: ``arguments``
(checks at the door), ``sources`` (data to batches), ``files`` (data sets from files, for the
command), ``shards`` (files, seeds, completion records), ``manifest`` (configuration and
fingerprints), ``distributed`` (ranks), ``methods`` and ``metrics`` (what is computed per shard),
``screen`` (samples that cannot be explained), ``rows`` (a shard's rows and mean-map sums),
``summary`` and ``report`` (the merged results).
"""

from .runner import AuditRun, run

__all__ = ["AuditRun", "run"]
