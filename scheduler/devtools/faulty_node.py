"""`python -m scheduler.devtools.faulty_node FAULTS_JSON [mesh-node args...]`: a node that misbehaves on purpose.

Installs the `worker.faults.Faults` given as JSON (e.g. '{"corrupt_render": true}'), logs loudly that it
does, then runs the ordinary `mesh-node` command line. For tests and chaos only: production never starts it.
"""

from __future__ import annotations

import logging
import sys

from scheduler.cli.main import main as mesh_node
from worker.faults import Faults, install


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    faults = Faults.from_json(argv[0])
    install(faults)
    logging.getLogger("gpumesh.faults").warning("this node misbehaves on purpose (test-only faults): %s", faults)
    return mesh_node(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
