"""AES-128-CBC-ESSIV (to be written)."""
