"""A method module that fails at import: start-up must stop and name it (tests/api/test_method_modules.py)."""

from __future__ import annotations

raise RuntimeError("broken_method refuses to load")
