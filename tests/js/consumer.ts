// A typed page using @sideband-broker/client: `tsc --strict --noEmit` must accept it
// (tests/unit/test_browser_package.py). It touches every export and every typed event.
import {
  BrokerClientError,
  callBridge,
  connect,
  type BridgeReply,
  type Call,
  type CloseReason,
  type CreatedSession,
  type ErrorCode,
  type ServerEvent,
} from "@sideband-broker/client";

// The create response, as the app's backend passes it through unchanged.
async function fromMyBackend(): Promise<CreatedSession> {
  const response = await fetch("/my-backend/voice-session", { method: "POST" });
  return (await response.json()) as CreatedSession;
}

export async function start(audio: HTMLAudioElement): Promise<Call> {
  const call = await connect({
    tokenProvider: fromMyBackend,
    audioElement: audio,
    microphone: true,
    iceServers: [],
  });
  call.events.addEventListener("closed", (event) => {
    const reason: CloseReason = event.detail.reason;
    console.log(reason);
  });
  call.events.addEventListener("track", (event) => {
    const stream: MediaStream = event.detail.stream;
    console.log(stream.id, event.detail.track.kind);
  });
  call.events.addEventListener("event", (event) => {
    const type: string = event.detail.type;
    console.log(type);
  });
  call.events.addEventListener("response.done", (event) => {
    const server: ServerEvent = event.detail;
    console.log(server.type);
  });
  call.send({ type: "response.create" });
  const secret: string = call.token;
  console.log(secret.length, call.pc.connectionState, call.channel.label);
  if (call.session !== null && typeof call.session.bridge_url === "string") {
    const reply: BridgeReply = await callBridge({
      bridgeUrl: call.session.bridge_url,
      token: call.token,
      name: "lookup_order",
      callId: "call_1",
      arguments: { order_id: "42" },
    });
    const handledBy: "sideband" | "bridge" | null = reply.handled_by;
    console.log(reply.status, handledBy);
  }
  return call;
}

export async function startWithBareSecret(secret: string, offerUrl: string): Promise<void> {
  try {
    const call = await connect({ tokenProvider: async () => secret, offerUrl, microphone: false });
    const ended: boolean = await call.close();
    console.log(ended);
  } catch (err) {
    if (err instanceof BrokerClientError) {
      const code: ErrorCode = err.code;
      if (code === "cors_blocked" || code === "network_error") console.log(err.status);
      console.log(err.problem?.detail, err.message);
    }
  }
}

export const made: BrokerClientError = new BrokerClientError("token_unavailable");
export const fromReply: Promise<BrokerClientError> = BrokerClientError.fromResponse(
  new Response(null, { status: 401 }),
);
