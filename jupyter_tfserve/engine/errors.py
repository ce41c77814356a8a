"""The engine's single error type, carrying a canonical status code.

Every failure a client can cause or observe is raised as :class:`ServingError`
so that the REST and gRPC front doors translate it the same way TF Serving
does: the same canonical code becomes the same HTTP status and gRPC status.
"""

from __future__ import annotations

import enum
import re


class Code(enum.Enum):
    """Canonical status codes (the names match ``grpc.StatusCode``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self, 500)


_HTTP_STATUS = {
    Code.OK: 200,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}


class ServingError(Exception):
    """A request failed with a canonical code and a message meant for the client."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"

    def __reduce__(self) -> tuple:
        # Exception pickles as cls(*args), which would lose the code: large REST bodies are decoded in a
        # worker process, and its errors must reach the client with their own code.
        return (ServingError, (self.code, self.message))


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(Code.UNAVAILABLE, message)


def resource_exhausted(message: str) -> ServingError:
    return ServingError(Code.RESOURCE_EXHAUSTED, message)


# An absolute POSIX path: a "/" that starts a word (not inside a URL, a relative path or a TensorFlow node
# name such as "dense/MatMul"), then path characters.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;:()\[\]{}<>|]+")


def redact_paths(message: str) -> str:
    """``message`` with each absolute path cut to its last component (``.../saved_model.pb``).

    Load and runtime errors name files on the engine's disk (the model repository, the user's home);
    a share token's bearer may see the error but has no business knowing where the owner keeps things.
    The last component stays, so "file not found" still says which file.
    """
    return _ABSOLUTE_PATH.sub(_last_component, message)


def _last_component(match: re.Match) -> str:
    tail = match.group(0).rstrip("/").rpartition("/")[2]
    return f".../{tail}" if tail else "..."

