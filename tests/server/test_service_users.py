"""GetUser and ListUsers: what they say of each user, and what a page costs."""

from __future__ import annotations

import base64

import pytest
from _server_support import eeg, signal_block, sqlite_service


@pytest.fixture
def svc(tmp_path, model_path):
    service = sqlite_service(tmp_path, model_path, lockout_threshold=3, lockout_seconds=60)
    now = [1_800_000_000.0]
    service.clock = lambda: now[0]
    service.now = now
    yield service
    service.store.close()


def test_a_lockout_that_ran_out_leaves_no_consecutive_failures(svc):
    """Once a lockout has run out the user starts a new streak (the next rejection is the
    first of it, not the fourth), so GetUser and ListUsers say 0 consecutive failures, not
    the count that locked the user: they said 3 (locked: false) until the next attempt."""
    svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))])
    t = svc.now[0]
    for i in range(3):  # three rejections: locked for 60 s
        svc.store.register_failure("a", 3, 60, now=t + i)
    u = svc.get_user("a")
    assert (u.locked, u.consecutive_failures) == (True, 3)
    svc.now[0] = t + 2 + 60.5  # the lockout is over
    u = svc.get_user("a")
    assert (u.locked, u.locked_until, u.consecutive_failures) == (False, 0.0, 0)
    assert [(u.user_id, u.consecutive_failures) for u in svc.list_users()[0]] == [("a", 0)]
    # and the store agrees: the next rejection is the first of a new streak
    assert svc.store.register_failure("a", 3, 60, now=svc.now[0])[0] == 1
    u = svc.get_user("a")
    assert (u.locked, u.consecutive_failures) == (False, 1)


def test_a_page_of_users_with_headsets_is_read_in_two_store_transactions(svc):
    """ListUsers read each listed user's headsets in a transaction of its own: a page of
    1 000 users with headsets took 1 001 transactions (0.25 s on a local PostgreSQL,
    seconds across a network). Now the page and its headsets are two reads, and say the
    same as GetUser."""
    svc.enroll("u00", [signal_block(eeg(1, 3, 0, 40))])
    blob = svc.store.get_template("u00").blob
    users = [f"u{i:02d}" for i in range(40)]
    for u in users[1:]:
        svc.store.put_template(u, blob, svc.model_version)
    for u in users[::2]:
        svc.store.register_device(u, f"hs-{u}-b", "secret-0123456789abcdef")
        svc.store.register_device(u, f"hs-{u}-a", "secret-abcdef0123456789")
    store = svc.store
    run = store._run
    reads = []

    def counted(fn, **k):
        reads.append(k.get("write", True))
        return run(fn, **k)

    store._run = counted
    try:
        first, token = svc.list_users(25)
        second, last = svc.list_users(25, token)
    finally:
        del store._run
    assert reads == [False, False, False, False]  # a page and its headsets, twice
    assert last == "" and [u.user_id for u in first + second] == users
    assert [u.device_ids for u in first + second] == [svc.get_user(u).device_ids
                                                      for u in users]
    assert first[0].device_ids == ["hs-u00-a", "hs-u00-b"] and first[1].device_ids == []


def test_the_rejection_that_locks_a_user_after_a_lower_threshold_is_counted_as_a_lockout(
        tmp_path, model_path, caplog):
    """A user with 4 consecutive failures under a threshold of 10, and the server restarted
    with --lockout-threshold 3: the next rejection locks the user, but the service took
    its count (5, above 3) for a failure counted while already locked, so the call got
    FAILED_PRECONDITION 'locked' instead of its rejection, and the lockout was neither
    counted in nacfauth_lockouts_total nor logged as a 'user locked out' security event."""
    import logging

    svc = sqlite_service(tmp_path, model_path, lockout_threshold=3, lockout_seconds=60,
                         require_device_proof=False)
    try:
        svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))])
        t = svc.clock()
        for _ in range(4):  # under the old threshold
            svc.store.register_failure("a", 10, 60, now=t)
        with caplog.at_level(logging.INFO, logger="nacf"):
            r = svc.authenticate("a", signal_block(eeg(2, 3, 40, 8)))  # an impostor
        assert not r.accepted
        assert svc.get_user("a").locked
        assert svc.metrics.lockouts_total._value.get() == 1
        assert [x for x in caplog.records if getattr(x, "security_event_type", "") == "lockout"]
    finally:
        svc.store.close()


def test_a_page_of_users_too_large_for_one_response_is_cut_not_refused(tmp_path, model_path):
    """ListUsers accepts page sizes up to 1 000, but a page of long user ids (or of users
    with many headsets) can be larger than max_message_bytes: gRPC then refused to send
    it (RESOURCE_EXHAUSTED "SERVER: Sent message larger than max", counted OK in the RPC
    metrics) and no page size up to 1 000 ever got past those users. A page now holds
    at most page_size users and fewer when more would not fit, with a next_page_token to
    the rest, so paging through lists every user once."""
    import grpc

    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
    from nacf_core.server.app import NacfServer

    key = "key-admin-0123456789"
    svc = sqlite_service(tmp_path, model_path, grpc_address="127.0.0.1:0",
                         metrics_address="", max_message_bytes=64 * 1024,
                         api_keys={key: frozenset({"admin"})})
    svc.enroll("seed", [signal_block(eeg(1, 3, 0, 40))])
    blob = svc.store.get_template("seed").blob
    users = ["seed"] + [f"{i:04d}-" + "x" * 123 for i in range(600)]  # ~180 bytes each
    for u in users[1:]:
        svc.store.put_template(u, blob, svc.model_version)
    server = NacfServer(svc.config, svc, metrics=svc.metrics, sidecar=False).start()
    chan = grpc.insecure_channel(server.address)
    try:
        stub = pbg.AuthServiceStub(chan)
        md = (("x-api-key", key),)
        seen, token, pages = [], "", 0
        while True:
            page = stub.ListUsers(pb.ListUsersRequest(page_size=1000, page_token=token),
                                  metadata=md, timeout=30)
            assert page.ByteSize() <= 64 * 1024 and page.users
            seen += [u.user_id for u in page.users]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(users) and pages >= 2
        # a page that fits is as it was: page_size users
        small = stub.ListUsers(pb.ListUsersRequest(page_size=100), metadata=md, timeout=30)
        assert len(small.users) == 100 and small.next_page_token
        # a user whose record alone is larger than a response may be: said, not INTERNAL
        svc.config.max_message_bytes = 200
        with pytest.raises(grpc.RpcError) as e:
            stub.ListUsers(pb.ListUsersRequest(page_size=10), metadata=md, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'0000-x" in e.value.details() and "max_message_bytes (200" in e.value.details()
    finally:
        chan.close()
        server.stop(0)
        svc.store.close()


def test_a_user_too_large_for_one_response_is_resource_exhausted_and_counted_so(
        tmp_path, model_path):
    """GetUser of a user whose record is larger than max_message_bytes (hundreds of
    headsets with long ids) returned a response gRPC then refused to send: the client got
    RESOURCE_EXHAUSTED "Sent message larger than max", which said nothing of why, and the
    call was counted OK in nacfauth_auth_requests_total. As ListUsers does for a user
    alone too large for a page, the call is now RESOURCE_EXHAUSTED saying so (the user,
    the limit, the headset count, what to do), and counted RESOURCE_EXHAUSTED."""
    import time

    import grpc

    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
    from nacf_core.server.app import NacfServer

    key = "key-admin-0123456789"
    limit = 64 * 1024
    svc = sqlite_service(tmp_path, model_path, grpc_address="127.0.0.1:0",
                         metrics_address="", max_message_bytes=limit,
                         api_keys={key: frozenset({"admin"})})
    svc.enroll("many", [signal_block(eeg(1, 3, 0, 40))])
    blob = svc.store.get_template("many").blob
    svc.store.put_template("few", blob, svc.model_version)
    svc.store.register_device("few", "hs-few", "secret-0123456789abcdef")
    for i in range(300):  # ~250 bytes each: 75 KB of device ids
        svc.store.register_device("many", f"hs-{i:03d}-" + "x" * 240, "secret-0123456789abcdef")

    def counted():
        out = {}
        for m in svc.metrics.registry.collect():
            for smp in m.samples:
                if (smp.name == "nacfauth_auth_requests_total"
                        and smp.labels["method"] == "GetUser"):
                    out[smp.labels["status"]] = out.get(smp.labels["status"], 0) + smp.value
        return out

    server = NacfServer(svc.config, svc, metrics=svc.metrics, sidecar=False).start()
    chan = grpc.insecure_channel(server.address)
    try:
        stub = pbg.AuthServiceStub(chan)
        md = (("x-api-key", key),)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetUser(pb.GetUserRequest(user_id="many"), metadata=md, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        msg = e.value.details()
        assert "'many'" in msg and f"max_message_bytes ({limit}" in msg, msg
        assert "300 headsets" in msg, msg
        u = stub.GetUser(pb.GetUserRequest(user_id="few"), metadata=md, timeout=30).user
        assert list(u.device_ids) == ["hs-few"]
        t0 = time.monotonic()  # counted by the interceptor, a moment after the answer
        while counted() != {"RESOURCE_EXHAUSTED": 1, "OK": 1} and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert counted() == {"RESOURCE_EXHAUSTED": 1, "OK": 1}
    finally:
        chan.close()
        server.stop(0)
        svc.store.close()


def test_a_page_that_fits_only_without_its_token_is_cut_not_read_again_for_ever(
        tmp_path, model_path):
    """A page cut to fit a response keeps 1 KiB for its next_page_token, but the token of
    a 256-character id of 4-byte characters (what the store holds; the service takes
    128 at most, an older nacf or another tool may have written more) is base64 of 1 KiB:
    a page that fit in the room left but not with its real token was read again at the
    same size for ever, ListUsers never answering. Each new read now asks for fewer
    users than the last."""
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core.server import converters as cv
    from nacf_core.server.servicer import AuthServicer

    svc = sqlite_service(tmp_path, model_path)
    try:
        svc.enroll("seed", [signal_block(eeg(1, 3, 0, 40))])
        blob = svc.store.get_template("seed").blob
        users = [chr(0x1D400 + i) * 256 for i in range(4)]  # 4-byte characters
        for u in users:
            svc.store.put_template(u, blob, svc.model_version)
        page = svc.list_users(3)[0]
        body = pb.ListUsersResponse(users=[cv.user_message(u) for u in page]).ByteSize()
        svc.config.max_message_bytes = body + 1100  # room for the page, not its token
        reads = []
        list_users = svc.list_users

        def counted(*a, **k):
            reads.append(a)
            assert len(reads) < 20, "ListUsers reads the same page again and again"
            return list_users(*a, **k)

        svc.list_users = counted
        resp = AuthServicer.ListUsers.__wrapped__(
            AuthServicer(svc), pb.ListUsersRequest(page_size=3), None)
        assert resp.ByteSize() <= svc.config.max_message_bytes
        assert 1 <= len(resp.users) < 3 and resp.next_page_token
    finally:
        svc.store.close()


def test_a_listing_lists_every_user_present_throughout_once_whatever_changes_meanwhile(svc):
    """ListUsers pages in user id order and its token is the last id listed: a user
    present from the first page to the last is listed exactly once, however many users
    are enrolled or deleted between the pages; one deleted before its page is not
    listed, one enrolled past the last page read is, one enrolled before it is not
    (README's ListUsers row says so)."""
    put = svc.store.put_template
    for u in ("b", "d", "f", "h", "j", "l"):
        put(u, b"not-a-real-template", "m-1")
    seen, token = [], ""
    users, token = svc.list_users(2, token)
    seen += [u.user_id for u in users]
    assert seen == ["b", "d"] and token
    put("a", b"not-a-real-template", "m-1")  # before the cursor: not listed
    put("g", b"not-a-real-template", "m-1")  # past it: listed
    svc.delete_user("b")  # listed already
    svc.delete_user("h")  # not yet: not listed
    while token:
        users, token = svc.list_users(2, token)
        seen += [u.user_id for u in users]
    assert seen == ["b", "d", "f", "g", "j", "l"]
    # a token another listing issued, or one made up, is a position like any other
    forged = svc.list_users(1, base64.urlsafe_b64encode(b"e").decode())[0]
    assert [u.user_id for u in forged] == ["f"]
