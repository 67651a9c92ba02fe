"""moesim: a discrete-event simulator of Mixture-of-Experts training schedules.

    import moesim
    result = moesim.simulate(model="gpt2-s-moe", hardware="p3dn.24xlarge", nodes=2, schedule="sequential")
    result.metrics.iteration_time_s
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["compare", "simulate", "scenario", "__version__"]


def __getattr__(name: str) -> Any:
    # The API pulls in the whole simulator; `import moesim` alone (e.g. for the CLI's --help) stays light.
    if name in {"simulate", "compare", "scenario"}:
        from moesim import api

        return getattr(api, name)
    raise AttributeError(f"module 'moesim' has no attribute {name!r}")
