"""Batched reads: `ServerBatch` and `ClientBatch`, sans-IO; the message codec lives in `frames`.

One exchange reads k slots on one endpoint; every slot is still CASed, fenced, committed, released
and RESOLVEd on its own, and one bad slot never fails its neighbours::

    client REQUEST_BATCH(token; k x (slot, generation, inline room, proof))
    server per slot: CAS READY(gen) -> READING(token)
    server STATUS_BATCH(k x (slot, code, flags, generation, nbytes, checksum); inline payloads)
    server PAYLOAD for each OK slot that is not inline, in entry order
    client per slot: length + checksum -> COMMIT_BATCH(n x (slot, commit|release, generation, proof))
    server per slot: CAS READING(token) -> FREE (commit) or -> READY (release), commit log
    server COMMITTED_BATCH(n x (slot, OK | ERROR, generation))  -> client hands over the committed
    COMMITTED_BATCH lost: each slot it would commit is IN_DOUBT, settled by a per-slot RESOLVE
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple, TypeAlias

from transport.errors import (
    ConfigError,
    InDoubtError,
    ProtocolError,
    ServerError,
    TransportError,
    TruncatedError,
)
from transport.protocol import client as single
from transport.protocol.client import STATUS_ERRORS, ClientRead, as_transport_error
from transport.protocol.commitlog import CommitLog
from transport.protocol.frames import (
    BATCH_ENTRY,
    BATCH_MAX,
    FLAG_INLINE,
    FRAME_SIZE,
    INLINE_BATCH_MAX,
    INLINE_MAX,
    TRAILER,
    U64,
    BatchEntry,
    FrameLike,
    MsgType,
    Status,
    decode_batch,
    encode,
    encode_batch,
    status,
)
from transport.protocol.keys import RingKey
from transport.protocol.server import DONE, Close, Done
from transport.protocol.states import (
    ANY_STATE_EVENTS,
    CLIENT_BATCH_TRANSITIONS,
    SERVER_BATCH_TRANSITIONS,
    BatchState,
    ClientState,
)

__all__ = [
    "AwaitCommitBatch",
    "BatchAction",
    "BatchSlot",
    "BeginBatch",
    "ClientBatch",
    "FinaliseBatch",
    "SendBatchReply",
    "SendPayloads",
    "SendStatusBatch",
    "ServerBatch",
    "fill_inline",
]


def _entry_proof_ok(entry: BatchEntry, key: RingKey) -> bool:
    """The entry's per-slot capability for the (slot, generation) it names, compared in constant time."""
    try:
        expected = key.capability(entry.slot, entry.generation)
    except ConfigError:
        return False
    return hmac.compare_digest(entry.proof, expected)


class _BatchMachine:
    state: BatchState = BatchState.IDLE
    TRANSITIONS: Mapping[tuple[BatchState, str], frozenset[BatchState]]

    def _move(self, event: str, to: BatchState) -> None:
        if event not in ANY_STATE_EVENTS and to not in self.TRANSITIONS.get((self.state, event), ()):
            raise ProtocolError(f"batch: {event} -> {to.value} not valid in state {self.state.value}")
        self.state = to


class BeginBatch(NamedTuple):
    """Per entry: `ring.begin_read(slot, generation, token, lease)` (None entries: skip, refused
    already); then `on_begun([(code, info.generation, info.nbytes, info.checksum) or None, ...])`."""

    entries: tuple[BatchEntry | None, ...]
    token: int


class SendStatusBatch(NamedTuple):
    """Send `message` after copying each `inline` (offset, slot, nbytes) payload into it
    (`fill_inline`), then `on_sent()`."""

    message: bytearray
    inline: tuple[tuple[int, int, int], ...]


class SendPayloads(NamedTuple):
    """Send `ring.payload_view(slot, nbytes)` for each item, in order, then `on_sent()`."""

    items: tuple[tuple[int, int], ...]


class AwaitCommitBatch(NamedTuple):
    """Receive `size` bytes (a fresh zeroed buffer), then `on_commit(buf)`."""

    size: int


class FinaliseBatch(NamedTuple):
    """Per item (kind, slot, generation, token): ring.commit_read / release_read; then
    `on_finalised([ok, ...])` with no await in between (the commit log must see commits atomically)."""

    items: tuple[tuple[Literal["commit", "release"], int, int, int], ...]


class SendBatchReply(NamedTuple):
    """Send `data` (COMMITTED_BATCH, or a refusal STATUS), then `on_sent()`."""

    data: bytes | bytearray


BatchAction: TypeAlias = (
    BeginBatch
    | SendStatusBatch
    | SendPayloads
    | AwaitCommitBatch
    | FinaliseBatch
    | SendBatchReply
    | Done
    | Close
)


def fill_inline(action: SendStatusBatch, view_of: Callable[[int, int], object]) -> bytearray:
    """The STATUS_BATCH message with its inline payloads copied in from `view_of(slot, nbytes)`."""
    msg = action.message
    for offset, slot, n in action.inline:
        msg[offset : offset + n] = memoryview(view_of(slot, n)).cast("B")  # type: ignore[arg-type]
    return msg


class ServerBatch(_BatchMachine):
    """Server side of one batched read. `held` maps entry index -> slot held (READING by `token`):
    the driver's `finally` releases whatever is still in it after cancellation. Moves:
    `SERVER_BATCH_TRANSITIONS`."""

    TRANSITIONS = SERVER_BATCH_TRANSITIONS

    def __init__(self, ring_key: RingKey, log: CommitLog, slots: int | None = None) -> None:
        self._ring_key = ring_key
        self.log = log
        self._slots = slots
        self.token = 0
        self.entries: list[BatchEntry] = []
        self.codes: list[int] = []
        self.held: dict[int, BatchEntry] = {}
        self.committed: list[BatchEntry] = []
        self.reason = ""
        self._items: tuple[tuple[Literal["commit", "release"], int, int, int], ...] = ()
        self._answered: list[bool] = []
        self._payloads: tuple[tuple[int, int], ...] = ()

    def on_request(self, msg: FrameLike) -> BatchAction:
        try:
            head, entries = decode_batch(msg, MsgType.REQUEST_BATCH)
        except ProtocolError as exc:
            return self._refuse(Status.BAD_REQUEST, str(exc))
        if head.token == 0:
            return self._refuse(Status.BAD_REQUEST, "token 0 is reserved")
        self.token, self.entries = head.token, entries
        self.codes = [-1] * len(entries)
        todo: list[BatchEntry | None] = []
        for i, e in enumerate(entries):
            if not _entry_proof_ok(e, self._ring_key):
                self.codes[i] = Status.UNAUTHORIZED
            elif self._slots is not None and e.slot >= self._slots:
                self.codes[i] = Status.BAD_REQUEST
            elif any(o.slot == e.slot for o in entries[:i]):
                self.codes[i] = Status.BAD_REQUEST  # the same slot twice in one batch
            todo.append(e if self.codes[i] < 0 else None)
        self._move("request", BatchState.BEGIN)
        return BeginBatch(tuple(todo), self.token)

    def on_begun(self, results: list[tuple[int, int, int, int] | None]) -> BatchAction:
        """Per entry: the ring's (ReadCode, generation, nbytes, checksum), None where skipped."""
        if self.state is not BatchState.BEGIN or len(results) != len(self.entries):
            raise ProtocolError(f"batch: on_begun not valid in state {self.state.value}")
        answers: list[BatchEntry] = []
        inline: list[tuple[int, int]] = []  # (entry index, nbytes)
        payloads: list[tuple[int, int]] = []
        room_left = INLINE_BATCH_MAX
        for i, (e, r) in enumerate(zip(self.entries, results, strict=True)):
            code, nbytes, csum, flags = self.codes[i], 0, 0, 0
            if r is not None:
                code, _, nbytes, csum = r
                if code == Status.OK:
                    self.held[i] = e
                    self.log.observe(e.slot, e.generation)
                    if 0 < nbytes <= min(e.extra, INLINE_MAX, room_left):
                        flags = FLAG_INLINE
                        room_left -= nbytes
                        inline.append((i, nbytes))
                    elif nbytes:
                        payloads.append((e.slot, nbytes))
            self.codes[i] = code
            answers.append(
                BatchEntry(e.slot, e.generation, code=code, flags=flags, nbytes=nbytes, checksum=csum)
            )
        tail = sum(n for _, n in inline)
        msg, offset = encode_batch(MsgType.STATUS_BATCH, self.token, answers, tail)
        places = []
        for i, n in inline:
            places.append((offset, self.entries[i].slot, n))
            offset += n
        self._payloads = tuple(payloads)
        self._move("begun", BatchState.SEND_STATUS)
        return SendStatusBatch(msg, tuple(places))

    def on_sent(self) -> BatchAction:
        if self.state is BatchState.SEND_STATUS:
            if not self.held:
                self._move("sent", BatchState.DONE)
                return DONE
            if self._payloads:
                self._move("sent", BatchState.PAYLOADS)
                return SendPayloads(self._payloads)
            self._move("sent", BatchState.AWAIT_COMMIT)
            return AwaitCommitBatch(self._commit_size())
        if self.state is BatchState.PAYLOADS:
            self._move("sent", BatchState.AWAIT_COMMIT)
            return AwaitCommitBatch(self._commit_size())
        if self.state is BatchState.SEND_REFUSAL:
            self._move("sent", BatchState.CLOSED)
            return Close(self.reason)
        self._move("sent", BatchState.DONE)
        return DONE

    def _commit_size(self) -> int:
        return FRAME_SIZE + len(self.held) * BATCH_ENTRY + len(TRAILER)

    def on_commit(self, msg: FrameLike) -> BatchAction:
        """COMMIT_BATCH: per named held slot commit or release (each answered in COMMITTED_BATCH);
        held slots it does not name are released unanswered; a garbled one releases them all."""
        if self.state is not BatchState.AWAIT_COMMIT:
            raise ProtocolError(f"batch: on_commit not valid in state {self.state.value}")
        try:
            head, asks = decode_batch(msg, MsgType.COMMIT_BATCH)
            if head.token != self.token:
                raise ProtocolError("COMMIT_BATCH does not carry the batch's token")
        except ProtocolError as exc:
            return self.on_error(f"bad COMMIT_BATCH: {exc}")
        by_slot = {e.slot: e for e in self.held.values()}
        items: list[tuple[Literal["commit", "release"], int, int, int]] = []
        answered: list[bool] = []
        for a in asks:
            held = by_slot.get(a.slot)
            ours = held is not None and held.generation == a.generation and _entry_proof_ok(a, self._ring_key)
            if held is None or not ours:
                continue  # not a slot this batch holds: ignored, never answered
            del by_slot[a.slot]
            items.append(("commit" if a.extra == 1 else "release", a.slot, a.generation, self.token))
            answered.append(True)
        for e in by_slot.values():
            items.append(("release", e.slot, e.generation, self.token))
            answered.append(False)
        self._items, self._answered = tuple(items), answered
        self._move("commit", BatchState.FINALISE)
        return FinaliseBatch(self._items)

    def on_finalised(self, results: list[bool]) -> BatchAction:
        """The ring's result per FinaliseBatch item (False: the token no longer held that slot)."""
        finalising = (BatchState.FINALISE, BatchState.RELEASING_ON_ERROR)
        if self.state not in finalising or len(results) != len(self._items):
            raise ProtocolError(f"batch: on_finalised not valid in state {self.state.value}")
        self.held.clear()
        if self.state is BatchState.RELEASING_ON_ERROR:  # nothing to answer
            self._move("finalised", BatchState.CLOSED)
            return Close(self.reason)
        answers: list[BatchEntry] = []
        for (kind, slot, generation, _), ok, answered in zip(
            self._items, results, self._answered, strict=True
        ):
            committed_now = kind == "commit" and ok
            if committed_now:
                self.log.record(slot, generation, self.token)
                self.committed.append(BatchEntry(slot, generation))
            if answered:
                answers.append(
                    BatchEntry(slot, generation, code=Status.OK if committed_now else Status.ERROR)
                )
        self._move("finalised", BatchState.SEND_REPLY)
        msg, _ = encode_batch(MsgType.COMMITTED_BATCH, self.token, answers)
        return SendBatchReply(msg)

    def on_error(self, reason: str) -> BatchAction:
        """A send/recv failed or timed out: release every held slot, then close."""
        self.reason = reason
        finalising = self.state in (BatchState.FINALISE, BatchState.RELEASING_ON_ERROR)
        if self.held and not finalising:
            self._items = tuple(("release", e.slot, e.generation, self.token) for e in self.held.values())
            self._answered = [False] * len(self._items)
            self._move("error", BatchState.RELEASING_ON_ERROR)
            return FinaliseBatch(self._items)
        self.held.clear()
        self._move("error", BatchState.CLOSED)
        return Close(reason)

    def _refuse(self, code: Status, message: str) -> BatchAction:
        self.reason = message
        self._move("request", BatchState.SEND_REFUSAL)
        return SendBatchReply(encode(status(code, message=message)))


class BatchSlot(NamedTuple):
    """What a client batch needs of one descriptor."""

    slot: int
    generation: int
    nbytes: int
    checksum: int
    proof: bytes


class ClientBatch(_BatchMachine):
    """Client side of one batched read (one token for the batch, every slot judged on its own).

    Per slot `errors[i]` ends as None (committed: the payload is the caller's) or a TransportError:
    retryable when the slot did not commit, an InDoubtError when COMMIT_BATCH asked to commit it and
    no answer came (RESOLVE it with `resolve_read(i)` on another endpoint, never read it again).
    Moves: `CLIENT_BATCH_TRANSITIONS`.
    """

    TRANSITIONS = CLIENT_BATCH_TRANSITIONS

    def __init__(self, slots: list[BatchSlot], token: int, inline_max: int = INLINE_MAX) -> None:
        if not 0 < len(slots) <= BATCH_MAX:
            raise ConfigError(f"a batch holds 1..{BATCH_MAX} slots, got {len(slots)}")
        if len({s.slot for s in slots}) != len(slots):
            raise ConfigError("a batch cannot name the same slot twice")
        if not 0 < token <= U64:
            raise ConfigError(f"token={token!r}: must be a non-zero u64 (see new_token)")
        self.slots = slots
        self.token = token
        self.errors: list[TransportError | None] = [None] * len(slots)
        self.ok: list[bool] = [False] * len(slots)  # status OK, payload to verify
        self.inline: list[tuple[int, int] | None] = [None] * len(slots)  # (offset, nbytes) in status
        self.pending: list[int] = []  # entry indexes whose payload comes as its own message, in order
        self.commit_sent: list[int] = []  # entry indexes COMMIT_BATCH asked to commit
        self.released: list[int] = []
        room, self.rooms = INLINE_BATCH_MAX, []
        for s in slots:
            r = s.nbytes if 0 < s.nbytes <= min(inline_max, INLINE_MAX, room) else 0
            room -= r
            self.rooms.append(r)

    def key(self, i: int) -> str:
        return f"{self.slots[i].slot}:{self.slots[i].generation}"

    def request_message(self) -> bytearray:
        entries = [
            BatchEntry(s.slot, s.generation, r, s.proof) for s, r in zip(self.slots, self.rooms, strict=True)
        ]
        msg, _ = encode_batch(MsgType.REQUEST_BATCH, self.token, entries)
        self._move("send_request", BatchState.SEND_STATUS)
        return msg

    def status_size(self) -> int:
        """Bytes to receive the STATUS_BATCH into (entries plus the inline room asked for)."""
        return FRAME_SIZE + len(self.slots) * BATCH_ENTRY + sum(self.rooms) + len(TRAILER)

    def on_status(self, msg: FrameLike) -> list[int]:
        """The STATUS_BATCH: per slot OK (payload inline or to receive) or refused (that slot fails
        alone). Returns the sizes of the payload messages to receive next, in order. A garbled
        message fails every slot (raises the error, nothing committed)."""
        if self.state is not BatchState.SEND_STATUS:
            raise ProtocolError(f"batch: on_status not valid in state {self.state.value}")
        view = memoryview(msg).cast("B")  # type: ignore[arg-type]
        try:
            head, answers = decode_batch(view, MsgType.STATUS_BATCH, None)
            if head.token != self.token or len(answers) != len(self.slots):
                raise ProtocolError("STATUS_BATCH for another batch (a late reply?)")
            tail = sum(a.nbytes for a in answers if a.flags & FLAG_INLINE)
            decode_batch(view, MsgType.STATUS_BATCH, tail)  # the closing trailer, after the inline bytes
        except ProtocolError as exc:
            self._fail_all(_as_frame_error(exc))
            raise self.errors[0] from None  # type: ignore[misc]
        offset = FRAME_SIZE + len(self.slots) * BATCH_ENTRY
        sizes = []
        for i, (s, a) in enumerate(zip(self.slots, answers, strict=True)):
            if (a.slot, a.generation) != (s.slot, s.generation):
                self._fail_one(i, ProtocolError(f"{self.key(i)}: STATUS_BATCH entry names another slot"))
                continue
            if a.code != Status.OK:
                self.errors[i] = STATUS_ERRORS[Status(a.code)](f"{self.key(i)}: {Status(a.code).name}")
                continue
            self.ok[i] = True
            if (a.nbytes, a.checksum) != (s.nbytes, s.checksum):
                self._fail_one(
                    i, ProtocolError(f"{self.key(i)}: status says {a.nbytes} bytes, descriptor {s.nbytes}")
                )
            if a.flags & FLAG_INLINE:
                if a.nbytes > self.rooms[i]:
                    self._fail_one(i, ProtocolError(f"{self.key(i)}: inline payload larger than asked"))
                self.inline[i] = (offset, a.nbytes)
                offset += a.nbytes
            elif a.nbytes:
                self.pending.append(i)
                sizes.append(a.nbytes)
        if not any(self.ok):
            self._move("status", BatchState.DONE)
        else:
            self._move("status", BatchState.PAYLOADS)
        return sizes

    def on_payloads(self, checksums: dict[int, int]) -> bytearray | None:
        """Checksums of every OK slot's bytes (inline or received), by entry index -> the
        COMMIT_BATCH to send: commit where length and checksum hold, release the rest (each failing
        alone with TruncatedError). None if nothing is held (DONE)."""
        if self.state is not BatchState.PAYLOADS:
            raise ProtocolError(f"batch: on_payloads not valid in state {self.state.value}")
        asks = []
        for i, held in enumerate(self.ok):
            if not held:
                continue
            s = self.slots[i]
            got = checksums.get(i)
            good = self.errors[i] is None and got is not None and single.payload_verified(s.checksum, got)
            if self.errors[i] is None and not good:
                self.errors[i] = TruncatedError(
                    f"{self.key(i)}: payload checksum mismatch (short or corrupt)"
                )
            (self.commit_sent if good else self.released).append(i)
            asks.append(BatchEntry(s.slot, s.generation, 1 if good else 0, s.proof))
        msg, _ = encode_batch(MsgType.COMMIT_BATCH, self.token, asks)
        self._n_asked = len(asks)
        self._move("payloads", BatchState.AWAIT_COMMITTED)
        return msg

    def committed_size(self) -> int:
        return FRAME_SIZE + self._n_asked * BATCH_ENTRY + len(TRAILER)

    def on_committed(self, msg: FrameLike) -> None:
        """COMMITTED_BATCH: per slot OK = committed (DONE), ERROR = refused (not committed: retryable).
        Garbled or foreign: every slot asked to commit is IN_DOUBT."""
        if self.state is not BatchState.AWAIT_COMMITTED:
            raise ProtocolError(f"batch: on_committed not valid in state {self.state.value}")
        try:
            head, answers = decode_batch(msg, MsgType.COMMITTED_BATCH)
            if head.token != self.token or len(answers) != self._n_asked:
                raise ProtocolError("COMMITTED_BATCH for another batch (a late reply?)")
        except ProtocolError as exc:
            self.doubt(exc)
            return
        by_slot = {a.slot: a for a in answers}
        for i in self.commit_sent:
            a = by_slot.get(self.slots[i].slot)
            if a is None or a.generation != self.slots[i].generation:
                self._doubt_one(i, ProtocolError(f"{self.key(i)}: missing from COMMITTED_BATCH"))
            elif not single.commit_accepted(a.code):
                self.errors[i] = ServerError(f"{self.key(i)}: commit refused: not committed")
        self._move("committed", BatchState.DONE)

    def on_error(self, exc: BaseException) -> None:
        """An I/O step failed: slots not yet judged fail (retryable) before COMMIT_BATCH was sent;
        after it, every slot it asked to commit is IN_DOUBT."""
        err = as_transport_error(exc, f"batch of {len(self.slots)}")
        if self.state is BatchState.AWAIT_COMMITTED:
            self.doubt(err)
        else:
            self._fail_all(err)
        self._move("error", BatchState.DONE)

    def doubt(self, cause: TransportError) -> None:
        for i in self.commit_sent:
            if self.errors[i] is None:
                self._doubt_one(i, cause)

    def resolve_read(self, i: int) -> ClientRead:
        """A ClientRead for slot `i`, IN_DOUBT, to RESOLVE on another endpoint (see ClientRead)."""
        s = self.slots[i]
        cr = ClientRead(s.slot, s.generation, self.token, s.proof, s.nbytes, s.checksum)
        cr.state, cr.error = ClientState.IN_DOUBT, self.errors[i]
        return cr

    def _fail_one(self, i: int, err: TransportError) -> None:
        if self.errors[i] is None:
            self.errors[i] = err

    def _fail_all(self, err: TransportError) -> None:
        for i in range(len(self.slots)):
            if self.errors[i] is None:
                self.errors[i] = err

    def _doubt_one(self, i: int, cause: TransportError) -> None:
        err = InDoubtError(f"{self.key(i)}: COMMIT_BATCH sent, outcome unknown: {cause}")
        err.__cause__ = cause
        self.errors[i] = err


def _as_frame_error(exc: ProtocolError) -> TransportError:
    """A garbled STATUS_BATCH: a short message (missing trailer) is a truncation, the rest protocol."""
    if "trailer" in str(exc) or "shorter" in str(exc):
        return TruncatedError(str(exc))
    return exc
