"""Suite-wide test configuration: the Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE``.

Profiles: ``dev`` (the default, for local runs), ``ci`` (fewer examples, no deadline: shared CI
machines are slow and noisy) and ``fuzz`` (many examples, for ``nox -s fuzz``).

Fixtures belong to the test modules that use them, not here: keep this file small and cheap to
import, since every test run and every xdist worker loads it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# No deadlines: the suite runs in parallel on small machines, where one slow example is noise.
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    # CI must not fail on an example nobody saw before: the same examples every run; the
    # long random search is what the fuzz profile is for.
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
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
