// The demo page: plays the part of a web app's front end.
// "/demo/session" plays its backend (it mints the session and its short-lived secret);
// everything else goes through /broker-client.js exactly as a real page would.
import { connect, callBridge, BrokerClientError } from "/broker-client.js";

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  hangup: $("hangup"),
  bridgeToggle: $("bridge-toggle"),
  composer: $("composer"),
  message: $("message"),
  send: $("send"),
  transcript: $("transcript"),
  tools: $("tools"),
  status: $("status"),
  error: $("error"),
  audio: $("remote-audio"),
};

const STATUS_TEXT = {
  idle: "Idle — press Start call",
  connecting: "Connecting…",
  live: "Live — speak or type a message",
  ended: "Call ended",
  error: "Could not start the call",
};

let call = null; // what connect() returned, while a call is up
let abandoned = false; // Hang up was pressed while still connecting
let bridgeMode = false;
let audioContext = null;
let analyser = null;
let sampler = null;

// For end-to-end tests (and curious developers in the console).
const demo = {
  pc: null,
  events: [], // every server event type received during the current call, in order
  peakAudioLevel: 0,
  selectedPair,
  audioLevel,
};
window.demo = demo;

// ---------------------------------------------------------------- status and errors

function setStatus(state) {
  ui.status.dataset.state = state;
  ui.status.textContent = STATUS_TEXT[state];
  const busy = state === "connecting" || state === "live";
  ui.start.disabled = busy;
  ui.bridgeToggle.disabled = busy;
  ui.hangup.disabled = !busy;
  ui.message.disabled = state !== "live";
  ui.send.disabled = state !== "live";
}

function showError(code, message) {
  ui.error.dataset.code = code || "";
  ui.error.textContent = message || "";
}

// ---------------------------------------------------------------- the call

async function start() {
  showError("", "");
  ui.transcript.replaceChildren();
  ui.tools.replaceChildren();
  demo.events.length = 0;
  demo.peakAudioLevel = 0;
  analyser = null;
  abandoned = false;
  bridgeMode = ui.bridgeToggle.checked;
  setStatus("connecting");

  // Created here, inside the click, so the browser lets it run; resume() in case it starts suspended.
  audioContext ??= new AudioContext();
  audioContext.resume().catch(() => {});

  const events = new EventTarget();
  let over = false; // "closed" can in principle come before connect() returns
  events.addEventListener("track", (e) => listenTo(e.detail.stream));
  events.addEventListener("event", (e) => {
    demo.events.push(e.detail.type);
    handleServerEvent(e.detail);
  });
  events.addEventListener("open", () => {
    setStatus("live");
    sampler = setInterval(() => {
      demo.peakAudioLevel = Math.max(demo.peakAudioLevel, audioLevel());
    }, 50);
  });
  events.addEventListener("closed", () => {
    over = true;
    clearInterval(sampler);
    call = null;
    if (ui.status.dataset.state !== "error") setStatus("ended");
  });

  try {
    call = await connect({
      tokenProvider: createSession,
      audioElement: ui.audio,
      events,
    });
    demo.pc = call.pc;
    if (abandoned) call.close();
    if (over) call = null;
  } catch (err) {
    call = null;
    setStatus("error");
    showError(err.code || "error", err.message);
  }
}

/** The app backend's part: create a session, get back only what a browser may hold. */
async function createSession() {
  let response;
  try {
    response = await fetch("/demo/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ bridge: bridgeMode }),
    });
  } catch (cause) {
    throw new BrokerClientError("network_error", undefined, { cause });
  }
  if (!response.ok) throw await BrokerClientError.fromResponse(response, "session_failed");
  return response.json(); // the API's create response; connect() keeps it as call.session
}

function hangup() {
  if (call) call.close();
  else abandoned = true; // still connecting: close as soon as connect() returns
}

function sendText(text) {
  if (!call || !text) return;
  try {
    call.send({
      type: "conversation.item.create",
      item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
    });
    call.send({ type: "response.create" });
  } catch (err) {
    showError(err.code, err.message);
  }
}

// ---------------------------------------------------------------- server events

function handleServerEvent(event) {
  switch (event.type) {
    case "conversation.item.added":
    case "conversation.item.done":
    case "conversation.item.retrieved":
      showItem(event.item);
      break;
    case "conversation.item.deleted":
      // Covers the broker's short-lived probe notes and any forged output it removed.
      ui.transcript.querySelector(`[data-item-id="${CSS.escape(event.item_id)}"]`)?.remove();
      break;
    case "conversation.item.input_audio_transcription.completed":
      if (event.transcript) transcriptLine(event.item_id, "user").textContent = event.transcript;
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      transcriptLine(event.item_id, "assistant").textContent += event.delta || "";
      break;
    case "response.output_audio_transcript.done":
      transcriptLine(event.item_id, "assistant").textContent = event.transcript || "";
      break;
    case "response.output_text.done":
      transcriptLine(event.item_id, "assistant").textContent = event.text || "";
      break;
    case "response.function_call_arguments.done":
      showFunctionCall({ call_id: event.call_id, name: event.name, arguments: event.arguments });
      break;
    case "response.done":
      onResponseDone(event.response || {});
      break;
    case "error": {
      const error = event.error || {};
      showError(error.code || "model_error", `The model reported an error: ${error.message || error.code}`);
      break;
    }
  }
}

function showItem(item) {
  if (!item) return;
  if (item.type === "function_call") return showFunctionCall(item);
  if (item.type === "function_call_output") return showToolResult(item.call_id, item.output);
  // System messages are never shown: the broker adds (and deletes) probe notes during reconnects.
  if (item.type !== "message" || (item.role !== "user" && item.role !== "assistant")) return;
  const text = messageText(item);
  const line = transcriptLine(item.id, item.role);
  if (text) line.textContent = text;
  else if (item.role === "user" && !line.textContent) line.textContent = "(spoken)";
}

/** The text of a message item: typed text, or the transcript of its audio. */
function messageText(item) {
  return (item.content || [])
    .map((part) => part.text ?? part.transcript ?? "")
    .join("");
}

/** The transcript line of an item, created at the bottom the first time it is seen. */
function transcriptLine(itemId, role) {
  let line = itemId && ui.transcript.querySelector(`[data-item-id="${CSS.escape(itemId)}"]`);
  if (!line) {
    line = document.createElement("li");
    line.className = "line";
    line.dataset.role = role;
    if (itemId) line.dataset.itemId = itemId;
    ui.transcript.append(line);
  }
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return line;
}

// ---------------------------------------------------------------- tool activity

function toolRow(callId, name) {
  let row = ui.tools.querySelector(`[data-call-id="${CSS.escape(callId)}"]`);
  if (!row) {
    row = document.createElement("li");
    row.className = "tool";
    row.dataset.callId = callId;
    row.dataset.path = bridgeMode ? "bridge" : "sideband";
    row.dataset.status = "pending";
    const head = document.createElement("div");
    head.className = "tool-head";
    const label = document.createElement("span");
    label.className = "name";
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = `via ${row.dataset.path}`;
    head.append(label, path);
    const args = document.createElement("pre");
    args.className = "arguments";
    const result = document.createElement("pre");
    result.className = "result";
    row.append(head, args, result);
    ui.tools.append(row);
  }
  if (name) {
    row.dataset.name = name;
    row.querySelector(".name").textContent = name;
  }
  return row;
}

function showFunctionCall(item) {
  if (!item.call_id) return;
  const row = toolRow(item.call_id, item.name);
  if (item.arguments) row.querySelector(".arguments").textContent = item.arguments;
}

function showToolResult(callId, output, status) {
  if (!callId) return;
  const row = toolRow(callId);
  row.querySelector(".result").textContent = output ?? "";
  row.dataset.status = status || (looksLikeError(output) ? "failed" : "succeeded");
}

/** The broker's outputs for refused or failed calls are `{"error": {...}}`. */
function looksLikeError(output) {
  try {
    const value = JSON.parse(output);
    return Boolean(value && typeof value === "object" && "error" in value);
  } catch {
    return false;
  }
}

function onResponseDone(response) {
  const calls = (response.output || []).filter((item) => item.type === "function_call");
  if (response.status !== "completed") {
    // A cancelled response's calls never run, on either path.
    for (const item of calls) toolRow(item.call_id, item.name).dataset.status = "cancelled";
    return;
  }
  calls.forEach(showFunctionCall);
  if (bridgeMode && calls.length) runThroughBridge(calls);
}

/** Bridge mode: this page runs the response's calls, injects every output, then asks for ONE reply. */
async function runThroughBridge(calls) {
  const current = call;
  const outputs = await Promise.all(
    calls.map(async (item) => {
      toolRow(item.call_id).dataset.status = "running";
      try {
        const reply = await callBridge({
          bridgeUrl: current.session.bridge_url,
          token: current.token,
          name: item.name,
          callId: item.call_id,
          arguments: item.arguments,
        });
        showToolResult(item.call_id, reply.output, reply.status);
        toolRow(item.call_id).dataset.handledBy = reply.handled_by || "";
        // A call the sideband owns is injected by the broker, not by us.
        return reply.handled_by === "sideband" ? null : { call_id: item.call_id, output: reply.output ?? "" };
      } catch (err) {
        showError(err.code, `Tool ${item.name}: ${err.message}`);
        // The model still needs an answer for this call, in the broker's own error shape.
        const output = JSON.stringify({ error: { code: err.code, message: err.message } });
        showToolResult(item.call_id, output, "failed");
        return { call_id: item.call_id, output };
      }
    }),
  );
  if (call !== current) return; // the call ended meanwhile
  const injected = outputs.filter(Boolean);
  if (!injected.length) return;
  try {
    for (const { call_id, output } of injected) {
      current.send({ type: "conversation.item.create", item: { type: "function_call_output", call_id, output } });
    }
    current.send({ type: "response.create" });
  } catch (err) {
    showError(err.code, err.message);
  }
}

// ---------------------------------------------------------------- audio and stats for tests

/** Feed the remote stream into an analyser (not to the speakers: the <audio> element plays it). */
function listenTo(stream) {
  if (!audioContext || !stream.getAudioTracks().length) return;
  const source = audioContext.createMediaStreamSource(stream);
  analyser = audioContext.createAnalyser();
  analyser.fftSize = 1024;
  // A silent path to the destination keeps the graph pulled in every browser.
  const mute = audioContext.createGain();
  mute.gain.value = 0;
  source.connect(analyser).connect(mute).connect(audioContext.destination);
}

/** RMS (0..1) of the remote audio right now. */
function audioLevel() {
  if (!analyser) return 0;
  const samples = new Float32Array(analyser.fftSize);
  analyser.getFloatTimeDomainData(samples);
  let sum = 0;
  for (const s of samples) sum += s * s;
  return Math.sqrt(sum / samples.length);
}

/** The ICE candidate pair in use: its local and remote candidates. */
async function selectedPair() {
  if (!demo.pc) return null;
  const stats = await demo.pc.getStats();
  let pair = null;
  stats.forEach((report) => {
    if (report.type === "transport" && report.selectedCandidatePairId) {
      pair ??= stats.get(report.selectedCandidatePairId);
    }
  });
  if (!pair) {
    stats.forEach((report) => {
      if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded") pair ??= report;
    });
  }
  if (!pair) return null;
  const candidate = (id) => {
    const c = stats.get(id);
    return c && { address: c.address ?? c.ip, port: c.port, protocol: c.protocol, candidateType: c.candidateType };
  };
  return { id: pair.id, state: pair.state, local: candidate(pair.localCandidateId), remote: candidate(pair.remoteCandidateId) };
}

// ---------------------------------------------------------------- wiring

ui.start.addEventListener("click", start);
ui.hangup.addEventListener("click", hangup);
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault(); // a <form> gives us Enter-to-send for free
  sendText(ui.message.value.trim());
  ui.message.value = "";
});
setStatus("idle");
