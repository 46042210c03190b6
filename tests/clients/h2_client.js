// An LLM client on node's http2 module: a streamed Anthropic Messages call
// and a Gemini generateContent call on one HTTP/2 connection.
// Usage: node h2_client.js BASE_URL CA_FILE API_KEY
"use strict";
const http2 = require("http2");
const fs = require("fs");
const [base, caFile, key] = process.argv.slice(2);

function post(session, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/json", ...headers });
    let status = 0;
    const chunks = [];
    req.on("response", (h) => { status = h[":status"]; });
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve([status, Buffer.concat(chunks).length]));
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

(async () => {
  const session = http2.connect(base, { ca: fs.readFileSync(caFile) });
  console.log(await post(session, "/v1/messages", { "x-api-key": key, "anthropic-version": "2023-06-01" },
    { model: "claude-sonnet-4-5", max_tokens: 64, stream: true, messages: [{ role: "user", content: "from node" }] }));
  console.log(await post(session, "/v1beta/models/gemini-2.5-pro:generateContent", { "x-goog-api-key": key },
    { contents: [{ role: "user", parts: [{ text: "from node too" }] }] }));
  session.close();
})().catch((e) => { console.error(e); process.exit(1); });
