"""The gRPC face of nacf: servicer, converters, interceptors and the server app.

Only :mod:`~nacf_core.server.servicer` and :mod:`~nacf_core.server.converters`
import the generated stubs (``nacf_core._proto``).
"""

from nacf_core.server.app import NacfServer, build_service

__all__ = ["NacfServer", "build_service"]
