"""The media side of a WebRTC call: the assistant's outbound audio track, the inbound track pumps, the microphone
receivers' jitter buffer, RTP counts for the idle watchdog, and closing a peer connection a bad offer left
half-built. omni/app/realtime_server.py owns the calls that use them."""

from __future__ import annotations

import logging

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from omni.app.frame_clock import FrameClock, mono_frame
from omni.streaming.frames import AudioFrame, VideoFrame
from omni.streaming.metrics import ServerMetrics
from omni.streaming.output import OUTPUT_RATE
from omni.streaming.session import Session

log = logging.getLogger("omni.serve")
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
MIC_PREFETCH = 0  # frames the server's receiver holds back after a microphone frame is complete (aiortc: 4)


class AssistantAudioTrack(MediaStreamTrack):
    """The assistant's speech: 20 ms frames at 48 kHz, paced in real time by `omni.app.frame_clock.FrameClock`,
    silence when nothing is queued. `metrics`: where the clock's skipped frames and slip are counted."""

    kind = "audio"

    def __init__(self, session: Session, metrics: ServerMetrics | None = None) -> None:
        super().__init__()
        self._session = session
        self._metrics = metrics
        self.clock = FrameClock(OUTPUT_RATE, FRAME_SAMPLES)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        clock = self.clock
        skipped, slipped = clock.skipped, clock.slipped
        pts, pcm = await clock.next_frame(self._session.read_output)
        metrics = self._metrics
        if metrics is not None and clock.skipped > skipped:
            metrics.inc("output_frames_skipped_total", "silent 20 ms output frames not sent because the track "
                        "woke up late (a stalled loop): the timestamps jump instead", clock.skipped - skipped)
        if metrics is not None and clock.slipped > slipped:
            metrics.inc("output_speech_slip_seconds_total", "seconds the assistant's speech fell behind the wall "
                        "clock after stalls (given back in the silence after it)", clock.slipped - slipped)
        return mono_frame(np.zeros(FRAME_SAMPLES, np.int16) if pcm is None else pcm, OUTPUT_RATE, pts)


def hear_at_once(pc: RTCPeerConnection, prefetch: int = MIC_PREFETCH) -> None:
    """Let `pc`'s audio receivers hand each microphone frame on as soon as it is complete (after
    setRemoteDescription, before media flows).

    aiortc's audio jitter buffer releases a frame only once `prefetch` (4) later frames have arrived: a playout
    cushion for a receiver that plays the audio, but the server only feeds it to the turn detector, so each frame
    waited 80 ms, and so did every end of speech, for every client (the browser too), outside the server's own
    latency figures (stamped on arrival). Packets still wait for a missing earlier one and are put in order; a
    frame is complete when a packet of the next one has arrived (20 ms). aiortc keeps the buffer private: if a
    release renames it, calls keep aiortc's default and one warning says so."""
    from aiortc.jitterbuffer import JitterBuffer

    for receiver in pc.getReceivers():
        if receiver.track is None or receiver.track.kind != "audio":
            continue
        name = "_RTCRtpReceiver__jitter_buffer"
        old = getattr(receiver, name, None)
        if not isinstance(old, JitterBuffer):
            log.warning("aiortc's receiver has no %s: the microphone keeps aiortc's default prefetch", name)
            continue
        setattr(receiver, name, JitterBuffer(capacity=old.capacity, prefetch=prefetch))


async def pump_track(session: Session, track: MediaStreamTrack) -> None:
    """Hand each frame of an inbound track to the session until the track ends: audio packed
    [1, samples * channels] (s16), resampled on the media worker; video converted there, the latest kept."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if isinstance(frame, av.AudioFrame):
            pcm = frame.to_ndarray()
            session.push_audio(AudioFrame(pcm, frame.sample_rate, session.clock(), len(frame.layout.channels)))
        elif track.kind == "video":
            session.push_video(VideoFrame(frame, session.clock()))


async def count_audio_packets(pc: RTCPeerConnection) -> int:
    """RTP packets received so far on the inbound audio tracks (aiortc receiver stats, RTCP excluded)."""
    total = 0
    for receiver in pc.getReceivers():
        if receiver.track is None or receiver.track.kind != "audio":
            continue
        for stats in (await receiver.getStats()).values():
            if getattr(stats, "type", None) == "inbound-rtp":
                total += stats.packetsReceived
    return total


def missing_transport(pc: RTCPeerConnection) -> bool:
    """Whether a media section of the applied offer was left without a transport (a fuzzed offer once got
    through setRemoteDescription like that, then failed in createAnswer and pc.close with AttributeError)."""
    if any(t.receiver.transport is None or t.sender.transport is None for t in pc.getTransceivers()):
        return True
    return pc.sctp is not None and pc.sctp.transport is None


async def close_peer(pc: RTCPeerConnection) -> None:
    """Close a peer connection; one that a bad offer left half-built may fail to (aiortc), which is logged,
    without a traceback, and goes no further."""
    try:
        await pc.close()
    except Exception as e:
        log.info("closing a half-built peer connection: %s: %s", type(e).__name__, e)
