"""Synthetic-set quality: feature extractors by name, set measures on features, and their breakdown by group."""
