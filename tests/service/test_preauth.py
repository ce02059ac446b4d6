"""Issue 17 items 5 and 8 in-process: the unauthenticated budget, what runs before and after
SigV4, and one 401 message for an unknown access key id and a wrong signature."""

from __future__ import annotations

import orjson
import pytest
from service_helpers import AKID, metadata

from xksproxy.runtime.rsgi import client_host
from xksproxy.service.app import asgi_client
from xksproxy.service.preauth import CLIENT_REASON, WORKER_REASON, UnauthenticatedBudget

META = "/demo/kms/xks/v1/keys/demo/metadata"


def test_budget_caps_each_client_and_the_worker() -> None:
    budget = UnauthenticatedBudget(per_worker=3, per_client=2)
    assert budget.enter("10.0.0.1") is None
    assert budget.enter("10.0.0.1") is None
    assert budget.enter("10.0.0.1") == CLIENT_REASON  # that client is at its cap ...
    assert budget.enter("10.0.0.2") is None  # ... another is not
    assert budget.enter("10.0.0.3") == WORKER_REASON  # but the worker is now full
    budget.leave("10.0.0.1")
    assert budget.enter("10.0.0.3") is None
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        budget.leave(client)
    assert budget.in_progress == 0 and budget.held_by("10.0.0.1") == 0


@pytest.mark.parametrize(
    ("peer", "host"),
    [("127.0.0.2:4711", "127.0.0.2"), ("[::1]:80", "::1"), ("", None), ("unix", "unix")],
)
def test_rsgi_peer_to_host(peer: str, host: str | None) -> None:
    assert client_host(peer) == host


def test_asgi_peer_to_host() -> None:
    assert asgi_client({"client": ("127.0.0.9", 5)}) == "127.0.0.9"
    assert asgi_client({}) is None


async def test_quota_and_admission_are_charged_only_after_sigv4(client, app) -> None:
    """The pre-auth slot is released once the signature is checked, before the admission hooks
    (in-flight gate, store quota) run; an unsigned request never reaches them."""
    order: list[str] = []

    def pre(ctx):
        order.append(f"pre-auth {ctx.client}")
        return lambda: order.append("pre-auth released")

    def admit(ctx):
        order.append(f"admission {ctx.access_key_id}")
        return lambda: order.append("admission released")

    app.pre_auth.append(pre)
    app.admission.append(admit)
    body = orjson.dumps({"requestMetadata": metadata("DescribeKey")})
    assert (await client.post(META, body)).status_code == 200
    assert order == [
        "pre-auth 127.0.0.1",  # httpx's ASGI transport reports this peer
        "pre-auth released",
        f"admission {AKID}",
        "admission released",
    ]
    order.clear()
    unsigned = await client.http.post(META, content=b"{}")
    assert unsigned.status_code == 401
    assert order == ["pre-auth 127.0.0.1", "pre-auth released"]


async def test_unknown_access_key_and_wrong_signature_get_one_answer(client) -> None:
    """Item 8: different messages would let anyone enumerate configured access key ids."""
    body = orjson.dumps({"requestMetadata": metadata("DescribeKey")})
    unknown = await client.post(META, body, akid="AKIAUNKNOWNUNKNOWN99")
    wrong = await client.post(META, body, secret="x" * 40)
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    assert unknown.json()["errorName"] == "AuthenticationFailedException"
    causes = [orjson.loads(line).get("authFailure") for line in client.log[-2:]]
    assert causes == ["unknown_access_key", "signature_mismatch"]  # the log keeps the cause
