"""A body nested past the JSON decoder's depth, sent to the console's sign-in (open to anyone
who can reach it) or the admin API, is the caller's error: 400 with a plain reason. It was a
bare 500, logged nowhere."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway.config import load_config
from gateway.server.app import build_app
from gateway.server.build import build_gateway
from tests.gateway_proc import OPERATOR, write_config

ORIGIN = "http://127.0.0.1:9"


async def test_a_body_nested_too_deeply_is_400(tmp_path: Path) -> None:
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}
    sessions = {"secret": "k8Jd93ndk2Lqp0Zx7vBn"}
    policy = 'version: "1"\ndefault: deny\n'
    config = write_config(tmp_path, policy, servers, 9, admin=OPERATOR, sessions=sessions)
    app = build_app(build_gateway(load_config(config)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as http:
        for depth in (10, 2000):  # 2000: within the sign-in's 4 KiB
            body = b'{"token":"a","operator":' + b"[" * depth + b"]" * depth + b"}"
            headers = {"content-type": "application/json", "origin": ORIGIN}
            answer = await http.post("/console/login", content=body, headers=headers)
            assert answer.status_code == 400, answer.text
        admin = {
            "authorization": "Bearer celgate-test-operator",
            "content-type": "application/json",
        }
        deep = b'{"note":' + b"[" * 20_000 + b"]" * 20_000 + b"}"
        answer = await http.post("/admin/approvals/apr_x/approve", content=deep, headers=admin)
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"] == "the body is nested too deeply"
        deeper = b'{"token":"a","operator":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        answer = await http.post("/console/login", content=deeper, headers=headers)
        assert answer.status_code == 413  # past the sign-in's bound: never parsed
