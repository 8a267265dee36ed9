"""Test-session settings: clients that reach nodes by address record their identities in a known-nodes file
of the session (never the user's own ~/.config/gpumesh/known_nodes); node processes inherit it. Each pytest-xdist
worker has its own (a worker inherits the controller's environment, so this is set again, not defaulted)."""

import os
import tempfile


def pytest_configure(config):
    os.environ["GPUMESH_KNOWN_NODES"] = os.path.join(tempfile.mkdtemp(prefix="gpumesh-known-"), "known_nodes")


def _hypothesis_profile() -> None:
    """On a loaded machine generating examples is slow: that is not a finding (every @given test also sets
    deadline=None for the same reason)."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("gpumesh", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("gpumesh")


_hypothesis_profile()
