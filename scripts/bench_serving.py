"""Serving benchmark (see devstack/serving_bench.py): python scripts/bench_serving.py --size tiny|vit-b|both"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.serving_bench import main  # noqa: E402

sys.exit(main())
