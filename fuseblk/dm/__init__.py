"""Device mapper: the manager, mapped devices, tables, the suspend gate, and ``targets/``."""
