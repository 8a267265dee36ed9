"""Test-session settings: clients that reach nodes by address record their identities in a known-nodes file
of the session (never the user's own ~/.config/gpumesh/known_nodes); node processes inherit it."""

import os
import tempfile


def pytest_configure(config):
    os.environ.setdefault("GPUMESH_KNOWN_NODES", os.path.join(tempfile.mkdtemp(prefix="gpumesh-known-"), "known_nodes"))
