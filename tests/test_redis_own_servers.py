"""The Redis client against redis-server processes of our own: a TLS server with a
certificate made for the test, a server without HELLO (as before Redis 6), and a master, its
replica and a sentinel that fails the master over while a broker uses it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import IN_CI, free_port, port_open, wait_for

from taskframe.brokers.base import Delivery, Message
from taskframe.brokers.redis import RedisBroker
from taskframe.exceptions import BrokerConnectionError, BrokerError

pytestmark = pytest.mark.redis


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (CI=true: these tests need it)")
        pytest.skip(f"{name} is not installed")
    return path


class Servers:
    """redis-server processes started by one test, stopped at its end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, port: int) -> int:
        process = subprocess.Popen(
            [_tool("redis-server"), *args, "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.processes.append(process)
        wait_for(lambda: port_open("127.0.0.1", port))
        return port

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop()


def test_tls_with_the_servers_certificate_authority(servers: Servers, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    servers.start(
        "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        port=port,
    )  # fmt: skip
    # Given the CA that signed the server's certificate, messages go over TLS
    store = RedisBroker(f"rediss://localhost:{port}/0", transport_options={"ssl_ca_certs": cert})
    store.publish("tlsq", Message(body=b"secret"))
    [delivery] = store.receive(["tlsq"], 1, 1.0)
    assert delivery.message.body == b"secret"
    delivery.ack()
    store.close()
    # Without it the certificate is refused, and the error says so
    untrusting = RedisBroker(f"rediss://localhost:{port}/0")
    with pytest.raises(BrokerConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.ensure_connection()
    untrusting.close()


def test_a_server_without_hello_is_spoken_to_in_resp2(servers: Servers) -> None:
    port = free_port()
    servers.start(
        "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "pw",
        "--rename-command", "HELLO", "",
        port=port,
    )  # fmt: skip
    store = RedisBroker(f"redis://:pw@127.0.0.1:{port}/3")
    store.publish("oldq", Message(body=b"resp2"))
    [delivery] = store.receive(["oldq"], 1, 1.0)
    assert delivery.message.body == b"resp2"
    delivery.ack()
    assert store.client.pool.get().protocol == 2
    store.close()
    # Asked for RESP3 explicitly, the server's refusal is the error
    strict = RedisBroker(f"redis://:pw@127.0.0.1:{port}/3", transport_options={"protocol": 3})
    with pytest.raises(BrokerError, match="HELLO"):
        strict.ensure_connection()
    strict.close()


@pytest.mark.slow
def test_a_sentinel_failover_moves_the_broker_to_the_new_master(
    servers: Servers, tmp_path: Path
) -> None:
    master = servers.start("--port", str(port := free_port()), "--bind", "127.0.0.1", port=port)
    replica = servers.start(
        "--port", str(port := free_port()), "--bind", "127.0.0.1",
        "--replicaof", "127.0.0.1", str(master),
        port=port,
    )  # fmt: skip
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {(sentinel := free_port())}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor tfmaster 127.0.0.1 {master} 1\n"
        "sentinel down-after-milliseconds tfmaster 1000\n"
    )
    servers.start(str(config), "--sentinel", port=sentinel)
    watcher = redis.Redis(port=sentinel)
    replicas = redis.Redis(port=replica)
    wait_for(lambda: replicas.info("replication")["master_link_status"] == "up", timeout=20)
    wait_for(lambda: watcher.execute_command("SENTINEL", "REPLICAS", "tfmaster"), timeout=20)

    store = RedisBroker(
        f"sentinel://127.0.0.1:{sentinel}/0", transport_options={"master_name": "tfmaster"}
    )
    store.publish("failq", Message(body=b"before"))
    store.publish("failq", Message(body=b"held"))  # the held publishing connection is open
    wait_for(lambda: replicas.llen("failq") == 2)  # replicated before the failover
    # When the sentinel promotes the replica (the old master becomes its replica)
    watcher.execute_command("SENTINEL", "FAILOVER", "tfmaster")
    wait_for(lambda: watcher.sentinel_get_master_addr_by_name("tfmaster")[1] == replica, 20)
    wait_for(lambda: replicas.info("replication")["role"] == "master", timeout=20)
    demoted = redis.Redis(port=master)
    wait_for(lambda: demoted.info("replication")["role"] == "slave", timeout=20)
    # Then the broker's next writes go to the new master, on connections opened anew (an
    # open one the old master refuses, READONLY, is dropped and the master asked for again)
    wait_for(lambda: _tried(store.publish, "failq", Message(body=b"after")), timeout=20)
    received: list[bytes] = []
    wait_for(lambda: _received(store, received) == 3, timeout=20)
    assert sorted(received) == [b"after", b"before", b"held"]
    assert replicas.llen("failq") == 0
    store.close()
    for client in (watcher, replicas, demoted):
        client.close()


def _tried(call: Callable[..., object], *args: object) -> bool:
    """True once ``call`` went through. Sentinel drops the clients of both servers as it
    reconfigures them, so a call may fail once: the caller tries again, as a worker's
    reconnect loop does."""
    try:
        call(*args)
    except BrokerConnectionError:
        return False
    return True


def _received(store: RedisBroker, bodies: list[bytes]) -> int:
    """Receive into ``bodies``; a receive whose reply a dropped connection lost gives its
    messages back at the next one."""
    deliveries: list[Delivery] = []
    if _tried(lambda: deliveries.extend(store.receive(["failq"], 10, 0.2))):
        bodies += [d.message.body for d in deliveries]
        store.ack_many(deliveries)
    return len(bodies)
