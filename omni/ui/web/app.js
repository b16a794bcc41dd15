// The omni browser demo: WebRTC to `omni serve` (OpenAI Realtime convention: SDP offer POSTed to
// /v1/realtime/calls, JSON events on the "oai-events" data channel). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

// Inspection point for tests and the curious: connection state, transcript, audio level, last metrics.
window.__omni = { state: "idle", events: [], assistantText: "", userText: "", maxLevel: 0, loudTicks: 0,
                  metrics: null, error: null };

let pc = null, channel = null, callUrl = null, callSecret = null, local = null, audioCtx = null, levelTimer = null;
let assistantItem = null, userItem = null, muteUntilNextResponse = false;

function setStatus(text, cls) {
  $("status").textContent = text;
  $("status").className = "status " + (cls || "");
  window.__omni.state = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  window.__omni.error = message;
}

function bubble(role) {
  const li = document.createElement("li");
  li.className = role;
  $("transcript").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

// A refusal's body is a Realtime-style JSON error object ({"error": {"message": ...}}); anything else as it came.
function refusalMessage(body) {
  try { return JSON.parse(body).error.message || body; } catch (e) { return body; }
}

async function waitForIce(conn, ms) {
  if (conn.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    conn.addEventListener("icegatheringstatechange", () => {
      if (conn.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

async function start() {
  $("connect").disabled = true;
  $("error").hidden = true;
  setStatus("connecting");
  try {
    local = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: $("camera").checked ? { width: 640, height: 480 } : false,
    });
    $("preview").srcObject = local;
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.addEventListener("connectionstatechange", () => {
      if (pc === null) return;
      if (pc.connectionState === "connected") setStatus("connected", "connected");
      if (pc.connectionState === "failed") { setStatus("failed", "failed"); stop(); }
    });
    pc.addEventListener("track", (ev) => playRemote(ev.streams[0] || new MediaStream([ev.track])));
    for (const track of local.getTracks()) pc.addTrack(track, local);
    channel = pc.createDataChannel("oai-events");
    channel.addEventListener("message", (ev) => onEvent(JSON.parse(ev.data)));
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc, 3000); // non-trickle: the answerer gathers fully, so send every candidate at once
    const user = $("user-id") ? $("user-id").value.trim() : "";
    const url = user ? `/v1/realtime/calls?user_id=${encodeURIComponent(user)}` : "/v1/realtime/calls";
    const offer = (auth) => fetch(url, {
      method: "POST", headers: { "Content-Type": "application/sdp", ...auth }, body: pc.localDescription.sdp,
    });
    let res = await offer({});
    if (res.status === 401) res = await offer(await ephemeralAuth()); // the server has --api-key
    const body = await res.text();
    if (res.status !== 201) throw new Error(`server refused the call (${res.status}): ${refusalMessage(body)}`);
    callUrl = res.headers.get("Location");
    callSecret = res.headers.get("X-Omni-Call-Secret");
    await pc.setRemoteDescription({ type: "answer", sdp: body });
    $("hangup").disabled = false;
  } catch (err) {
    showError(String(err.message || err));
    setStatus("failed", "failed");
    stop();
  }
}

// With auth on, the page trades the server key (asked once, kept for this tab) for a short-lived client secret
// (POST /v1/realtime/client_secrets, OpenAI's flow) and opens the call with that.
async function ephemeralAuth() {
  let key = sessionStorage.getItem("omniApiKey") || prompt("This server needs an API key:");
  if (!key) throw new Error("an API key is needed to call this server");
  const res = await fetch("/v1/realtime/client_secrets", { method: "POST", headers: { Authorization: `Bearer ${key}` } });
  if (res.status !== 200) { sessionStorage.removeItem("omniApiKey"); throw new Error(`API key refused (${res.status})`); }
  sessionStorage.setItem("omniApiKey", key);
  return { Authorization: `Bearer ${(await res.json()).value}` };
}

// Chrome only feeds remote WebRTC audio to WebAudio while a media element also plays it: play it in <audio>
// (which also lets echo cancellation see it) and tap the same stream for the level meter.
function playRemote(stream) {
  const audio = $("remote");
  audio.srcObject = stream;
  audio.play().catch(() => {});
  audioCtx = new AudioContext();
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  audioCtx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  levelTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const rms = Math.sqrt(sum / buf.length);
    $("level").value = rms;
    window.__omni.maxLevel = Math.max(window.__omni.maxLevel, rms);
    if (rms > 0.01) window.__omni.loudTicks += 1;
    $("assistant-speaking").classList.toggle("on", rms > 0.01);
  }, 50);
}

// The memory items the server put into the last reply's prompt, oldest first, with their time and score.
function showRecalled(items) {
  const list = $("recalled");
  list.replaceChildren();
  for (const it of items) {
    const li = document.createElement("li");
    const when = new Date(it.t_start * 1000).toLocaleString();
    li.textContent = `${when} · ${it.level} · ${it.score.toFixed(2)} — ${it.text}`;
    list.append(li);
  }
  if (!items.length) list.innerHTML = '<li class="none">nothing recalled</li>';
}

function fmtMs(v) { return v === null || v === undefined ? "–" : `${Math.round(v)} ms`; }

function onEvent(ev) {
  const o = window.__omni;
  o.events.push(ev.type);
  document.dispatchEvent(new CustomEvent("omni:event", { detail: ev })); // for pages that embed this client
  switch (ev.type) {
    case "input_audio_buffer.speech_started":
      $("user-speaking").classList.add("on");
      userItem = bubble("user");
      userItem.textContent = "…";
      // Barge-in: stop playing what is already buffered here too, until the next reply starts.
      if (assistantItem !== null) { $("remote").muted = true; muteUntilNextResponse = true; }
      break;
    case "input_audio_buffer.speech_stopped":
      $("user-speaking").classList.remove("on");
      break;
    case "conversation.item.input_audio_transcription.delta":
      if (userItem) userItem.textContent = (userItem.textContent === "…" ? "" : userItem.textContent) + ev.delta;
      break;
    case "conversation.item.input_audio_transcription.completed":
      if (userItem) userItem.textContent = ev.transcript;
      o.userText = ev.transcript;
      break;
    case "response.created":
      assistantItem = bubble("assistant");
      assistantItem.dataset.hasText = "";
      if (muteUntilNextResponse) { $("remote").muted = false; muteUntilNextResponse = false; }
      break;
    case "response.output_text.delta":
    case "response.text.delta": // beta name
      if (assistantItem) { assistantItem.textContent += ev.delta; assistantItem.dataset.hasText = "1"; }
      o.assistantText += ev.delta;
      break;
    case "response.output_audio_transcript.delta":
    case "response.audio_transcript.delta": // beta name; shown only when the reply has no text stream
      if (assistantItem && !assistantItem.dataset.hasText) assistantItem.textContent += ev.delta;
      break;
    case "response.done":
      if (assistantItem && ev.response && ev.response.status === "cancelled") {
        assistantItem.classList.add("interrupted");
        const out = ev.response.output && ev.response.output[0];
        if (out && out.content && out.content[0]) assistantItem.textContent = out.content[0].transcript;
      }
      assistantItem = null;
      break;
    case "omni.metrics":
      o.metrics = ev;
      $("m-text").textContent = fmtMs(ev.end_of_speech_to_first_text_ms);
      $("m-audio").textContent = fmtMs(ev.end_of_speech_to_first_audio_ms);
      $("m-rtf").textContent = ev.real_time_factor === null ? "–" : ev.real_time_factor.toFixed(2);
      $("m-barge").textContent = fmtMs(ev.barge_in_ms);
      $("m-dropped").textContent = String(ev.dropped_input_frames);
      break;
    case "omni.memory.recalled":
      showRecalled(ev.items);
      break;
    case "error":
      showError(ev.error ? ev.error.message : "error");
      break;
  }
}

// Hang up: the server ends the call first (DELETE with the call's secret), so it closes for that reason rather
// than on noticing the closed channel; at most 2 s, then the browser's side closes whatever the answer.
async function hangUp() {
  const url = callUrl;
  callUrl = null;
  $("hangup").disabled = true;
  if (url) {
    const headers = { "X-Omni-Call-Secret": callSecret || "" };
    await fetch(url, { method: "DELETE", headers, signal: AbortSignal.timeout(2000) }).catch(() => {});
  }
  stop();
}

function stop() {
  if (callUrl) fetch(callUrl, { method: "DELETE", headers: { "X-Omni-Call-Secret": callSecret || "" } }).catch(() => {});
  callUrl = null;
  if (levelTimer) clearInterval(levelTimer);
  levelTimer = null;
  if (audioCtx) audioCtx.close();
  audioCtx = null;
  if (channel) channel.close();
  channel = null;
  if (pc) pc.close();
  pc = null;
  if (local) for (const t of local.getTracks()) t.stop();
  local = null;
  $("connect").disabled = false;
  $("hangup").disabled = true;
  if (window.__omni.state !== "failed") setStatus("disconnected");
}

$("connect").addEventListener("click", start);
$("hangup").addEventListener("click", hangUp);
window.omniStart = start;
window.omniStop = stop;
// For pages that embed this client (the Gradio UI) and the controls (omni/ui/web/controls.js): the call, the local tracks, sending events.
window.omniPeer = () => pc;
window.omniLocalStream = () => local;
window.omniSend = (ev) => {
  if (channel === null || channel.readyState !== "open") return false;
  channel.send(JSON.stringify(ev));
  return true;
};
