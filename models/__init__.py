"""Promptune's ML library (public API filled in as the modules land)."""
