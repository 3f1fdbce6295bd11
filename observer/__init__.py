"""Observer: watches what agents and scenario runners do, learns from it, feeds the lessons back.

`from observer import observed` gives agents the gateway wrapper; importing the package stays light
(no Prefect, no polars) because agents import it on their own start-up path.
"""

from observer.observed import observed, observed_sync

__all__ = ["observed", "observed_sync"]
