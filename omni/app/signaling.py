"""WebRTC signaling checks and settings: reading an offer (SDP, JSON or the GA multipart form) and what it must hold
before aiortc sees it, whose memory a call uses, and which host addresses ICE offers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from omni.app.auth import KEY_KIND, USER_ID
from omni.streaming.events import parse_client_event, short_repr
from omni.streaming.frames import SessionUpdate

SUPPORTED_CODECS = {"audio": ("opus", "pcmu", "pcma"), "video": ("vp8", "h264")}


class OfferError(Exception):
    """A bad offer: answered with HTTP 400 and this message."""


class BodyTooLarge(OfferError):
    """The request body is over --max-body-kb: answered with HTTP 413."""


def restrict_ice_hosts(hosts: list[str]) -> None:
    """Offer only `hosts` as ICE host candidates, in every peer connection of this process.

    aioice has no per-connection setting for this: it asks the module function `get_host_addresses`, which
    leaves 127.0.0.1 out, so a loopback-only machine (CI's network namespace) would offer no candidate at all.
    Replacing that function is process-wide, hence done once, by the process's entry point (`omni serve`),
    never per server or session."""
    import aioice.ice

    chosen = list(hosts)

    def host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return list(chosen)

    aioice.ice.get_host_addresses = host_addresses


async def read_offer_form(request: web.Request) -> tuple[str, SessionUpdate | None]:
    """The GA signaling form: `sdp` (the offer) and optional `session` (a session object, JSON, as in
    `session.update`), both bounded by the app's client_max_size (the max_body_bytes limit)."""
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"body larger than {request.client_max_size} bytes") from None
    except (ValueError, web.HTTPException) as e:
        raise OfferError(f"malformed multipart form: {e}") from None
    sdp, session = form.get("sdp"), form.get("session")
    if not isinstance(sdp, str):
        raise OfferError('the multipart form needs a text field "sdp"')
    check_offer_sdp(sdp)
    if session is None:
        return sdp, None
    if not isinstance(session, str):
        raise OfferError('the form field "session" must be JSON text')
    try:
        action = parse_client_event({"type": "session.update", "session": json.loads(session)})
    except ValueError as e:  # json's errors and ProtocolError
        raise OfferError(f'form field "session": {e}') from None
    assert isinstance(action, SessionUpdate)
    return sdp, action


def check_offer_sdp(sdp: str) -> None:
    """Reject what is plainly not a usable offer, naming what is wrong (aiortc's own errors are terse)."""
    lines = [ln.strip() for ln in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0":
        raise OfferError('malformed SDP: it must start with "v=0"')
    media = [ln for ln in lines if ln.startswith("m=")]
    if not media:
        raise OfferError("malformed SDP: no media sections (m= lines)")
    audio = [ln for ln in media if ln.startswith("m=audio")]
    if not audio:
        raise OfferError("the offer has no audio track (no m=audio section): the assistant needs a microphone")
    for kind in ("audio", "video"):
        names = _rtpmap_names(lines, kind)
        if names and not any(n in SUPPORTED_CODECS[kind] for n in names):
            raise OfferError(
                f"unsupported {kind} codec(s) {sorted(set(names))}: supported are {', '.join(SUPPORTED_CODECS[kind])}"
            )


def _rtpmap_names(lines: list[str], kind: str) -> list[str]:
    names: list[str] = []
    section = None
    for ln in lines:
        if ln.startswith("m="):
            section = ln[2:].split(" ", 1)[0]
        elif section == kind and ln.startswith("a=rtpmap:"):
            parts = ln.split(" ", 1)
            if len(parts) == 2:
                names.append(parts[1].split("/", 1)[0].lower())
    return [n for n in names if n not in ("rtx", "red", "ulpfec", "flexfec-03", "telephone-event", "cn")]


async def read_offer(request: web.Request, limit: int) -> tuple[str, SessionUpdate | None]:
    """The offer's SDP, and the session settings of the GA multipart form (fields `sdp` and `session`); a body
    over `limit` bytes is BodyTooLarge, anything else wrong an OfferError."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    if request.content_type == "multipart/form-data":
        return await read_offer_form(request)
    try:
        body = await request.read()  # chunked: aiohttp stops at client_max_size (= limit)
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"body larger than {limit} bytes") from None
    if len(body) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise OfferError("body is not UTF-8 text") from None
    ctype = request.content_type
    if ctype == "application/json":  # {"type": "offer", "sdp": "..."} as some clients send it
        try:
            payload = json.loads(text)
        except ValueError as e:
            raise OfferError(f"malformed JSON: {e}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("sdp"), str):
            raise OfferError('JSON body must be an object with a string field "sdp"')
        if payload.get("type", "offer") != "offer":
            raise OfferError(f'JSON field "type" must be "offer", got {short_repr(payload.get("type"))}')
        text = payload["sdp"]
    elif ctype != "application/sdp":
        raise OfferError(
            f"Content-Type must be application/sdp (or application/json, multipart/form-data), got {ctype!r}"
        )
    check_offer_sdp(text)
    return text, None


def user_of(request: web.Request) -> dict[str, Any]:
    """Whose memory a call uses, as SessionConfig fields. With keys (omni.app.auth), the key's user, fixed; without,
    the `user_id` query parameter of the request (or `omni.user_id` in a session.update before the first
    reply); none of them: an anonymous call with session-only memory."""
    if request.get(KEY_KIND, "none") != "none":
        return {"user_id": request[USER_ID], "user_fixed": True}
    uid = request.query.get("user_id")
    if uid is not None and (not uid.strip() or len(uid) > 128):
        raise OfferError("user_id must be a non-empty string of <= 128 characters")
    return {"user_id": uid}
