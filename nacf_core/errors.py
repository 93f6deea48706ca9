"""Domain errors, one per gRPC status code the service can return.

The domain layer raises these; the gRPC servicer maps ``error.code`` (the name of a
``grpc.StatusCode``) to the status and puts ``str(error)`` in the details.  Plain
``ValueError``/``TypeError`` from the validation layer map to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

__all__ = [
    "NacfError",
    "InvalidArgument",
    "SignalUnusable",
    "NotFound",
    "AlreadyExists",
    "AnotherDeviceBound",
    "FailedPrecondition",
    "TemplateUnreadable",
    "ResourceExhausted",
    "Unauthenticated",
    "PermissionDenied",
    "DeadlineExceeded",
    "Unavailable",
    "OutcomeUnknown",
]


class NacfError(Exception):
    """Base class. ``code`` is the gRPC status code name."""

    code = "INTERNAL"


class InvalidArgument(NacfError, ValueError):
    code = "INVALID_ARGUMENT"


class SignalUnusable(InvalidArgument):
    """A signal block with nothing usable on the model's channels: every sample of them
    non-finite, or railed (a headset off the head). A request's whole signal so is the
    client's error; one window of a ContinuousAuthenticate stream so is a window
    without a usable signal (the signal lost). ``artifact`` is its reason code
    (``"non_finite"`` or ``"railed"``, as :func:`nacf_core.pipeline.reason_codes`)."""

    def __init__(self, message: str, artifact: str) -> None:
        super().__init__(message)
        self.artifact = artifact


class NotFound(NacfError, LookupError):
    code = "NOT_FOUND"


class AlreadyExists(NacfError):
    code = "ALREADY_EXISTS"


class AnotherDeviceBound(AlreadyExists):
    """A headset registered with ``first_only`` for a user who already has another one
    (the store's ``register_device``); the service answers callers without the admin
    scope ``PERMISSION_DENIED`` for it."""


class FailedPrecondition(NacfError):
    code = "FAILED_PRECONDITION"


class TemplateUnreadable(FailedPrecondition):
    """A user's stored template that cannot be read: it does not decrypt (a row under
    another key than the store's, a ciphertext altered or moved to another row) or does
    not decode. The account's state is at fault, not the request or the store: Enroll with
    update=true replaces it. ``user_id`` names the user."""

    def __init__(self, message: str, user_id: str = "") -> None:
        super().__init__(message)
        self.user_id = user_id


class ResourceExhausted(NacfError):
    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(NacfError):
    code = "UNAUTHENTICATED"


class PermissionDenied(NacfError):
    code = "PERMISSION_DENIED"


class DeadlineExceeded(NacfError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(NacfError):
    code = "UNAVAILABLE"


class OutcomeUnknown(Unavailable):
    """A write whose ``COMMIT`` reached the store but whose answer was lost (a connection
    dropped, the query timeout): it may or may not have been applied, so it was not run
    again. A caller that would repeat a part of it (a rate-limit lease giving its leftover
    tokens back) must not."""
