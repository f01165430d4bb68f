"""Worker progress runs with the cyclic GC held off (see `transport.progress.progress` for the deadlock
a collection inside ucxx's listener callback caused), and the collector's state is restored after."""

from __future__ import annotations

import gc

import pytest

from transport.progress import progress


class RecordingWorker:
    """Records whether the collector was on while the worker progressed (pure logic: no UCX)."""

    def __init__(self, progressed: bool, fail: bool = False) -> None:
        self.progressed = progressed
        self.fail = fail
        self.gc_during: list[bool] = []

    def progress_once(self) -> bool:
        self.gc_during.append(gc.isenabled())
        if self.fail:
            raise RuntimeError("worker failed")
        return self.progressed

    def progress(self) -> None:
        self.gc_during.append(gc.isenabled())


@pytest.mark.parametrize("progressed", [True, False])
def test_progress_holds_the_collector_off_and_restores_it(progressed: bool) -> None:
    assert gc.isenabled()
    worker = RecordingWorker(progressed)
    assert progress(worker) is progressed
    assert worker.gc_during == ([False, False] if progressed else [False])
    assert gc.isenabled()


def test_collector_state_restored_when_progress_raises_and_left_off_when_it_was_off() -> None:
    with pytest.raises(RuntimeError):
        progress(RecordingWorker(True, fail=True))
    assert gc.isenabled()
    gc.disable()
    try:
        progress(RecordingWorker(True))
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()
