"""The server's audio receivers hand a microphone frame on once it is complete, not four frames later
(omni.app.rtc_media.hear_at_once): counted in packets fed to the receiver's jitter buffer, never in time."""

from __future__ import annotations

from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import RtpPacket

from benchmarks.rtc_client import RealtimeClient, ScriptedMic
from omni.app.rtc_media import MIC_PREFETCH, hear_at_once
from omni.streaming.engines.tone import ToneEngine
from tests.app.conftest import StartServer

FRAME = 960  # RTP timestamp step of one 20 ms Opus frame


def audio_buffer(pc: RTCPeerConnection) -> Any:
    (receiver,) = [r for r in pc.getReceivers() if r.track is not None and r.track.kind == "audio"]
    return receiver._RTCRtpReceiver__jitter_buffer


async def answering_peer(low_latency: bool) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    client, server = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    client.addTrack(ScriptedMic())
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    if low_latency:
        hear_at_once(server)
    return client, server


def packet(seq: int) -> RtpPacket:
    """One packet holding a whole frame, as aiortc's receiver hands it to the buffer (payload unpacked in _data)."""
    p = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * FRAME, payload=b"x")
    p._data = b"x"  # type: ignore[attr-defined]
    return p


def frames_released(buffer: Any, packets: int) -> list[int]:
    """Feed `packets` one-packet frames in order; the RTP timestamps of the frames the buffer releases, each
    noted with the number of packets fed when it came out."""
    out = []
    for seq in range(packets):
        _, frame = buffer.add(packet(seq))
        if frame is not None:
            out.append(seq)
    return out


async def test_a_frame_is_released_when_the_next_one_starts() -> None:
    assert MIC_PREFETCH == 0
    for low_latency, first_out_after in ((True, 1), (False, 4)):  # aiortc's default (prefetch 4) as the control
        client, server = await answering_peer(low_latency)
        try:
            released = frames_released(audio_buffer(server), 8)
            assert released[0] == first_out_after, (low_latency, released)
            assert released == list(range(first_out_after, 8))  # then one frame out per packet in
        finally:
            await client.close()
            await server.close()


async def test_out_of_order_packets_still_wait_for_the_missing_one() -> None:
    client, server = await answering_peer(True)
    try:
        buffer = audio_buffer(server)
        order = [0, 2, 1, 3, 4]  # packet 1 comes late: frame 0 is complete only once it arrived
        got = []
        for seq in order:
            _, frame = buffer.add(packet(seq))
            got.append(None if frame is None else frame.timestamp // FRAME)
        assert got == [None, None, 0, 1, 2]  # in order, nothing skipped
    finally:
        await client.close()
        await server.close()


async def test_a_live_call_hears_at_once(start_server: StartServer, speech48k: np.ndarray) -> None:
    url, server = await start_server(ToneEngine())
    client = RealtimeClient(url)
    try:
        await client.connect()
        (conn,) = server.connections.values()
        assert audio_buffer(conn.pc)._prefetch == MIC_PREFETCH
        client.mic.say(speech48k)  # and the microphone still reaches the turn detector: a reply comes
        await client.wait_for("response.done")
    finally:
        await client.close()
