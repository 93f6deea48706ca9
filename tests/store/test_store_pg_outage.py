"""PostgreSQL connections lost at the worst moments: a write whose COMMIT reached the
server but whose answer was lost is not run again (it may have been applied: running it
again applied it twice), a server restart does not spend a call's retries on the pool's
dead connections one by one, and a server that stops answering without closing its
connections holds a call no longer than the query timeout."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

import pytest

from nacf_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from nacf_core.store import open_store

#: the end of every answer of the server: ReadyForQuery ('Z', length 5, status)
_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"
#: the COMMIT statement as the client sends it (NUL-terminated): not a parameter that
#: holds the word (migration 4's name, written at every open of a new store, does)
_COMMIT = b"COMMIT\x00"
#: how long the proxy waits for the server to answer a COMMIT it will drop
ANSWER_WAIT_S = 60


class _Proxy:
    """A TCP proxy to PostgreSQL. Armed with :meth:`drop_next_commit`, it forwards the
    next COMMIT, waits for the server's answer (the transaction is then applied and
    visible, however long the server took), swallows it and cuts the client's
    connection: the client cannot know whether the transaction was applied.
    :meth:`cut_all` closes every proxied connection (a server restart, as the pool sees
    it). :meth:`freeze` stops passing bytes on, either way, with every connection left
    open (a stopped server process, whose host still acknowledges TCP), until
    :meth:`thaw`; :meth:`freeze_at_next_commit` freezes just before a COMMIT."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self._armed = threading.Event()
        self.dropped = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._running.set()
        self._freeze_at_commit = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._running.clear()

    def freeze_at_next_commit(self) -> None:
        self._freeze_at_commit.set()

    def thaw(self) -> None:
        self._freeze_at_commit.clear()
        self._running.set()

    def drop_next_commit(self) -> None:
        self.dropped.clear()
        self._armed.set()

    def cut_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def close(self) -> None:
        self.thaw()
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
            hold, answered = threading.Event(), threading.Event()
            threading.Thread(target=self._up, args=(client, server, hold, answered),
                             daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, hold, answered),
                             daemon=True).start()

    def _up(self, client, server, hold, answered) -> None:
        try:
            while data := client.recv(65536):
                if self._freeze_at_commit.is_set() and _COMMIT in data:
                    self._freeze_at_commit.clear()
                    self._running.clear()
                self._running.wait()  # frozen: held until thawed
                if self._armed.is_set() and _COMMIT in data:
                    self._armed.clear()
                    hold.set()  # the answer is not passed on
                    server.sendall(data)
                    # the server has committed once it answers: a fixed pause here was
                    # too short for a loaded server, whose commit the test then missed
                    if answered.wait(ANSWER_WAIT_S):
                        self.dropped.set()
                    _close(client)
                    _close(server)
                    return
                server.sendall(data)
        except OSError:
            pass
        _close(server)

    def _down(self, server, client, hold, answered) -> None:
        held = b""
        try:
            while data := server.recv(65536):
                self._running.wait()
                if not hold.is_set():
                    client.sendall(data)
                    continue
                held += data
                if _READY_FOR_QUERY in held:  # the COMMIT's answer ends with it
                    answered.set()
        except OSError:
            pass
        _close(client)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture(params=[""], ids=["default"])
def proxied(request, pg_url, key):
    """``(store through the proxy, store direct, proxy)`` on one fresh schema; the
    store URL through the proxy gets ``request.param`` appended."""
    url, dsn = pg_url
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    proxy = _Proxy(host, port)
    user = f"{parts.username}@" if parts.username else ""
    via = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    direct = open_store(url, key=key)
    store = open_store(via + request.param, key=key)
    try:
        yield store, direct, proxy
    finally:
        store.close()
        direct.close()
        proxy.close()


def _slow_commits(store, table: str, seconds: float) -> None:
    """Every transaction that updates ``table`` takes ``seconds`` more to commit (a
    deferred trigger sleeps at COMMIT), as on a loaded server."""
    store._run(lambda tx: tx.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"))
    store._run(lambda tx: tx.execute(
        f"CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON {table} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"))


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

    # a server slow to commit (a loaded machine): applied all the same, once
    _slow_commits(direct, "lockouts", 0.5)
    proxy.drop_next_commit()
    with pytest.raises(Unavailable, match="not retried"):
        store.register_failure("alice", 5, 60)
    assert proxy.dropped.is_set()
    assert direct.get_lockout("alice").failures == 1  # counted once, not twice
    assert store.register_failure("alice", 5, 60)[0] == 2


def test_a_nonce_whose_commit_answer_is_lost_is_not_taken_for_a_replay(proxied):
    """A device-proof nonce recorded by a COMMIT whose answer was lost: the call failed
    UNAVAILABLE (outcome unknown), and its retry found the nonce used, a replay alert for a
    proof used once. The call now runs again and recognises the row it wrote; another call
    with that nonce is a replay still."""
    store, direct, proxy = proxied
    t0 = 1_790_000_000.0
    proxy.drop_next_commit()
    assert store.use_nonce("hs-1", "f" * 64, t0 + 120, now=t0) is True
    assert proxy.dropped.is_set()  # the first COMMIT's answer was lost
    assert direct.use_nonce("hs-1", "f" * 64, t0 + 120, now=t0 + 1) is False
    assert store.use_nonce("hs-1", "f" * 64, t0 + 120, now=t0 + 1) is False


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


def _in_thread(fn):
    """Run ``fn`` in a thread; ``(thread, box)`` where ``box`` gets its result or error."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


FROZEN_WAIT_S = 60  # far beyond the 1-s query timeout: only a call that hangs reaches it


@pytest.mark.parametrize("proxied", ["&query_timeout=1"], indirect=True)
def test_a_server_that_stops_answering_costs_a_call_the_query_timeout_not_its_thread(
        proxied):
    store, direct, proxy = proxied
    assert store.query_timeout_s == 1.0
    direct.put_template("carol", b"t" * 64, "m1", create_only=True)
    store.get_template("carol")  # a pooled connection, through the proxy

    # a read while the server is stopped: UNAVAILABLE, saying why; not run again
    proxy.freeze()
    t, box = _in_thread(lambda: store.get_template("carol"))
    t.join(FROZEN_WAIT_S)
    assert not t.is_alive(), "the read still waits for a server that stopped answering"
    assert isinstance(box.get("error"), Unavailable), box
    assert "did not answer within 1 s (query_timeout)" in str(box["error"])
    proxy.thaw()
    assert store.get_template("carol").version == 1  # a fresh connection, at once
    assert store.ping() is None

    # a write whose COMMIT the stopped server holds: its outcome is unknown, as for a lost
    # answer, and it is not run again; the server rolls it back when it sees the
    # connection gone
    proxy.freeze_at_next_commit()
    t, box = _in_thread(lambda: store.register_failure("carol", 5, 60))
    t.join(FROZEN_WAIT_S)
    assert not t.is_alive(), "the write still waits for a server that stopped answering"
    assert isinstance(box.get("error"), Unavailable), box
    msg = str(box["error"])
    assert "did not answer within 1 s" in msg and "may or may not have been saved" in msg
    proxy.thaw()
    assert direct.get_lockout("carol") is None or direct.get_lockout("carol").failures <= 1
    assert store.register_failure("carol", 5, 60)[0] == \
        direct.get_lockout("carol").failures  # the store works again, nothing torn


@pytest.mark.parametrize("proxied", ["&query_timeout=0"], indirect=True)
def test_query_timeout_0_waits_for_the_server(proxied):
    """With no limit a stopped server holds the call, and the call completes when the
    server runs again (the watchdog must not cut slow but live transactions it does not
    watch)."""
    store, direct, proxy = proxied
    assert store.query_timeout_s == 0 and store._pool.watchdog is None
    direct.put_template("dave", b"t" * 64, "m1", create_only=True)
    store.get_template("dave")
    proxy.freeze()
    t, box = _in_thread(lambda: store.get_template("dave"))
    t.join(2.5)
    assert t.is_alive()  # still waiting: nothing cut it
    proxy.thaw()
    t.join(FROZEN_WAIT_S)
    assert not t.is_alive() and box["value"].version == 1


def test_query_timeout_is_checked(pg_url, key):
    url, _ = pg_url
    for bad in ("abc", "-1", "nan", "1e9"):
        with pytest.raises(InvalidArgument, match="'query_timeout' must be a number of "
                                                  "seconds in \\[0, 86400\\]"):
            open_store(f"{url}&query_timeout={bad}", key=key)
    store = open_store(url, key=key)
    try:
        assert store.query_timeout_s == 30.0  # the default
    finally:
        store.close()


def test_a_lease_whose_commit_answer_is_lost_does_not_give_its_leftovers_back_twice(proxied):
    """A new lease's transaction gives the expired lease's leftovers back; when its
    COMMIT's answer is lost, the server may have applied it, so the leftovers are not
    given back again with the next lease (the bucket would grow by them twice)."""
    from nacf_core.ratelimit import TokenLeases

    store, direct, proxy = proxied
    t0 = 1_790_000_000.0
    rl = TokenLeases(store.take_tokens, 0.0, 100.0, max_lease=10, hold_s=0.5)
    assert rl.take("app", t0) is True and rl.held("app") == 9  # bucket 90
    proxy.drop_next_commit()
    with pytest.raises(Unavailable, match="may or may not have been saved"):
        rl.take("app", t0 + 1)  # expired: gives 9 back, takes 10 (bucket 89), answer lost
    assert proxy.dropped.is_set()
    assert rl.take("app", t0 + 2) is True  # a new lease of 10: bucket 79, 9 held
    assert rl.held("app") == 9
    # every token is counted once: 100 - 10 - 10 + 9 - 10 (the lost lease's 10 are spent)
    assert direct.take_tokens("app", 0.0, 100.0, 1000, now=t0 + 2) == 79


def test_waiting_for_a_free_pooled_connection_is_bounded_by_the_query_timeout(pg_url, key):
    """Every pooled connection lent out (calls held by a slow server): a further call
    waits for one no longer than ``query_timeout`` (it waited 30 s whatever the URL
    said) and its UNAVAILABLE names the pool size to raise."""
    url, _ = pg_url
    store = open_store(f"{url}&pool_size=1&query_timeout=1", key=key)
    try:
        store.put_template("erin", b"t" * 64, "m1", create_only=True)
        with store._pool.connection():  # the pool's only connection, held
            t, box = _in_thread(lambda: store.get_template("erin"))
            t.join(15)  # far beyond 1 s, well below the old 30 s
            assert not t.is_alive(), "the call still waits for a pooled connection"
        assert isinstance(box.get("error"), Unavailable), box
        msg = str(box["error"])
        assert "within 1 s" in msg and "pool_size=1" in msg and "query_timeout" in msg, msg
        assert store.get_template("erin").version == 1  # free again: served at once
    finally:
        store.close()
    # no query timeout: the wait stays the old bound (a pool exhausted for 30 s)
    store = open_store(f"{url}&query_timeout=0", key=key)
    try:
        assert store._pool.wait_s(bounded=True) == 30.0
    finally:
        store.close()


def test_a_key_rotation_whose_commit_answer_is_lost_leaves_the_process_on_the_stores_key(
        proxied, pg_url):
    """`rotate_key` whose COMMIT reached the server and whose answer was lost: the process
    went back to the old key while the store was under the new one, and each of its
    later writes failed FAILED_PRECONDITION ("rotated ... restart it with the new key").
    It now reads the store's key id after the failure: rotated, and said so."""
    import os

    from nacf_core.store.crypto import Cipher

    store, direct, proxy = proxied
    store.put_template("alice", b"t" * 64, "m1")
    new = os.urandom(32)
    proxy.drop_next_commit()
    assert store.rotate_key(new).rows == 1
    assert proxy.dropped.is_set()
    assert store.key_id == Cipher(new).key_id
    store.put_template("bob", b"u" * 64, "m1")  # FAILED_PRECONDITION before
    with open_store(pg_url[0], key=new) as s:  # the store is under the new key
        assert [t.blob for t in s.iter_templates()] == [b"t" * 64, b"u" * 64]


def test_a_backend_terminated_mid_write_leaves_nothing_half_written(pg_url, key,
                                                                    monkeypatch):
    """The server process of a write is terminated (pg_terminate_backend: an
    administrator, a failover) between its statements: the transaction is rolled back by
    the server, so nothing of it stays (no template without its version bump, no
    session), and the call runs again on a new connection, once (the version moves by
    one). Terminated at every try, it is UNAVAILABLE with nothing written, and the next
    call works on the same store object."""
    import uuid

    import psycopg

    from nacf_core.store import _sql

    url, dsn = pg_url
    tag = f"nacf-term-{uuid.uuid4().hex[:10]}"
    store = open_store(f"{url}&application_name={tag}", key=key)
    execute = _sql.Tx.execute
    kills = {"left": 0}

    def terminating(tx, sql, params=()):
        if kills["left"] and sql.startswith(("INSERT INTO templates", "INSERT INTO sessions")):
            kills["left"] -= 1
            with psycopg.connect(dsn, autocommit=True) as admin:
                assert admin.execute("SELECT COUNT(pg_terminate_backend(pid)) FROM "
                                     "pg_stat_activity WHERE application_name = %s",
                                     (tag,)).fetchone()[0] >= 1
        return execute(tx, sql, params)

    monkeypatch.setattr(_sql.Tx, "execute", terminating)

    def state():
        return store._run(lambda tx: tx.one(
            "SELECT u.template_version, t.version, (SELECT COUNT(*) FROM sessions) FROM "
            "users u JOIN templates t ON t.user_id = u.user_id WHERE u.user_id = 'alice'"),
            write=False)

    try:
        assert store.put_template("alice", b"t1", "m") == 1
        kills["left"] = 1
        assert store.put_template("alice", b"t2", "m") == 2
        kills["left"] = 1
        store.create_session("alice", 60.0)
        assert state() == (2, 2, 1) and store.get_template("alice").blob == b"t2"
        kills["left"] = store.max_retries
        with pytest.raises(Unavailable, match="terminating connection"):
            store.put_template("alice", b"t3", "m")
        kills["left"] = store.max_retries
        with pytest.raises(Unavailable, match="terminating connection"):
            store.create_session("alice", 60.0)
        assert kills["left"] == 0
        assert state() == (2, 2, 1) and store.get_template("alice").blob == b"t2"
        assert store.put_template("alice", b"t3", "m") == 3
    finally:
        store.close()


def test_a_server_refusing_connections_mid_life_is_unavailable_with_nothing_written(
        proxied):
    """The server goes away and refuses new connections (here the proxy in front of it
    stops listening and cuts its connections): each call is UNAVAILABLE saying the
    server is unreachable, reads and writes alike, and nothing is half-written."""
    store, direct, proxy = proxied
    store.put_template("alice", b"t1", "m")
    proxy.close()
    for call in (lambda: store.get_template("alice"),
                 lambda: store.put_template("alice", b"t2", "m"),
                 lambda: store.create_session("alice", 60.0), store.ping):
        with pytest.raises(Unavailable, match="unreachable|unavailable"):
            call()
    assert direct.get_template("alice").version == 1
    assert direct.count_active_sessions() == 0



@pytest.mark.parametrize("lost", ["migrations", "key check"])
def test_an_open_whose_commit_answer_is_lost_opens(pg_url, key, monkeypatch, lost):
    """The connection drops as the server answers a COMMIT of the store's open (its
    migrations on a new schema, or its key check): running either again changes nothing
    (a migration applied is skipped, the key check is inserted once), so the open runs
    it again and opens, instead of failing UNAVAILABLE 'the change may or may not have
    been saved ... read the state before repeating the call', which no caller of an
    open can act on: a replica starting during a failover did not start."""
    from nacf_core.store.postgres import PostgresStore

    url, _ = pg_url
    parts = urlsplit(url)
    proxy = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = f"{parts.username}@" if parts.username else ""
    via = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
    if lost == "migrations":
        proxy.drop_next_commit()
    else:  # the key check's transaction is the one after the migrations'
        migrate = PostgresStore.migrate

        def then_arm(self):
            out = migrate(self)
            proxy.drop_next_commit()
            return out

        monkeypatch.setattr(PostgresStore, "migrate", then_arm)
    try:
        with open_store(via, key=key) as store:
            assert proxy.dropped.is_set()
            monkeypatch.undo()
            assert store.schema_version() == 9
            store.put_template("alice", b"t", "m")
        with open_store(url, key=key) as direct:
            assert direct.get_template("alice").blob == b"t"
        with pytest.raises(FailedPrecondition, match="Wrong template key"):
            open_store(url, key=bytes(32))
    finally:
        proxy.close()


def test_close_waits_for_a_transaction_in_flight_and_leaves_no_connection(pg_url, key):
    """``close()`` while another thread's transaction runs (a maintenance sweep at
    shutdown): it closed that transaction's connection under it (libpq's connection
    freed while the other thread waited on it), the transaction failed, was run again on
    a new connection, which went back to the closed pool and stayed open on the server
    for the life of the process. close() now waits for the transactions in flight
    (``close_wait_s`` at most, as on SQLite), which end normally, then closes every
    connection; a call made after it is refused."""
    import time as time_
    import uuid

    import psycopg

    from nacf_core.errors import FailedPrecondition

    url, dsn = pg_url
    tag = f"nacf-close-{uuid.uuid4().hex[:10]}"
    store = open_store(f"{url}&application_name={tag}", key=key)
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def held(tx):
        runs.append(1)
        entered.set()
        release.wait(30)
        return tx.one("SELECT 42")[0]

    call, box = _in_thread(lambda: store._run(held, write=False))
    assert entered.wait(10)
    closer, _ = _in_thread(store.close)
    closer.join(1.0)  # on the old code close() returned at once, under the transaction
    release.set()
    call.join(30)
    closer.join(30)
    assert not call.is_alive() and not closer.is_alive()
    assert box.get("value") == 42 and runs == [1], box
    with pytest.raises(FailedPrecondition, match="closed"):
        store.get_user("alice")
    with psycopg.connect(dsn, autocommit=True) as admin:
        deadline = time_.monotonic() + 10
        while admin.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE "
                            "application_name = %s", (tag,)).fetchone()[0]:
            assert time_.monotonic() < deadline, "a connection of the closed store is open"
            time_.sleep(0.05)
