"""PostgreSQL connections lost at the worst moments: a write whose COMMIT reached the
server but whose answer was lost is not run again (it may have been applied: running it
again applied it twice), and a server restart does not spend a call's retries on the
pool's dead connections one by one."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from nacf_core.errors import AlreadyExists, Unavailable
from nacf_core.store import open_store


class _Proxy:
    """A TCP proxy to PostgreSQL. Armed with :meth:`drop_next_commit`, it forwards the
    next COMMIT, lets the server carry it out, swallows the answer and cuts the client's
    connection: the client cannot know whether the transaction was applied.
    :meth:`cut_all` closes every proxied connection (a server restart, as the pool sees
    it)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self._armed = threading.Event()
        self.dropped = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_commit(self) -> None:
        self.dropped.clear()
        self._armed.set()

    def cut_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def close(self) -> None:
        _close(self.lsock)
        self.cut_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, server]
            hold = threading.Event()
            threading.Thread(target=self._up, args=(client, server, hold), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, hold),
                             daemon=True).start()

    def _up(self, client, server, hold) -> None:
        try:
            while data := client.recv(65536):
                if self._armed.is_set() and b"COMMIT" in data:
                    self._armed.clear()
                    hold.set()  # the answer is not passed on
                    server.sendall(data)
                    time.sleep(0.3)  # the server commits and answers
                    self.dropped.set()
                    _close(client)
                    _close(server)
                    return
                server.sendall(data)
        except OSError:
            pass
        _close(server)

    @staticmethod
    def _down(server, client, hold) -> None:
        try:
            while data := server.recv(65536):
                if not hold.is_set():
                    client.sendall(data)
        except OSError:
            pass
        _close(client)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def proxied(pg_url, key):
    """``(store through the proxy, store direct, proxy)`` on one fresh schema."""
    url, dsn = pg_url
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    proxy = _Proxy(host, port)
    user = f"{parts.username}@" if parts.username else ""
    via = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    direct = open_store(url, key=key)
    store = open_store(via, key=key)
    try:
        yield store, direct, proxy
    finally:
        store.close()
        direct.close()
        proxy.close()


def test_a_write_whose_commit_answer_is_lost_is_not_run_again(proxied):
    store, direct, proxy = proxied
    proxy.drop_next_commit()
    with pytest.raises(Unavailable, match="may or may not have been saved"):
        store.put_template("alice", b"t" * 64, "m1", create_only=True)
    assert proxy.dropped.is_set()
    assert direct.get_template("alice").version == 1  # applied, once
    # the caller reads the state before repeating, as the message says
    with pytest.raises(AlreadyExists):
        store.put_template("alice", b"t" * 64, "m1", create_only=True)

    proxy.drop_next_commit()
    with pytest.raises(Unavailable, match="not retried"):
        store.register_failure("alice", 5, 60)
    assert direct.get_lockout("alice").failures == 1  # counted once, not twice
    assert store.register_failure("alice", 5, 60)[0] == 2


def test_reads_are_still_retried_and_a_restart_costs_no_call(proxied):
    """Every pooled connection dies at once (what a server restart does to the pool):
    the next call reconnects instead of failing on the dead ones one by one."""
    store, direct, proxy = proxied
    direct.put_template("bob", b"t" * 64, "m1", create_only=True)
    with contextlib.ExitStack() as held:  # four connections in the pool, all idle
        for conn in [held.enter_context(store._pool.connection()) for _ in range(4)]:
            conn.execute("SELECT 1")
    store.max_retries = 3  # fewer retries than dead connections
    proxy.cut_all()
    assert store.get_template("bob").version == 1
    assert store.register_failure("bob", 5, 60)[0] == 1


def test_connections_notice_a_vanished_server_and_the_url_can_say_otherwise(pg_url, key):
    url, _ = pg_url
    for extra, idle in (("", "10"), ("&keepalives_idle=30", "30")):
        store = open_store(url + extra, key=key)
        try:
            with store._pool.connection() as conn:
                params = conn.info.get_parameters()
                assert params["keepalives_idle"] == idle
                assert params["tcp_user_timeout"] == "20000" and params["keepalives"] == "1"
        finally:
            store.close()
