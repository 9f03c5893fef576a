"""The uploader is woken by sealing (inotify on ``outbox/sealed``), not by a rescan timer.

Real mosquitto and the in-memory test responder of tests/test_uploader.py. The idle
uploader's safety rescan is set to 10 minutes here, so only the wake-up can make it find
a recording within the few seconds these tests allow.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from buffers.outbox import Outbox, OutboxState
from buffers.outbox_watch import SealedWatch, WatchError
from tests.helpers import reaped
from tests.mqtt_broker import Broker
from tests.test_uploader import (  # noqa: F401 - start_broker: a pytest fixture
    Responder,
    Running,
    _daemon_conf,
    _start_daemon,
    add_entry,
    settings,
    start_broker,
    states,
    wait_until,
)

NEVER_S = 600.0  # the safety rescan in these tests: longer than any test
WOKEN_WITHIN_S = 5.0  # a woken uploader finds it well within this (a rescan: NEVER_S)


def is_acked(outbox: Outbox, rec: str) -> bool:
    return states(outbox)[rec] is OutboxState.ACKED


@pytest.fixture
def broker(start_broker: Callable[..., Broker]) -> Broker:  # noqa: F811 - the fixture
    return start_broker()


def test_the_watch_reports_renames_and_creations_into_the_directory(tmp_path: Path):
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    calls = threading.Semaphore(0)
    with SealedWatch(sealed) as watch:
        watch.start(calls.release)
        (tmp_path / "staged").mkdir()
        os.rename(tmp_path / "staged", sealed / "entry-1")  # how Outbox.commit lands one
        assert calls.acquire(timeout=WOKEN_WITHIN_S), "rename into sealed/ not reported"
        (sealed / "entry-2").mkdir()
        assert calls.acquire(timeout=WOKEN_WITHIN_S), "mkdir in sealed/ not reported"
        (tmp_path / "elsewhere").mkdir()
        assert not calls.acquire(timeout=0.3), "a change outside sealed/ was reported"
    watch.close()  # idempotent


def test_no_directory_no_watch_and_a_clear_error(tmp_path: Path):
    with pytest.raises(WatchError, match=r"inotify_add_watch for .*missing"):
        SealedWatch(tmp_path / "missing")


def test_a_sealed_recording_wakes_the_idle_uploader(tmp_path: Path, broker: Broker):
    outbox = Outbox(tmp_path / "outbox")
    with (
        Responder(broker) as store,
        SealedWatch(outbox.state_dir(OutboxState.SEALED)) as watch,
        Running(outbox, settings(broker), rescan_s=NEVER_S) as run,
    ):
        watch.start(run.uploader.wake)
        wait_until(lambda: run.uploader.stats().connected, "the uploader connected")
        time.sleep(0.5)  # it has listed the empty outbox and waits
        for seq in (1, 2, 3):  # each while the uploader is idle again
            rec, blob = add_entry(outbox, seq, 50_000)
            store.wait_stored({rec}, timeout=WOKEN_WITHIN_S)
            assert store.stored[rec] == blob
            wait_until(partial(is_acked, outbox, rec), "acked")


def test_the_daemon_watches_its_outbox(tmp_path: Path, broker: Broker):
    conf = _daemon_conf(tmp_path, broker)
    outbox = Outbox(tmp_path / "data" / "outbox")
    log = tmp_path / "uploader.log"
    with Responder(broker) as store, reaped(_start_daemon(conf, log)) as daemon:
        wait_until(lambda: "connected to" in log.read_text(), "the daemon connected")
        time.sleep(1.5)  # past its first listing and a 1 s rescan, were there one
        rec, _blob = add_entry(outbox, 1, 20_000)
        store.wait_stored({rec}, timeout=WOKEN_WITHIN_S)
        daemon.terminate()
        try:
            assert daemon.wait(15) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not stop\n{log.read_text()}")
    assert "no outbox watch" not in log.read_text()
