"""The admin surface: REST API, dashboard, health probes and Prometheus metrics.

:func:`create_app` builds the FastAPI app; :class:`APIServer` serves it from
a thread of the node (``dicomnode serve`` starts it when ``api.enabled``).
"""

from dicomnode.api.app import create_app
from dicomnode.api.server import APIServer

__all__ = ["APIServer", "create_app"]
