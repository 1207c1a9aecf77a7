"""--devconsole: one self-contained page for trying the handler in a browser.

The page connects back to its own URL as a WebSocket (ws:// or wss:// to
match the page), sends what a person types, and shows every message, error
and the close code and reason. No external script, style sheet or font: the
Content-Security-Policy below forbids loading anything from elsewhere.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsexec dev console</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f2; color: #222; }
  header { background: #23313f; color: #fff; padding: 8px 14px; display: flex; gap: 8px; align-items: center; }
  header b { margin-right: 8px; }
  input { font: 14px monospace; padding: 4px 6px; border: 1px solid #999; border-radius: 3px; }
  #url { flex: 1; }
  button { font: 14px system-ui, sans-serif; padding: 4px 12px; cursor: pointer; }
  #status { min-width: 9em; text-align: right; }
  #log { font: 13px/1.5 monospace; padding: 8px 14px; height: calc(100vh - 110px); overflow-y: auto;
         white-space: pre-wrap; word-break: break-all; }
  #log div { border-bottom: 1px solid #e2e2de; padding: 1px 0; }
  .out { color: #1f5fa8; } .out::before { content: "\\2192  "; }
  .in { color: #206b2e; } .in::before { content: "\\2190  "; }
  .info { color: #666; font-style: italic; }
  .error, .close { color: #a82323; font-weight: bold; }
  form { display: flex; gap: 8px; padding: 8px 14px; background: #e8e8e4; }
  #message { flex: 1; }
</style>
</head>
<body>
<header>
  <b>wsexec dev console</b>
  <input id="url" aria-label="WebSocket URL" spellcheck="false">
  <button id="connect" type="button">Connect</button>
  <span id="status">not connected</span>
</header>
<div id="log" aria-live="polite"></div>
<form id="send-form">
  <input id="message" aria-label="message" placeholder="type a message, Enter sends it" autocomplete="off" disabled>
  <button id="send" type="submit" disabled>Send</button>
</form>
<script>
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const url = $("url"), log = $("log"), message = $("message"), send = $("send"), button = $("connect"), status = $("status");
  let ws = null;
  url.value = location.href.replace(/^http/, "ws").replace(/#.*$/, "");

  function show(kind, text) {
    const line = document.createElement("div");
    line.className = kind;
    line.textContent = text;
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
  }

  function setState(text, open) {
    status.textContent = text;
    message.disabled = send.disabled = !open;
    button.textContent = ws ? "Disconnect" : "Connect";
    if (open) message.focus();
  }

  function connect() {
    let socket;
    try {
      socket = new WebSocket(url.value);
    } catch (e) {
      show("error", "cannot connect: " + e.message);
      return;
    }
    ws = socket;
    socket.binaryType = "arraybuffer";
    setState("connecting\\u2026", false);
    socket.onopen = () => { show("info", "connected to " + socket.url); setState("connected", true); };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        show("in", event.data);
      } else {
        const bytes = new Uint8Array(event.data);
        const hex = Array.from(bytes.slice(0, 64), (b) => b.toString(16).padStart(2, "0")).join(" ");
        show("in", "[binary, " + bytes.length + " bytes] " + hex + (bytes.length > 64 ? " \\u2026" : ""));
      }
    };
    socket.onerror = () => show("error", "connection error");
    socket.onclose = (event) => {
      show("close", "closed: code " + event.code + (event.reason ? ", reason: " + event.reason : "") +
           (event.wasClean ? "" : " (not clean)"));
      if (ws === socket) ws = null;
      setState("closed (" + event.code + ")", false);
    };
  }

  button.addEventListener("click", () => {
    if (ws) { ws.close(1000, "closed from the dev console"); } else { connect(); }
  });
  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(message.value);
    show("out", message.value);
    message.value = "";
  });
  connect();
})();
</script>
</body>
</html>
"""

HEADERS = (
    ("Cache-Control", "no-store"),
    # Nothing but this page's own inline script and style, and WebSocket connections.
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src ws: wss:; "
     "base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
)
