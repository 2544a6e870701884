"""Property tests (Hypothesis): readers that give a valid dataset or a GcrdpError for any input,
the metrics against naive references, and the invariants of the class and protocol splits.

Every test uses :data:`FAST`: derandomized (the same examples on every run and machine, no
example database) and bounded (:data:`EXAMPLES`), so that the folder runs in well under a minute
on 2 cores."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: examples per test (some tests take a multiple); ``GCRDP_PROPERTY_EXAMPLES=2000`` for a deeper
#: local search, still derandomized
EXAMPLES = int(os.environ.get("GCRDP_PROPERTY_EXAMPLES", "40"))

#: the settings of every property test: seeded, bounded, no per-example deadline (CI machines
#: vary), no example database written into the work tree
FAST = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
