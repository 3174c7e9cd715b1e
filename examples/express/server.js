// An app backend for the sideband broker, in Express.
//
// It plays the part every real web app needs on its server: it holds the broker API key,
// decides which tools a call may use, creates the session at the broker, and hands the page
// the broker's create response exactly as it came (the browser package reads client_secret,
// offer_url, bridge_url and end_url from it). The page loads the browser package from the
// broker itself, at its versioned URL, so the broker's BROKER_CORS_ORIGINS must list this
// app's origin.
//
//   BROKER_URL=http://127.0.0.1:8080 BROKER_API_KEY=bk_... node server.js

import { readFileSync } from "node:fs";
import express from "express";

const CLIENT_PATH = "/client/v1/broker-client.js"; // the major version is in the path
const INSTRUCTIONS =
  "You are the voice assistant of a small online shop. Use the tools to look things up;" +
  " never make up an order's status.";

const apiKey = process.env.BROKER_API_KEY;
if (!apiKey) {
  // Fail at start-up, not at the first call: a page cannot fix a missing key.
  console.error("set BROKER_API_KEY to a broker API key with sessions:create");
  process.exit(2);
}
const brokerUrl = (process.env.BROKER_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
const clientUrl = process.env.BROKER_CLIENT_URL || brokerUrl + CLIENT_PATH;
const tools = (process.env.EXAMPLE_TOOLS || "lookup_order")
  .split(",")
  .map((name) => name.trim())
  .filter(Boolean);
const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 3000);

// The import map names the broker's package for the page's `import ... from "broker-client"`;
// JSON.stringify keeps the URL a valid JSON string inside the page.
const page = readFileSync(new URL("./public/index.html", import.meta.url), "utf8").replace(
  '"__BROKER_CLIENT_URL__"',
  JSON.stringify(clientUrl),
);

/** A problem+json reply: the browser package reads its `code`. */
function problem(res, status, code, detail) {
  res
    .status(status)
    .type("application/problem+json")
    .send(JSON.stringify({ type: "about:blank", title: detail, status, code, detail }));
}

const app = express();
app.disable("x-powered-by");

app.get("/", (req, res) => {
  res.type("html").send(page);
});

app.post("/session", async (req, res) => {
  // A real app checks its own user's login here before spending a session on them.
  let reply;
  try {
    reply = await fetch(`${brokerUrl}/api/v1/sessions`, {
      method: "POST",
      headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
      body: JSON.stringify({ tools, instructions: INSTRUCTIONS, metadata: { source: "express-example" } }),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (err) {
    console.warn(`the broker is unreachable: ${err.name}`);
    return problem(res, 502, "broker_unreachable", "The broker is unreachable right now");
  }
  const body = Buffer.from(await reply.arrayBuffer());
  if (reply.status === 201) {
    // The broker's bytes, unchanged: the page's package reads this very shape.
    return res.status(201).set("Cache-Control", "no-store").type("application/json").send(body);
  }
  let code = "-";
  try {
    code = JSON.parse(body.toString("utf8")).code ?? "-";
  } catch {
    // not JSON: nothing more to log
  }
  console.warn(`the broker refused the session: HTTP ${reply.status} ${code}`);
  if (reply.status === 429) {
    // The user may retry after a while; anything else is this backend's problem to fix.
    res.set("Retry-After", reply.headers.get("Retry-After") || "1");
    return problem(res, 429, "rate_limited", "Too many calls were started");
  }
  return problem(res, 502, "session_failed", "The call could not be set up");
});

const server = app.listen(port, host, () => {
  console.log(`example app on http://${host}:${server.address().port} (broker ${brokerUrl})`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
