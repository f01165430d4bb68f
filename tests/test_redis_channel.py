"""The Redis descriptor bus against a real embedded redis-server: XADD, XREADGROUP, XACK,
XAUTOCLAIM, control faults, and a stream that survives a kill and a restart."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chaos import redis_server
from chaos.faults.base import FaultSpec
from chaos.faults.control import ControlFaults
from chaos.redis_channel import RedisChannelClient, RedisQueue, StreamRef
from chaos.redis_server import RedisServer, RedisServerError
from transport.events import NullSink


def descriptor(slot: int, generation: int = 1) -> dict[str, object]:
    return {"host": "h", "ports": [1], "ring_id": "r", "slot": slot, "generation": generation,
            "nbytes": 1, "checksum": 0, "secret": "s", "seq": slot}  # fmt: skip


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()
    assert not srv.alive()


def queue_for(server: RedisServer, visibility: float = 10.0, **kwargs: object) -> RedisQueue:
    return RedisQueue(StreamRef.for_run(server.url, visibility_timeout=visibility), **kwargs)  # type: ignore[arg-type]


def test_relative_directories_start_as_chaos_run_gives_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chaos run` writes under ./reports: redis-server changes into --dir before opening --logfile,
    so relative paths made it exit 1 (README command 1 failed every redis scenario that way)."""
    monkeypatch.chdir(tmp_path)
    srv = RedisServer(Path("reports/run/redis"), log_path=Path("reports/run/logs/redis.log")).start()
    try:
        assert srv.alive()
        assert (tmp_path / "reports/run/logs/redis.log").stat().st_size > 0
    finally:
        srv.stop()
    assert not srv.alive()


def test_publish_claim_ack_drains_the_stream(server: RedisServer) -> None:
    queue = queue_for(server)
    for slot in range(5):
        queue.publish(descriptor(slot))
    a = queue.consumer_client("consumer-0")
    got = a.claim(3, timeout=0.5)
    assert [d.key for d in got] == ["0:1", "1:1", "2:1"]
    assert all(d.delivery == 1 and not d.duplicate and d.published_at > 0 for d in got)
    assert got[0].descriptor["seq"] == 0
    queue._count()
    stats = queue.snapshot()
    assert (stats.in_flight, stats.pending) == (3, 2)
    assert a.ack([d.key for d in got]) == 3
    b = queue.consumer_client("consumer-1")
    rest = b.claim(10, timeout=0.5)
    assert [d.key for d in rest] == ["3:1", "4:1"]
    assert not queue.empty()
    assert RedisChannelClient("consumer-2", queue.ref).ack(["3:1"]) == 0  # acks only what it holds
    assert b.ack(["3:1", "4:1"]) == 2
    assert not queue.empty(), "not counted since the last XADD: not known to be empty"
    queue._count()
    assert queue.empty()
    assert queue.snapshot().acked == 5
    queue.close()


def test_nack_and_a_dead_consumer_hand_entries_out_again_at_once(server: RedisServer) -> None:
    queue = queue_for(server, visibility=30.0)
    for slot in range(4):
        queue.publish(descriptor(slot))
    a = queue.consumer_client("consumer-0")
    b = queue.consumer_client("consumer-1")
    first = a.claim(4, timeout=0.5)
    assert len(first) == 4
    assert b.claim(4, timeout=0.1) == []  # all pending with consumer-0, visibility 30 s
    assert a.nack(["0:1"]) == 1
    again = b.claim(4, timeout=0.1)  # XAUTOCLAIM takes the nacked one now, not in 30 s
    assert [d.key for d in again] == ["0:1"] and again[0].delivery > 1
    assert queue.consumer_died("consumer-0") == 3  # the runner saw consumer-0 die
    taken = b.claim(4, timeout=0.1)
    assert sorted(d.key for d in taken) == ["1:1", "2:1", "3:1"]
    queue.close()


def test_visibility_timeout_redelivers_a_stuck_consumers_entries(server: RedisServer) -> None:
    queue = queue_for(server, visibility=0.3)
    queue.publish(descriptor(7))
    assert [d.key for d in queue.consumer_client("consumer-0").claim(1, 0.5)] == ["7:1"]
    later = queue.consumer_client("consumer-1")
    assert later.claim(1, 0.05) == []
    time.sleep(0.4)
    assert [d.key for d in later.claim(1, 0.05)] == ["7:1"]
    queue.close()


def test_control_faults_add_the_entry_twice_and_late(server: RedisServer) -> None:
    now = time.time()
    specs = [
        FaultSpec.parse(0, kind="duplicate_descriptor", probability=1.0, window={"start": 0.0, "end": 1.0}),
        FaultSpec.parse(
            1, kind="delay_descriptor", probability=1.0, delay=0.5, window={"start": 1.0, "end": 2.0}
        ),
    ]
    control = ControlFaults(specs, seed=1, events=NullSink(), run_start=now)
    queue = queue_for(server, control=control)
    queue.publish(descriptor(1), now=now + 0.1)  # duplicated
    queue.publish(descriptor(2), now=now + 1.1)  # delayed 0.5 s
    assert queue.client.xlen(queue.ref.stream) == 2  # the twin entries; the delayed one waits
    assert queue.busy()
    queue.tick(now + 1.3)
    assert queue.client.xlen(queue.ref.stream) == 2
    queue.tick(now + 1.7)
    assert queue.client.xlen(queue.ref.stream) == 3 and not queue.busy()
    got = queue.consumer_client("c").claim(5, 0.2)
    assert [(d.key, d.duplicate) for d in got] == [("1:1", False), ("1:1", True), ("2:1", False)]
    assert queue.snapshot().duplicated == 1 and queue.snapshot().delayed == 1
    queue.close()


def test_stream_and_pending_entries_survive_kill_and_restart(server: RedisServer) -> None:
    queue = queue_for(server, visibility=30.0)
    for slot in range(3):
        queue.publish(descriptor(slot))
    a = queue.consumer_client("consumer-0")
    held = a.claim(1, 0.5)
    old_pid = server.pid
    os.kill(server.pid, signal.SIGKILL)  # no shutdown, no save: only the append-only file
    server.process.wait(5)  # type: ignore[union-attr]
    queue.publish(descriptor(3))  # accepted while Redis is down: waits in the outbox
    assert queue.busy() and not queue.empty()
    assert a.claim(1, timeout=0.05) == []  # a consumer's claim returns nothing, no exception
    server.restart()
    assert server.pid != old_pid
    queue.release_held()
    assert not queue.busy()
    assert queue.consumer_died("consumer-0") == 1  # its pending entry is still pending after restart
    b = queue.consumer_client("consumer-1")
    keys: list[str] = []
    while got := b.claim(10, 0.2):
        keys += [d.key for d in got]
    keys.sort()
    assert keys == ["0:1", "1:1", "2:1", "3:1"], "nothing lost across the restart"
    assert held[0].key == "0:1"
    queue.close()


def test_paused_redis_costs_time_not_entries(server: RedisServer) -> None:
    queue = queue_for(server)
    a = queue.consumer_client("consumer-0")
    queue.publish(descriptor(0))
    queue._count()
    os.kill(server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        queue.publish(descriptor(1))  # the runner's publish gives up fast and keeps the entry
        assert queue.busy()
        queue.tick()
        assert queue.snapshot().pending == 2 and not queue.empty()  # answered without Redis
        assert time.monotonic() - started < 2.0, "the runner must not hang on a paused Redis"
        assert a.claim(1, timeout=0.1) == []
    finally:
        os.kill(server.pid, signal.SIGCONT)
    queue.release_held()
    got = [d.key for d in a.claim(5, 0.5)]
    assert got == ["0:1", "1:1"]


def test_an_xadd_whose_reply_was_lost_is_not_added_twice(server: RedisServer) -> None:
    queue = queue_for(server)
    queue.publish(descriptor(0))
    # as if the reply to the next XADD timed out after Redis applied it: the entry is in, the id not
    # recorded, the entry still in the outbox
    queue.client.xadd(queue.ref.stream, {"d": "{}", "k": "1:1", "p": "0", "c": "0"}, id="2-1")
    queue.publish(descriptor(1))
    assert queue.client.xlen(queue.ref.stream) == 2 and not queue.busy()
    queue.publish(descriptor(2))
    assert [e[0] for e in queue.client.xrange(queue.ref.stream)] == [b"1-1", b"2-1", b"3-1"]
    queue.close()


def test_client_pickles_without_its_connection(server: RedisServer) -> None:
    import pickle

    queue = queue_for(server)
    client = queue.consumer_client("consumer-0")
    client.claim(1, 0.01)  # opens a connection
    copy = pickle.loads(pickle.dumps(client))
    assert copy.name == "consumer-0" and copy.ref == queue.ref and copy._client is None
    queue.close()


def test_scenario_model_channel_and_redis_target(tmp_path: Path) -> None:
    from chaos.scenario import ScenarioError, load_scenario

    base = (
        "name: r\nduration: 5s\n{channel}faults:\n  - {{kind: pause, target: redis, at: 1s, duration: 1s}}\n"
    )
    ok = tmp_path / "ok.yaml"
    ok.write_text(base.format(channel="channel: redis\n"))
    scenario = load_scenario(ok)
    assert scenario.channel == "redis" and scenario.faults[0].target == "redis"
    bad = tmp_path / "bad.yaml"
    bad.write_text(base.format(channel=""))
    with pytest.raises(
        ScenarioError, match=r"bad.yaml:4: faults\[0\].target: target redis needs `channel: redis`"
    ):
        load_scenario(bad)
    entry = tmp_path / "entry.yaml"
    entry.write_text("name: e\nduration: 5s\nconsumers: {entrypoint: mypkg.train}\n")
    with pytest.raises(ScenarioError, match=r"entry.yaml:3: consumers.entrypoint"):
        load_scenario(entry)


def test_a_picked_port_taken_before_redis_binds_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process took the port between free_port and redis's bind: the run moves, not fails."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = redis_server.free_port
        monkeypatch.setattr(redis_server, "free_port", lambda host: next(picks, None) or real_free_port(host))
        with RedisServer(tmp_path / "moved") as server:
            assert server.port != taken and server.starts == 2, (server.port, server.starts)
            assert redis.Redis.from_url(server.url).ping()
        # A port the caller chose is kept: the clients were told it, so failing is right.
        with pytest.raises(RedisServerError, match="exited"):
            RedisServer(tmp_path / "given", port=taken).start()
