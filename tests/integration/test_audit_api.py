"""``GET /api/v1/audit``, ``/audit/keys`` and ``/audit/head`` against the real stack.

Records for the filter tests are written as the broker writes them (``trail.append`` into
the outbox, chained by the broker's own chainer); each test filters on session ids and actors
of its own, so records the stack writes for its own actions never get in the way.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import text

from broker import app_state
from broker.audit import trail
from broker.audit.records import AuditEntry, AuditKind, ChainedRecord
from broker.audit.signing import PublicKeys, public_key_from_pem
from broker.audit.verify import Checkpoint, verify_records
from tests.support.broker_server import RunningBroker
from tests.support.metrics import moved, scrape, value


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


async def _append(broker: RunningBroker, *entries: AuditEntry) -> None:
    await trail.append(broker.app[app_state.SESSIONMAKER], *entries)


async def _get(broker: RunningBroker, path: str) -> dict[str, Any]:
    reply = await broker.request("GET", path)
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def _records(broker: RunningBroker, **query: Any) -> list[dict[str, Any]]:
    """Every record ``query`` selects, page by page."""
    records: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):  # bounded: more pages than any test makes
        params = [(k, v) for k, vs in query.items() for v in (vs if isinstance(vs, list) else [vs])]
        if cursor is not None:
            params.append(("cursor", cursor))
        page = await _get(broker, "/api/v1/audit?" + urlencode(params))
        records += page["records"]
        cursor = page["next_cursor"]
        if cursor is None:
            return records
    raise AssertionError("pagination never ended")


def _entry(kind: AuditKind, session_id: str, **fields: Any) -> AuditEntry:
    actor = fields.pop("actor", "sideband")
    return AuditEntry(kind, actor, fields.pop("body", {"n": 1}), session_id=session_id, **fields)


async def test_each_filter_selects_exactly_its_records(broker: RunningBroker) -> None:
    a, b = _id("sess_a"), _id("sess_b")
    key_actor = f"key:{_id('key')}"
    await _append(
        broker,
        _entry(AuditKind.SESSION_CREATED, a, actor=key_actor, at="2026-01-01T10:00:00.000000Z"),
        _entry(AuditKind.TOOL_REQUESTED, a, tool="lookup_order", at="2026-01-01T10:00:01.000000Z"),
        _entry(
            AuditKind.TOOL_DENIED,
            a,
            tool="refund",
            decision="deny",
            at="2026-01-01T10:00:02.000000Z",
        ),
        _entry(
            AuditKind.TOOL_SUCCEEDED,
            a,
            tool="lookup_order",
            decision="allow",
            at="2026-01-01T10:00:03.500000Z",
        ),
        _entry(AuditKind.SESSION_ENDED, a, at="2026-01-01T10:00:04.000000Z"),
        _entry(AuditKind.SESSION_CREATED, b, actor=key_actor, at="2026-01-01T10:00:00.500000Z"),
        _entry(AuditKind.TOOL_REQUESTED, b, tool="refund", at="2026-01-01T10:00:05.000000Z"),
    )

    def kinds(records: list[dict[str, Any]]) -> list[str]:
        return [r["kind"] for r in records]

    whole_a = await _records(broker, session_id=a)
    assert kinds(whole_a) == [
        "session.created",
        "tool.requested",
        "tool.denied",
        "tool.succeeded",
        "session.ended",
    ]
    seqs = [r["seq"] for r in whole_a]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert {r["session_id"] for r in whole_a} == {a}
    assert whole_a[2]["body"] == {"n": 1} and whole_a[2]["decision"] == "deny"

    refund = await _records(broker, tool="refund", session_id=[a])
    assert kinds(refund) == ["tool.denied"]
    both_refunds = [r for r in await _records(broker, tool="refund") if r["session_id"] in (a, b)]
    assert [r["session_id"] for r in both_refunds] == [a, b]

    repeated = await _records(broker, session_id=a, kind=["tool.denied", "session.ended"])
    comma = await _records(broker, session_id=a, kind="tool.denied,session.ended")
    assert kinds(repeated) == kinds(comma) == ["tool.denied", "session.ended"]

    by_key = await _records(broker, actor=key_actor)
    assert [(r["session_id"], r["kind"]) for r in by_key] == [
        (a, "session.created"),
        (b, "session.created"),
    ]
    assert kinds(await _records(broker, session_id=a, decision="allow")) == ["tool.succeeded"]

    # since is inclusive, until exclusive; any zone is taken and compared in UTC.
    window = await _records(
        broker,
        session_id=a,
        since="2026-01-01T11:00:01+01:00",
        until="2026-01-01T10:00:03.5Z",
    )
    assert kinds(window) == ["tool.requested", "tool.denied"]
    # Finer than the records' microseconds: rounded up, so bounds keep their meaning.
    later = await _records(broker, session_id=a, since="2026-01-01t10:00:03.500000001z")
    assert kinds(later) == ["session.ended"]
    through = await _records(broker, session_id=a, until="2026-01-01T10:00:03.500000001Z")
    assert kinds(through)[-1] == "tool.succeeded"
    exact = await _records(broker, session_id=a, since="2026-01-01T10:00:03.500000000Z")
    assert kinds(exact) == ["tool.succeeded", "session.ended"]
    assert await _records(broker, session_id=a, until="2026-01-01T10:00:00Z") == []
    assert await _records(broker, session_id=_id("sess_none")) == []


async def test_pages_follow_the_cursor_with_no_gap_and_no_duplicate(broker: RunningBroker) -> None:
    session = _id("sess_pages")
    await _append(
        broker, *(_entry(AuditKind.TOOL_REQUESTED, session, body={"i": i}) for i in range(7))
    )
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = f"/api/v1/audit?session_id={session}&limit=3"
        page = await _get(broker, query + (f"&cursor={cursor}" if cursor else ""))
        pages.append(page["records"])
        if len(pages) == 1:
            # Chained meanwhile: a later page finds it, an earlier one never shifts.
            await _append(broker, _entry(AuditKind.TOOL_REQUESTED, session, body={"i": 7}))
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and str(page["records"][-1]["seq"]) not in cursor
    assert [len(p) for p in pages] == [3, 3, 2]
    bodies = [r["body"]["i"] for p in pages for r in p]
    assert bodies == list(range(8))
    seqs = [r["seq"] for p in pages for r in p]
    assert seqs == sorted(set(seqs))
    one_page = await _get(broker, f"/api/v1/audit?session_id={session}&limit=500")
    assert [r["seq"] for r in one_page["records"]] == seqs
    assert one_page["next_cursor"] is None
    # Exactly a page: no next page is promised that would come back empty.
    exact = await _get(broker, f"/api/v1/audit?session_id={session}&limit=8")
    assert len(exact["records"]) == 8 and exact["next_cursor"] is None


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("limit=%C2%B2", "limit"),
        ("limit=-1", "limit"),
        ("cursor=not-a-cursor!", "cursor"),
        ("cursor=" + _cursor("seq:-1"), "cursor"),
        ("cursor=" + _cursor("seq:1x"), "cursor"),
        ("cursor=" + _cursor("12"), "cursor"),
        ("cursor=", "cursor"),
        ("since=yesterday", "since"),
        ("since=2026-01-01T10:00:00", "since"),
        ("until=2026-13-01T10:00:00Z", "until"),
        ("since=0001-01-01T00:00:00%2B14:00", "since"),
        ("kind=tool.exploded", "kind"),
        ("kind=nope,tool.requested", "kind"),
        ("session_id=a&session_id=b", "session_id"),
        ("tool=" + "t" * 201, "tool"),
        ("verbose=1", "verbose"),
    ],
)
async def test_bad_queries_are_400_invalid_query(
    broker: RunningBroker, query: str, param: str
) -> None:
    reply = await broker.request("GET", f"/api/v1/audit?{query}")
    assert (reply.status, reply.code) == (400, "invalid_query"), reply.text
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert reply.json()["param"] == param


@pytest.mark.parametrize("path", ["/api/v1/audit", "/api/v1/audit/keys", "/api/v1/audit/head"])
async def test_only_audit_read_or_admin_reads_the_trail(broker: RunningBroker, path: str) -> None:
    backend = await broker.new_key("sessions:create", "monitor:read")
    refused = await broker.request("GET", path, token=backend)
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    anonymous = await broker.request("GET", path, token=None)
    assert (anonymous.status, anonymous.code) == (401, "missing_credentials")
    reviewer = await broker.new_key("audit:read")
    assert (await broker.request("GET", path, token=reviewer)).status == 200
    assert (await broker.request("GET", path)).status == 200  # the admin key


async def test_the_keys_verify_what_the_api_serves(broker: RunningBroker) -> None:
    """The published key is this instance's, and with it alone the whole chain the API
    serves verifies (every record's hash, signature and link)."""
    session = _id("sess_keys")
    await _append(broker, _entry(AuditKind.TAMPER_DETECTED, session, actor="page"))
    keys = (await _get(broker, "/api/v1/audit/keys"))["keys"]
    signer = broker.app[app_state.AUDIT].signer
    assert [(k["key_id"], k["current"]) for k in keys] == [(signer.key_id, True)]
    assert keys[0]["public_key"] == signer.public_pem
    assert "PRIVATE" not in str(keys)
    assert keys[0]["added_at"] is not None
    trusted = PublicKeys([public_key_from_pem(k["public_key"]) for k in keys])
    chain = [ChainedRecord.from_json(r) for r in await _records(broker, limit=500)]
    report = verify_records(chain, trusted)
    assert report.ok, report.failure
    assert report.records == len(chain) >= 2  # the key's own record and the tamper one


async def test_an_old_key_stays_published_and_is_not_current(broker: RunningBroker) -> None:
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(
            text(
                "INSERT INTO audit_keys (key_id, public_key, added_at)"
                " VALUES ('0000000000000000', 'old pem', '2020-01-01 00:00:00')"
            )
        )
    keys = (await _get(broker, "/api/v1/audit/keys"))["keys"]
    assert [(k["key_id"], k["current"]) for k in keys] == [
        ("0000000000000000", False),
        (broker.app[app_state.AUDIT].signer.key_id, True),
    ]


async def test_the_head_is_the_newest_record_signed(broker: RunningBroker) -> None:
    session = _id("sess_head")
    await _append(broker, _entry(AuditKind.OPS_HANGUP, session, actor="key:admin"))
    head = await _get(broker, "/api/v1/audit/head")
    newest = (await _records(broker, session_id=session))[-1]
    assert head["type"] == "audit.checkpoint"
    assert (head["seq"], head["hash"], head["signature"], head["key_id"]) == (
        newest["seq"],
        newest["hash"],
        newest["signature"],
        newest["key_id"],
    )
    assert head["at"].endswith("Z")
    keys = (await _get(broker, "/api/v1/audit/keys"))["keys"]
    public = public_key_from_pem(keys[0]["public_key"])
    public.verify(bytes.fromhex(head["signature"]), bytes.fromhex(head["hash"]))
    # It is a checkpoint verify --expect-head takes; the chain as served matches it.
    checkpoint = Checkpoint.from_json(head)
    chain = [ChainedRecord.from_json(r) for r in await _records(broker, limit=500)]
    report = verify_records(chain, PublicKeys([public]), expect_head=checkpoint)
    assert report.ok, report.failure


async def test_an_empty_chain_has_no_head(broker: RunningBroker) -> None:
    """Nothing chained (here: every record removed, as by someone with the database): 404
    ``audit_empty``, not a made-up genesis checkpoint, and an empty first page."""
    trail_ = broker.app[app_state.AUDIT]
    await trail_.chain_pending()
    async with broker.app[app_state.SESSIONMAKER].begin() as s:
        await s.execute(text("DELETE FROM audit_pending"))
        await s.execute(text("DELETE FROM audit_records"))
    reply = await broker.request("GET", "/api/v1/audit/head")
    assert (reply.status, reply.code) == (404, "audit_empty")
    assert await _get(broker, "/api/v1/audit") == {"records": [], "next_cursor": None}


async def test_the_session_detail_links_to_its_audit_records(broker: RunningBroker) -> None:
    session = await broker.create_session(tools=["lookup_order"])
    await _append(broker, _entry(AuditKind.TOOL_REQUESTED, session["id"], tool="lookup_order"))
    detail = await broker.get_session(session["id"])
    url = detail["audit_url"]
    # Absolute, like the create reply's URLs (BROKER_PUBLIC_URL, else the address reached).
    assert url.startswith(("http://", "https://"))
    assert url.endswith(f"/api/v1/audit?session_id={session['id']}")
    path = url[url.index("/api/v1/audit") :]
    records = (await _get(broker, path))["records"]
    assert "tool.requested" in [r["kind"] for r in records]
    assert {r["session_id"] for r in records} == {session["id"]}


async def test_metrics_count_what_this_instance_chained(broker: RunningBroker) -> None:
    before = await scrape(broker)
    await _append(broker, *(_entry(AuditKind.TOOL_REQUESTED, _id("sess_m")) for _ in range(4)))
    await _get(broker, "/api/v1/audit/head")  # chains what is pending
    after = await scrape(broker)
    assert moved(before, after, "broker_audit_records_chained_total") >= 4
    assert value(after, "broker_audit_records_chained_total") == broker.app[app_state.AUDIT].chained
    assert ("broker_audit_pending", frozenset()) in after
    assert value(after, "broker_audit_pending") == 0
