"""Audits of whole data sets: shards, a manifest, resume, torch.distributed ranks, a report.

:func:`run` (in ``runner``) is the door; it passes typed records between four parts: ``plan``
(the arguments checked, the first samples probed), ``folder`` (lock, manifest, resume),
``worker`` (a shard explained, measured and written) and ``finisher`` (summary and report). The
modules behind them each do one thing: ``arguments`` (checks at the door), ``sources`` (data to
batches of samples), ``files`` (data sets from files, for the command), ``shards`` (files, seeds,
completion records), ``manifest`` (configuration and fingerprints), ``distributed`` (ranks),
``methods`` and ``metrics`` (what is computed per shard), ``screen`` (samples that cannot be
explained), ``rows`` (a shard's rows and mean-map sums), ``summary`` and ``report`` (the merged
results).
"""

from .runner import AuditRun, run

__all__ = ["AuditRun", "run"]
