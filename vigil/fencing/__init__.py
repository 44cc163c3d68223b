"""Power fencing with unmodified fence agents (``fence-agents``), as Pacemaker's fencer runs
them: :mod:`vigil.fencing.agents` runs them, :mod:`vigil.fencing.metadata` reads what they
say of themselves, :mod:`vigil.fencing.check` checks a configuration's devices against that
(``vigil config check``), and :mod:`vigil.fencing.fence_vigil_ns` is a fence agent for
Vigil's network-namespace test hosts. docs/fencing.md, "Fence agents".
"""
