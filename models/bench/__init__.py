"""Benchmarks on the zoo: the SPT table (VTAB-style transfer of tiny ViTs) and the RPP table (prompt
pretraining of the tiny CLIP, zero-shot transfer to held-out targets, base-to-new).

``plan.py`` lists the runs of a profile, ``spt_runs.py`` / ``rpp_runs.py`` execute one run each,
``runner.py`` schedules them (learning rate chosen on validation with seed 0, then more seeds at the chosen
rate) over worker processes and appends every result to a JSONL file, ``report.py`` turns the results into
``benchmarks.md`` and PNG plots. A pure library like the rest of ``models/``; the CLI is ``promptune bench``.
"""

from .plan import PROFILES, BenchProfile, get_profile
from .report import write_report
from .runner import run_bench

__all__ = ["PROFILES", "BenchProfile", "get_profile", "run_bench", "write_report"]
