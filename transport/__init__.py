"""UCXX slot transport: shared-memory ring, multi-port server, retrying client, batch fetcher."""

from transport.descriptor import SlotDescriptor
from transport.errors import (
    AttemptsExhaustedError,
    BusyError,
    ConfigError,
    ConnectionLostError,
    InDoubtError,
    NotReadyError,
    PayloadTooLargeError,
    ProtocolError,
    ReadTimeoutError,
    RingError,
    RingFullError,
    ServerError,
    StaleSlotError,
    TransportError,
    TruncatedError,
    UnauthorizedError,
)

__all__ = [
    "AttemptsExhaustedError",
    "BusyError",
    "ConfigError",
    "ConnectionLostError",
    "InDoubtError",
    "NotReadyError",
    "PayloadTooLargeError",
    "ProtocolError",
    "ReadTimeoutError",
    "RingError",
    "RingFullError",
    "ServerError",
    "SlotDescriptor",
    "StaleSlotError",
    "TransportError",
    "TruncatedError",
    "UnauthorizedError",
]
