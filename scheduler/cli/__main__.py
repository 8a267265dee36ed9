"""`python -m scheduler.cli`: the `mesh-node` command."""
import sys

from scheduler.cli.main import main

sys.exit(main())
