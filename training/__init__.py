"""Exports to TRL dataset formats, and training on them."""
