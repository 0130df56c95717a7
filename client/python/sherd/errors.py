"""Errors raised by sherd: one class per gRPC / absl status code.

Every failed call of the native client raises a SherdError subclass whose
``code`` is the status code's name (``"UNAVAILABLE"``, ...). The subclasses
also derive from the matching Python built-in where one fits, so
``except ValueError`` catches a refused argument and ``except ConnectionError``
a server that cannot be reached.
"""
from __future__ import annotations


class SherdError(RuntimeError):
    """A failed sherd call. ``code`` names the status code."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(SherdError, ValueError):
    code = "INVALID_ARGUMENT"


class FailedPrecondition(SherdError):
    code = "FAILED_PRECONDITION"


class Unavailable(SherdError, ConnectionError):
    code = "UNAVAILABLE"


class DeadlineExceeded(SherdError, TimeoutError):
    code = "DEADLINE_EXCEEDED"


class NotFound(SherdError, LookupError):
    code = "NOT_FOUND"


class AlreadyExists(SherdError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(SherdError, MemoryError):
    code = "RESOURCE_EXHAUSTED"


class DataLoss(SherdError):
    code = "DATA_LOSS"


class Aborted(SherdError):
    code = "ABORTED"


class Rewound(SherdError):
    """A step failed because the cluster lost a shard server; it has been
    rebuilt and every rank rewound to its newest checkpoint. The optimizer
    has re-registered: the model's parameters hold the checkpoint's values,
    and training continues with step ``next_step`` (reposition the data and
    any LR scheduler there, recompute the gradients, and step again)."""
    code = "ABORTED"

    def __init__(self, message: str, next_step: int, checkpoint: str = ""):
        super().__init__(message, code="ABORTED")
        self.next_step = next_step
        self.checkpoint = checkpoint


# absl::StatusCode values, which equal gRPC's.
_CODES = {
    1: ("CANCELLED", SherdError),
    2: ("UNKNOWN", SherdError),
    3: ("INVALID_ARGUMENT", InvalidArgument),
    4: ("DEADLINE_EXCEEDED", DeadlineExceeded),
    5: ("NOT_FOUND", NotFound),
    6: ("ALREADY_EXISTS", AlreadyExists),
    7: ("PERMISSION_DENIED", SherdError),
    8: ("RESOURCE_EXHAUSTED", ResourceExhausted),
    9: ("FAILED_PRECONDITION", FailedPrecondition),
    10: ("ABORTED", Aborted),
    11: ("OUT_OF_RANGE", SherdError),
    12: ("UNIMPLEMENTED", SherdError),
    13: ("INTERNAL", SherdError),
    14: ("UNAVAILABLE", Unavailable),
    15: ("DATA_LOSS", DataLoss),
    16: ("UNAUTHENTICATED", SherdError),
}


def from_status(code: int, message: str) -> SherdError:
    """The exception for an absl/gRPC status (called by the native module)."""
    name, cls = _CODES.get(code, ("UNKNOWN", SherdError))
    return cls(message, code=name)
