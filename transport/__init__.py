"""UCXX slot transport: shared-memory ring, multi-port server, retrying client, batch fetcher."""

from transport.client import ReadResult, SlotClient
from transport.descriptor import SlotDescriptor
from transport.errors import (
    AttemptsExhaustedError,
    BusyError,
    ConfigError,
    ConnectionLostError,
    InDoubtError,
    LeaseExpiredError,
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
from transport.facade import AsyncConsumer, Consumer, Producer
from transport.packer import BatchResult, DataPackerMixin, SlotFailure, fetch_batch, fetch_one
from transport.ring import ReadCode, SharedRing, SlotInfo, SlotState, WriteResult
from transport.server import SlotServer

__all__ = [
    "AsyncConsumer",
    "AttemptsExhaustedError",
    "BatchResult",
    "BusyError",
    "ConfigError",
    "ConnectionLostError",
    "Consumer",
    "DataPackerMixin",
    "InDoubtError",
    "LeaseExpiredError",
    "NotReadyError",
    "PayloadTooLargeError",
    "Producer",
    "ProtocolError",
    "ReadCode",
    "ReadResult",
    "ReadTimeoutError",
    "RingError",
    "RingFullError",
    "ServerError",
    "SharedRing",
    "SlotClient",
    "SlotDescriptor",
    "SlotFailure",
    "SlotInfo",
    "SlotServer",
    "SlotState",
    "StaleSlotError",
    "TransportError",
    "TruncatedError",
    "UnauthorizedError",
    "WriteResult",
    "fetch_batch",
    "fetch_one",
]
