"""Client bytes that aiortc's data-channel code does not survive, caught before they reach it.

aiortc decodes a string message (SCTP PPID 51) as UTF-8 and checks the channel-open handshake (DCEP) with
`assert`s, inside the DTLS transport's receive task: a string message that is not UTF-8, a second open for a
stream already open or an open whose label is not UTF-8 raised there, killed the call's DTLS transport (its
traceback logged) and left the client waiting for answers that never came. `guard_data_channels` wraps that
one receive step of a call's SCTP transport: a string message that is not UTF-8 is handed to the channel as
bytes (the event layer answers it with an `invalid_json` error, the session goes on), and a malformed handshake
message is dropped with one warning line.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcsctptransport import WEBRTC_STRING

log = logging.getLogger("omni.serve")


def guard_data_channels(pc: RTCPeerConnection) -> None:
    """Guard `pc`'s data channels (once it has its SCTP transport: after setRemoteDescription)."""
    sctp: Any = pc.sctp
    if sctp is None or getattr(sctp, "_omni_guarded", False):
        return
    receive = sctp._data_channel_receive

    async def guarded(stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == WEBRTC_STRING:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                channel = sctp._data_channels.get(stream_id)
                if channel is not None:
                    channel.emit("message", bytes(data))  # parsed as JSON bytes: an invalid_json error event
                return
        try:
            await receive(stream_id, pp_id, data)
        except (AssertionError, UnicodeDecodeError, struct.error) as e:
            log.warning("dropped a malformed data-channel message (PPID %d, %s: %s)", pp_id, type(e).__name__, e)

    sctp._data_channel_receive = guarded
    sctp._omni_guarded = True
