"""The guardian: a small process per node that fences the node locally, within
``guard_time``, when its daemon's lease runs out or the daemon dies holding something
(docs/fencing.md).

``core`` decides (pure), ``holdings`` is what the daemon reports, ``protocol`` the local
channel, ``client`` the daemon's side of it, ``cgroups`` the per-resource cgroups, ``fence``
carries a fence out, ``process`` is ``vigil guard``.
"""
