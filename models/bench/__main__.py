"""``python -m models.bench run|report ...`` (the same as ``promptune bench``)."""

from .cli import main

raise SystemExit(main())
