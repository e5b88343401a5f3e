"""The simulated upstream, as the engine offers it to the command line (``routedeck sim``).

The console may not import ``providers`` directly; this is its one door to the simulator.
"""

from __future__ import annotations

from providers.sim import main as run_simulator

__all__ = ["run_simulator"]
