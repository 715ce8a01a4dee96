#!/usr/bin/env python3
"""A recording and rewriting TLS proxy in front of keyline-kps: the attacker of kps_transfer_test.sh.

It holds even the KPS's TLS key (not its answer-signing key, which stays on the KPS's token). Each
request is forwarded to the real KPS and recorded, with its answer, as one JSON line in RECORD
({"method", "path", "headers", "body", "status", "answer_headers", "answer"}; bodies base64), so the
test can replay requests and inspect what a device was shown. What it does to the answers is read from
MODE_FILE before each request (absent or empty: "pass"):
  pass          forward unchanged
  strip         drop Signature, Signature-Input and Content-Digest (an unsigned answer)
  reseal FILE   answer GET .../key with the bytes of FILE (a key the attacker sealed to the target's
                public transport key) and a Content-Digest that matches them; the KPS signature stays
  replay        answer every GET /v1/notifications with the first such answer it saw (an authentic
                answer, but to another request)
Usage: record_proxy.py PORT UPSTREAM_HOST:PORT CERT KEY CAFILE RECORD [MODE_FILE]
"""
import base64
import hashlib
import http.client
import http.server
import json
import os
import ssl
import sys
import threading

port, upstream, cert, key, cafile, record = sys.argv[1:7]
mode_file = sys.argv[7] if len(sys.argv) > 7 else ""
up_host, up_port = upstream.rsplit(":", 1)
lock = threading.Lock()
first_notifications = []


def mode():
    if not mode_file or not os.path.exists(mode_file):
        return ["pass"]
    words = open(mode_file).read().split()
    return words or ["pass"]


def rewrite(method, path, status, headers, data):
    m = mode()
    if m[0] == "strip":
        headers = [(k, v) for k, v in headers if k.lower() not in ("signature", "signature-input", "content-digest")]
    elif m[0] == "reseal" and method == "GET" and path.endswith("/key") and status == 200:
        data = open(m[1], "rb").read()
        digest = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
        headers = [(k, digest if k.lower() == "content-digest" else v) for k, v in headers]
    elif path.startswith("/v1/notifications") and method == "GET":
        with lock:
            if not first_notifications:
                first_notifications.append((status, headers, data))
            elif m[0] == "replay":
                status, headers, data = first_notifications[0]
    return status, headers, data


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        ctx = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(up_host, int(up_port), context=ctx, timeout=40)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        answer_headers = [(k, v) for k, v in resp.getheaders()
                          if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        status, answer_headers, data = rewrite(self.command, self.path, resp.status, answer_headers, data)
        with lock, open(record, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "headers": headers,
                                "body": base64.b64encode(body).decode(), "status": status,
                                "answer_headers": dict(answer_headers),
                                "answer": base64.b64encode(data).decode()}) + "\n")
        self.send_response(status)
        for k, v in answer_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = forward
    do_POST = forward

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Proxy)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("proxy ready", flush=True)
server.serve_forever()
