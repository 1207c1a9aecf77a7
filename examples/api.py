#!/usr/bin/env python3
"""An API for `wsexec --callback http://127.0.0.1:8081/`: says hello on connect,
answers each message in upper case, and notes each disconnect. Python's
standard library only: python3 examples/api.py [PORT]"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: wsexec pools its connections
    disable_nagle_algorithm = True  # else each small answer waits ~40 ms for a delayed ACK

    def answer(self, status, body=b"", kind="text/plain; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # a client connects: 2xx lets it in, any other status turns it away
        self.answer(200, b"ok")

    def do_POST(self):  # a message: the answer's body goes back to that client
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(200, body.upper(), self.headers.get("Content-Type", "text/plain"))

    def do_DELETE(self):  # the connection ended
        print("closed", self.headers["Connection-Id"], self.headers["WebSocket-Close-Code"], flush=True)
        self.answer(204)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8081), Api)
print("api on port", server.server_address[1], flush=True)
server.serve_forever()
