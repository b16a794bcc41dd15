// The call's controls beside app.js's client (loaded first), on both pages (the browser demo and the Gradio
// page, which show the same omni/ui/web/call.html): talk/mute, voice and instructions settings and the per-turn
// latency list. Everything goes over app.js's call.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const o = window.__omni;
  Object.assign(o, { muted: false, sessionUpdates: 0, latencies: [] });

  // Mute with track.enabled = false: the track keeps sending (silent) RTP, so the server's idle watchdog
  // still sees a live client (omni/app/realtime_server.py); stopping the track would read as a vanished one.
  function setMuted(muted) {
    o.muted = muted;
    const local = window.omniLocalStream();
    if (local) for (const t of local.getAudioTracks()) t.enabled = !muted;
    $("talk").textContent = muted ? "Talk" : "Mute";
    $("talk").classList.toggle("muted", muted);
  }
  $("talk").addEventListener("click", () => setMuted(!o.muted));

  function settings() {
    const session = {};
    const instructions = $("instructions").value.trim();
    const voice = $("voice").value.trim();
    if (instructions) session.instructions = instructions;
    if (voice) session.audio = { output: { voice } };
    return session;
  }
  function applySettings() {
    const session = settings();
    if (Object.keys(session).length === 0) return;
    if (!window.omniSend({ type: "session.update", session })) {
      $("error").textContent = "connect first: settings travel on the call's event channel";
      $("error").hidden = false;
    }
  }
  $("apply").addEventListener("click", applySettings);

  document.addEventListener("omni:event", (e) => {
    const ev = e.detail;
    switch (ev.type) {
      case "session.created":
        setMuted(o.muted); // the tracks are new: carry the button's state over
        applySettings();
        break;
      case "session.updated":
        o.sessionUpdates += 1;
        break;
      case "omni.metrics":
        if (ev.end_of_speech_to_first_audio_ms !== null && ev.end_of_speech_to_first_audio_ms !== undefined) {
          o.latencies.push(Math.round(ev.end_of_speech_to_first_audio_ms));
          $("turn-latencies").textContent = o.latencies.map((v) => `${v} ms`).join(", ");
        }
        break;
    }
  });

  // Inbound assistant audio as WebRTC counts it (tests and the curious): packets and total energy.
  window.omniInboundAudio = async () => {
    const pc = window.omniPeer();
    if (pc === null) return null;
    for (const r of (await pc.getStats()).values()) {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        return { packets: r.packetsReceived || 0, energy: r.totalAudioEnergy || 0,
                 samples: r.totalSamplesReceived || 0 };
      }
    }
    return null;
  };
  o.ready = true;
})();
