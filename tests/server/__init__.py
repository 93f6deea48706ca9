"""Tests of the gRPC service (nacf_core.service, nacf_core.server, nacf serve)."""
