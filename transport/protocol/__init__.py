"""Wire protocol: fixed-size frames <-> typed values, and sans-IO state machines for one read.

Nothing here touches a socket, UCX or asyncio (the model is h11 / wsproto): the server and client
modules do the I/O and feed the outcomes to `ServerRead` / `ClientRead`, which say what comes next.
Modules (each imports only those above it)::

    frames     the codec: MsgType / Status / Resolution, Frame, encode / decode, the frame
               constructors (request, status, commit, ...), the batch message codec
    keys       RingKey: per-slot capabilities, issued and checked
    commitlog  CommitLog: which token committed what, for RESOLVE
    states     every machine's states and transition tables (check them against the list below)
    client     ClientRead / SingleChunkClientRead, and the client's judging rules (payload_verified,
               commit_accepted)
    server     ServerRead / SingleChunkServerRead and their actions
    batch      ServerBatch / ClientBatch

Everything public is re-exported here, so `from transport.protocol import X` works for every X. To
patch a function for a test (tests/mutants), patch it on the module that defines it: the machines
look it up there, never here.

Commit protocol (one read attempt, token = the attempt's fencing token; the moves of each machine are
tabled in `states`: SERVER_TRANSITIONS, CLIENT_TRANSITIONS, their SINGLE_CHUNK_ and _BATCH_ twins)::

    client REQUEST(slot, gen, token, cap)     -> server ring CAS READY(gen) -> READING(token)
    server STATUS(OK, nbytes, checksum)       -> PAYLOAD (nbytes raw bytes; skipped when nbytes == 0)
    client verifies checksum, COMMIT(token)   -> server ring CAS READING(token) -> FREE, logs the commit
    server COMMITTED(OK)                      -> client hands the payload to its caller
    COMMITTED lost: client RESOLVE(slot, gen, token) on another endpoint -> RESOLVED(resolution)

Single-chunk (the replaced design, kept so the harness can show what it loses): LEGACY_REQUEST(slot,
single-chunk capability) -> STATUS -> PAYLOAD; the server finalises on its own send completion; no token,
no ack. Its own machine pair (`SingleChunkServerRead`, `SingleChunkClientRead`), chosen by
`server_machine` / `client_machine`. The message type keeps its wire name LEGACY_REQUEST (it shows in
error messages); everywhere else in code the design is called single-chunk.

Driving the machines (every await bounded by the caller's timeouts)::

    # server: one CommitLog per server process; one ServerRead per request received on an endpoint
    srv = server_machine(protocol)(RingKey(ring.secret, ring.ring_id), commit_log, slots=ring.slots)
    action = srv.on_request(buf)              # buf: a fresh zeroed 128-byte buffer received into
    while not isinstance(action, (Done, Close)):
        try:
            match a := action:
                case BeginRead():             # begin_read_single_chunk(slot, lease) if a.single_chunk
                    code, info = ring.begin_read(a.slot, a.generation, a.token, lease)
                    action = srv.on_begin_read(code, info.generation, info.nbytes, info.checksum)
                case SendStatus():  await send(a.data)  # or inline_message(a.data, payload) if a.inline
                                    if a.nbytes and not a.inline: await send(payload_view(a.slot, a.nbytes))
                                    action = srv.on_sent()
                case SendFrame():   await send(a.data);                      action = srv.on_sent()
                case AwaitCommit(): await recv(buf2 := zeroed 128 bytes);    action = srv.on_commit(buf2)
                case Finalise():    ok = ring.commit_read | release_read | finalise_single_chunk (by a.kind)
                                    action = srv.on_finalised(ok)            # no await in between
                case Fence():       ring.release_read(a.slot, a.generation, a.token)
                                    info = ring.info(a.slot)                 # no await in between
                                    action = srv.on_fenced(info.generation, info.state,
                                                           info.last_commit_token,
                                                           ring.committed_token(a.slot, a.generation))
        except Exception as exc:              # reset, timeout, cancel
            action = srv.on_error(repr(exc))  # Finalise("release") if a slot is held, else Close
    # Done: wait for the next request on this endpoint. Close: close it.
    # finally (cancelled): if srv.holds_slot: ring.release_read(srv.slot, srv.generation, srv.token)

    # client: one ClientRead (SingleChunkClientRead: token 0), with a fresh new_token(), per attempt
    cr = client_machine(protocol)(d.slot, d.generation, new_token(), d.capability, d.nbytes, d.checksum)
    try:
        await send(encode(cr.request_frame()))
        await recv(buf); n = cr.on_status(buf)      # raises the mapped error -> FAILED
        if n: await recv(out[:n])
        commit = cr.on_payload(checksum(out[:n]))   # TruncatedError -> FAILED
        if commit is None: return out               # single-chunk: DONE
        await send(encode(commit)); await recv(buf); cr.on_committed(buf)
        return out                                  # DONE
    except TransportError raised by cr: pass        # the machine has moved already
    except Exception as exc: cr.on_error(exc)       # FAILED before COMMIT, IN_DOUBT after
    if cr.state is FAILED: raise cr.error           # not committed: retry if cr.error.retryable
    for each other endpoint, while time is left:    # IN_DOUBT
        try: await send(encode(cr.resolve_frame())); await recv(buf); cr.on_resolved(buf); return out
        except ...: as above
        if cr.state is FAILED: raise cr.error       # NOT_COMMITTED: read again
        if cr.resolution is Resolution.UNKNOWN: break
    raise cr.error                                  # InDoubtError: report it, never retry
"""

from transport.protocol import batch, client, commitlog, frames, keys, server, states
from transport.protocol.batch import *  # noqa: F403
from transport.protocol.client import *  # noqa: F403
from transport.protocol.commitlog import *  # noqa: F403
from transport.protocol.frames import *  # noqa: F403
from transport.protocol.keys import *  # noqa: F403
from transport.protocol.server import *  # noqa: F403
from transport.protocol.states import *  # noqa: F403

__all__ = [
    *frames.__all__,
    *keys.__all__,
    *commitlog.__all__,
    *states.__all__,
    *client.__all__,
    *server.__all__,
    *batch.__all__,
]
