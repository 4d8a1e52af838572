"""Who may talk to the studio, and how much they may send.

The studio reads and writes the files of whoever started it, so a request must come from the
page it served:

- every request, on loopback too, carries the token printed once in the URL: in the URL itself
  (the first load), in the cookie that first load sets, or in an `X-Studio-Token` header. Other
  users of the machine can reach a loopback port; they cannot read the terminal or the cookie;
- bound to loopback (the default), the Host header must name that loopback address, which
  stops another web site from reaching it through a DNS name it re-points at 127.0.0.1;
- a POST must carry JSON (a cross-site form cannot send that without asking first, and the
  studio answers no such question) and, where the browser names an Origin, come from this host;
- a body over the limit is refused before it is read to the end.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from urllib.parse import parse_qs

from fastapi import HTTPException

MAX_BODY = 1 << 20  # bytes; a principle file is a few kilobytes
COOKIE = "cai_studio_token"


def cookie_name(port: int) -> str:
    """A browser keeps one cookie jar per host, whatever the port: two studios need two names."""
    return f"{COOKIE}_{port}"


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

    def __init__(self, app, host: str, port: int, token: str, max_body: int = MAX_BODY):
        if not token:
            raise ValueError("the studio needs a token")
        self.app, self.token, self.max_body = app, token.encode(), max_body
        self.cookie = cookie_name(port)
        self.loopback = is_loopback(host.strip("[]"))
        names = {host, "localhost", "127.0.0.1", "[::1]"} if self.loopback else set()
        self.hosts = {f"{h}:{port}" for h in names} | names

    def _given(self, scope, headers: dict) -> list[str]:
        """Every token the request offers. The cookie header is split by hand: other pages on this
        host may have set cookies that the standard parser gives up on, losing ours with them."""
        given = [headers.get("x-studio-token", "")]
        given += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie:
                given.append(value.strip('"'))
        return [g for g in given if g]

    def _refusal(self, scope, headers: dict) -> tuple[int, str] | None:
        given = self._given(scope, headers)
        if not given:
            return 401, "this studio needs its token: open it with the URL it printed"
        if not any(secrets.compare_digest(g.encode(), self.token) for g in given):
            return 403, "wrong token: open the studio with the URL it printed"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.loopback and host not in self.hosts:
            return await send_json(send, 403, f"unexpected Host {host!r}: open the studio at the address it printed")
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await send_json(send, *refusal)
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
