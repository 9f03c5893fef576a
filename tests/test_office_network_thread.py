"""`linetap-office serve`'s MQTT network thread (headoffice.service.run_network_thread)
against the real mosquitto on 127.0.0.1:1883.

The housekeeper publishes acks from its own thread. paho writes to the socket in the
caller's thread unless its own network thread runs, and with TLS two threads on one
socket broke the connection ("decryption failed or bad record mac": mosquitto dropped
the worker and a device waited out its 30 s ack timeout; found by
bench/upload_receiver_capacity.py with two workers). So: no publish from another thread
may reach the socket itself, and the loop ends cleanly on stop, or stops the worker if
the network thread dies.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import publish
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from headoffice import service

BROKER = ("127.0.0.1", 1883)


def new_client() -> mqtt.Client:
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"linetap-test-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )


def wait_until(condition: threading.Event, what: str, timeout_s: float = 10.0) -> None:
    assert condition.wait(timeout_s), what


def test_publishes_from_another_thread_are_written_by_the_network_thread() -> None:
    client = new_client()
    # (thread, whether paho's network thread was gone): paho writes from the caller's
    # thread only when it has no network thread.
    writers: list[tuple[threading.Thread, bool]] = []
    real_loop_write = client.loop_write

    def recording_loop_write() -> MQTTErrorCode:
        writers.append((threading.current_thread(), client._thread is None))
        return real_loop_write()

    client.loop_write = recording_loop_write  # type: ignore[method-assign]
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    stop = threading.Event()
    client.connect_async(*BROKER)
    serving = threading.Thread(target=service.run_network_thread, args=(client, stop))
    serving.start()
    try:
        wait_until(connected, "no connection to the broker on 127.0.0.1:1883")
        topic = f"linetap-test/{uuid.uuid4().hex}"
        infos = [client.publish(topic, b"ack", qos=1) for _ in range(50)]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        stop.set()
        serving.join(timeout=10)
    assert not serving.is_alive(), "run_network_thread did not return after stop"
    publisher = threading.current_thread()
    assert writers, "nothing was written"
    assert publisher not in [thread for thread, _ in writers], (
        "a publish wrote to the socket outside paho's network thread"
    )
    # The DISCONNECT at stop may race the network thread's own exit (it ends its loop on
    # seeing the disconnect coming): written by run_network_thread's thread then, but
    # only once the network thread is gone, so never two threads on the socket.
    assert all(gone for thread, gone in writers if thread is serving), writers
    assert not client.is_connected()  # disconnected cleanly on stop


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_network_thread_stops_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    client = new_client()
    connected = threading.Event()

    def on_connect(*_args: object) -> None:
        connected.set()

    def on_message(*_args: object) -> None:
        raise RuntimeError("a bug in a callback ends paho's network thread")

    client.on_connect = on_connect
    client.on_message = on_message
    topic = f"linetap-test/{uuid.uuid4().hex}"
    stop = threading.Event()
    client.connect_async(*BROKER)
    serving = threading.Thread(target=service.run_network_thread, args=(client, stop))
    with caplog.at_level(logging.ERROR, logger="headoffice.service"):
        serving.start()
        wait_until(connected, "no connection to the broker on 127.0.0.1:1883")
        client.subscribe(topic, qos=1)
        time.sleep(0.2)
        publish.single(topic, b"boom", qos=1, hostname=BROKER[0], port=BROKER[1])
        serving.join(timeout=10)
    assert not serving.is_alive(), "the worker kept waiting with no network thread"
    assert stop.is_set()
    assert "MQTT network thread ended unexpectedly" in caplog.text
