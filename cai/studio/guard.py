"""Who may talk to the studio, and how much they may send.

The studio can write files, so a request must come from the page it served:

- bound to loopback (the default), the Host header must name that loopback address, which
  stops another web site from reaching it through a DNS name it re-points at 127.0.0.1;
- bound to another address (`--host`), every request needs the token printed once in the URL;
  the page trades it for a cookie on first load;
- a POST must carry JSON (a cross-site form cannot send that without asking first, and the
  studio answers no such question) and, where the browser names an Origin, come from this host;
- a body over the limit is refused before it is read to the end.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from fastapi import HTTPException

MAX_BODY = 1 << 20  # bytes; a principle file is a few kilobytes
COOKIE = "cai_studio_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BodyTooLarge(HTTPException):
    """Raised while the body streams in, so FastAPI passes it on as the 413 it is."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes")


async def send_json(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware enforcing the rules above on every HTTP request."""

    def __init__(self, app, host: str, port: int, token: str | None, max_body: int = MAX_BODY):
        self.app, self.token, self.max_body = app, token, max_body
        self.loopback = token is None
        names = {host, "localhost", "127.0.0.1", "[::1]"} if self.loopback else set()
        self.hosts = {f"{h}:{port}" for h in names} | names

    def _token_ok(self, scope, headers: dict) -> bool:
        if self.token is None:
            return True
        given = [headers.get("x-studio-token", "")]
        given += parse_qs(scope.get("query_string", b"").decode()).get("token", [])
        cookie = SimpleCookie(headers.get("cookie", ""))
        if COOKIE in cookie:
            given.append(cookie[COOKIE].value)
        return any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given if g)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.loopback and host not in self.hosts:
            return await send_json(send, 403, f"unexpected Host {host!r}: open the studio at the address it printed")
        if not self._token_ok(scope, headers):
            return await send_json(send, 403, "missing or wrong token: open the studio with the URL it printed")
        if scope["method"] == "POST":
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != host:
                return await send_json(send, 403, f"cross-origin request from {origin} refused")
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return await send_json(send, 415, "expected a JSON body (Content-Type: application/json)")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await send_json(send, 413, f"request body over {self.max_body} bytes")
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, limited_receive, send)
