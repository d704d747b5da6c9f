"""``python -m promptune``: the client verbs (promptune.cli)."""

import sys

from promptune.cli import main

sys.exit(main())
