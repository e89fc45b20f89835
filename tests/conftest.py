"""Suite-wide test configuration: the Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE``.

Profiles: ``dev`` (the default, for local runs), ``ci`` (fewer examples, no deadline: shared CI
machines are slow and noisy) and ``fuzz`` (many examples, for ``nox -s fuzz``).

Fixtures belong to the test modules that use them, not here: keep this file small and cheap to
import, since every test run and every xdist worker loads it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100)
settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
