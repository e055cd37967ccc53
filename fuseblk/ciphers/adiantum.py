"""Adiantum (to be written)."""
