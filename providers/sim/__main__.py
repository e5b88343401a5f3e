"""``python -m providers.sim``: run the simulated upstream on its own (see `providers.sim.cli`)."""

import sys

from providers.sim.cli import main

sys.exit(main())
