"""Test-session settings: clients that reach nodes by address record their identities in a known-nodes file
of the session (never the user's own ~/.config/gpumesh/known_nodes); node processes inherit it. Each pytest-xdist
worker has its own (a worker inherits the controller's environment, so this is set again, not defaulted)."""

import os
import tempfile


def pytest_configure(config):
    os.environ["GPUMESH_KNOWN_NODES"] = os.path.join(tempfile.mkdtemp(prefix="gpumesh-known-"), "known_nodes")
