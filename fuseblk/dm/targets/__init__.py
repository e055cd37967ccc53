"""Device-mapper targets: one module each (``struct target_type``), the interface in
:mod:`~fuseblk.dm.targets.base`, and every target type by name in :mod:`~fuseblk.dm.targets.registry`.

The table and mapped-device code never name a target: they look it up with ``get_target`` and
ask the class for its properties (``passes_crypto`` is ``DM_TARGET_PASSES_CRYPTO``).
"""
