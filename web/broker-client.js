// broker-client.js: connect a page to a voice model through the sideband broker.
//
// The broker proxies the WebRTC offer with its own provider key; the page only ever holds a
// short-lived client secret that the app's backend mints (the "tokenProvider" pattern).
// Media and the "oai-events" data channel then flow straight to the provider.
//
// Plain ES module, no dependencies, typed by broker-client.d.ts (package.json: the
// @sideband-broker/client package). The broker serves both at /client/v1/ (with CORS for
// BROKER_CORS_ORIGINS), and in demo mode at /broker-client.js:
//   import { connect } from "https://broker.example.com/client/v1/broker-client.js";
//
// tokenProvider returns what POST /api/v1/sessions returns, passed through unchanged by the
// app's backend: {id, client_secret: {value, expires_at}, offer_url, bridge_url, end_url, …}.

/** Readable messages for the codes a page is likely to meet (problem+json `code`s and ours). */
/** How long close() waits for the broker's answer before closing the connection anyway. */
const END_WAIT_MS = 3000;

const MESSAGES = {
  mic_denied: "Microphone access was denied",
  token_expired: "Your session token expired — start a new call",
  token_invalid: "Your session token was not accepted — start a new call",
  token_replayed: "This session token was already used — start a new call",
  token_wrong_audience: "Your session token was not accepted — start a new call",
  token_session_mismatch: "Your session token belongs to another session — start a new call",
  provider_error: "The voice provider is unreachable right now",
  provider_unreachable: "The voice provider is unreachable right now",
  provider_timeout: "The voice provider is unreachable right now",
  network_error: "The broker or the voice provider is unreachable right now",
  cors_blocked: "This site may not call the voice service (its origin is not allowed)",
  shutting_down: "The broker is restarting — try again in a moment",
  rate_limited: "Too many calls were started — try again shortly",
  session_not_live: "The call is no longer live",
  tool_not_allowed: "That tool is not allowed in this session",
  channel_closed: "The call is not connected",
};

/** An error with a stable `.code` (problem+json code, or one of ours) and HTTP `.status`. */
export class BrokerClientError extends Error {
  constructor(code, message, { status = 0, problem = null, cause } = {}) {
    super(message || MESSAGES[code] || code, cause ? { cause } : undefined);
    this.name = "BrokerClientError";
    this.code = code;
    this.status = status;
    this.problem = problem; // the parsed problem+json body, when there was one
  }

  /** Build the error for a failed HTTP reply, reading its problem+json body if it has one. */
  static async fromResponse(response, fallbackCode = "request_failed") {
    let problem = null;
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      problem = await response.json().catch(() => null);
    }
    const code = (problem && problem.code) || fallbackCode;
    const message =
      MESSAGES[code] ||
      (problem && (problem.detail || problem.title)) ||
      `The broker answered HTTP ${response.status}`;
    return new BrokerClientError(code, message, { status: response.status, problem });
  }
}

/**
 * `fetch`, with a failure turned into a BrokerClientError: "cors_blocked" when the server
 * answers but the browser withheld the reply (a refused CORS preflight or a missing
 * Access-Control-Allow-Origin), else "network_error".
 *
 * fetch() rejects with the same bare TypeError in both cases, so after one the same URL is
 * probed in "no-cors" mode: that request needs no CORS permission, so if it gets through the
 * server is reachable and CORS is what refused the first.
 */
async function request(url, init) {
  try {
    return await fetch(url, init);
  } catch (cause) {
    let reachable = false;
    try {
      await fetch(url, { method: "HEAD", mode: "no-cors", cache: "no-store", credentials: "omit" });
      reachable = true;
    } catch {
      // unreachable as well: a network error
    }
    throw new BrokerClientError(reachable ? "cors_blocked" : "network_error", undefined, { cause });
  }
}

/** The client secret in a token provider's answer: the API's `{value}` object, or a string. */
function secretOf(session) {
  if (typeof session === "string") return session;
  const secret = session && session.client_secret;
  if (typeof secret === "string") return secret; // the demo's former shape
  return secret && typeof secret.value === "string" ? secret.value : null;
}

/** Resolve once ICE gathering is complete, or after `capMs`: the broker takes no trickle ICE. */
function iceGatheringDone(pc, capMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onChange);
      resolve();
    };
    const onChange = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, capMs);
    pc.addEventListener("icegatheringstatechange", onChange);
  });
}

/** The microphone stream, null when there is no mic device; throws mic_denied if refused. */
async function openMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return null;
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      throw new BrokerClientError("mic_denied", undefined, { cause: err });
    }
    return null; // NotFoundError and friends: no device, so we only listen
  }
}

/**
 * Start a call.
 *
 * Types: broker-client.d.ts.
 *
 * @param {object} options
 * @param {() => Promise<string|object>} options.tokenProvider
 *   Returns what `POST /api/v1/sessions` (or, in demo mode, `POST /demo/session`) returns,
 *   unchanged: `{id, client_secret: {value, expires_at}, offer_url, bridge_url, end_url, …}`
 *   (its `offer_url` wins; with an `end_url`, `close()` also asks the broker to end the call
 *   at the provider). A bare client secret (string) works with `offerUrl`.
 * @param {string} [options.offerUrl] Offer URL, used when the provider returns a bare string.
 * @param {HTMLAudioElement} [options.audioElement] Plays the model's voice.
 * @param {boolean} [options.microphone=true] false: receive audio only.
 * @param {RTCIceServer[]} [options.iceServers=[]]
 * @param {EventTarget} [options.events] Use this target instead of a new one, so listeners can
 *   be in place before the call exists (for "track", early events, and failures).
 * @returns {Promise<{pc, channel, events, token, session, send, close}>}
 * @throws {BrokerClientError}
 */
export async function connect({
  tokenProvider,
  offerUrl,
  audioElement,
  microphone = true,
  iceServers = [],
  events = new EventTarget(),
} = {}) {
  const emit = (type, detail) => events.dispatchEvent(new CustomEvent(type, { detail }));
  let mic = null;
  let pc = null;
  let ended = false; // set once the call is over (or never started): "closed" fires at most once

  const fail = (err) => {
    ended = true;
    if (!(err instanceof BrokerClientError)) {
      err = new BrokerClientError("offer_failed", `The call could not be set up: ${err.message}`, {
        cause: err,
      });
    }
    if (pc) pc.close();
    if (mic) mic.getTracks().forEach((t) => t.stop());
    emit("error", { code: err.code, message: err.message, status: err.status });
    return err;
  };

  try {
    // The mic first: a refusal must not spend a session.
    if (microphone) mic = await openMicrophone();

    let session;
    try {
      session = await tokenProvider();
    } catch (err) {
      throw err instanceof BrokerClientError
        ? err
        : new BrokerClientError("token_unavailable", `Could not get a session token: ${err.message}`);
    }
    const token = secretOf(session);
    const url = (session && session.offer_url) || offerUrl;
    if (!token || !url) {
      throw new BrokerClientError("token_unavailable", "The token provider gave no token or offer URL");
    }

    pc = new RTCPeerConnection({ iceServers });
    // The provider expects exactly this channel, and it must exist before the offer.
    const channel = pc.createDataChannel("oai-events");
    if (mic) {
      for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }

    pc.addEventListener("track", (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (audioElement) {
        audioElement.srcObject = stream;
        // Autoplay may be refused outside a user gesture; the element's controls still work.
        audioElement.play().catch(() => {});
      }
      emit("track", { track: event.track, stream });
    });

    let hangingUp = false; // close() was called: whatever ends the call now, it was a hangup
    const end = (reason) => {
      if (ended) return;
      ended = true;
      if (channel.readyState !== "closed") channel.close();
      pc.close();
      if (mic) mic.getTracks().forEach((t) => t.stop());
      emit("closed", { reason: hangingUp ? "hangup" : reason });
    };

    channel.addEventListener("open", () => emit("open", {}));
    channel.addEventListener("close", () => end("channel_closed"));
    channel.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // not JSON: nothing a listener could use
      }
      if (!event || typeof event.type !== "string") return;
      emit("event", event);
      emit(event.type, event);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        end(`connection_${pc.connectionState}`);
      }
    });

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);

    const response = await request(url, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) throw await BrokerClientError.fromResponse(response, "offer_failed");
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });

    return {
      pc,
      channel,
      events,
      token, // the bridge accepts the secret that made the offer for as long as the call is live
      session: typeof session === "string" ? null : session,
      send(event) {
        if (channel.readyState !== "open") throw new BrokerClientError("channel_closed");
        channel.send(JSON.stringify(event));
      },
      close() {
        const endUrl = session && typeof session === "object" ? session.end_url : null;
        if (ended) return Promise.resolve(false);
        hangingUp = true;
        if (!endUrl) {
          end("hangup");
          return Promise.resolve(false);
        }
        // The user hears nothing more and is heard no more at once; the connection itself
        // stays up until the broker has answered (at most END_WAIT_MS). Closing it first lets
        // the provider see the page leave before the broker's hangup, and the session would
        // read as ended by the provider rather than by the user.
        if (mic) mic.getTracks().forEach((t) => t.stop());
        if (audioElement) audioElement.muted = true;
        // keepalive lets the request go out while the page unloads. The promise settles when
        // the broker has answered (true: it ended the call); it never rejects.
        const told = fetch(endUrl, {
          method: "POST",
          headers: { Authorization: `Bearer ${token}` },
          keepalive: true,
        })
          .then((response) => response.ok)
          .catch(() => false);
        const waited = new Promise((resolve) => setTimeout(() => resolve(false), END_WAIT_MS));
        return Promise.race([told, waited]).then((ok) => {
          end("hangup");
          return ok;
        });
      },
    };
  } catch (err) {
    throw fail(err);
  }
}

/**
 * Run one function call through the broker's bridge: `POST {bridgeUrl}{name}`.
 * Resolves to `{call_id, status, output, handled_by}`; throws BrokerClientError on a problem.
 * A 202 means the sideband owns the call and has not finished: ask again a few times.
 */
export async function callBridge({ bridgeUrl, token, name, callId, arguments: args, retries = 3 }) {
  for (let attempt = 0; ; attempt++) {
    const response = await request(bridgeUrl + encodeURIComponent(name), {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ call_id: callId, arguments: args }),
    });
    if (!response.ok) throw await BrokerClientError.fromResponse(response, "bridge_failed");
    const reply = await response.json();
    if (response.status !== 202 || attempt >= retries) return reply;
  }
}
