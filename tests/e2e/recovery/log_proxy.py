#!/usr/bin/env python3
"""A rewriting proxy in front of the public DB for tests/e2e/recovery/log_restore.sh: plain HTTP in,
HTTPS to the real keyline-backupdb out, and on the way back it does what the file MODE_FILE says
(read at every request, so the test switches it between runs):

  pass            forward untouched
  flip-proof      flip one bit of the first hash of every inclusion proof
  flip-leaf       the proof answer names another leaf index (same hashes)
  flip-root       change the checkpoint's root line (its signature then covers other text)
  no-proof        answer every proof request with 404 (a record the log does not hold)
  flip-consistency flip one bit of the first hash of every consistency proof
  flip-tile       flip one bit of every level-0 hash tile

Usage: log_proxy.py UPSTREAM_URL CA_FILE MODE_FILE PORT_FILE
"""
import base64
import http.client
import http.server
import json
import os
import ssl
import sys
import urllib.parse

upstream, ca_file, mode_file, port_file = sys.argv[1:5]
up = urllib.parse.urlparse(upstream)
ctx = ssl.create_default_context(cafile=ca_file)


def mode():
    try:
        with open(mode_file) as f:
            return f.read().strip()
    except OSError:
        return "pass"


def flip_b64(text):
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def rewrite(path, status, body, m):
    if "/proof" in path and status == 200 and m in ("flip-proof", "flip-leaf"):
        doc = json.loads(body)
        if m == "flip-proof" and doc["proof"]:
            doc["proof"][0] = flip_b64(doc["proof"][0])
        if m == "flip-leaf":
            doc["leaf_index"] = doc["leaf_index"] ^ 1
        return status, json.dumps(doc).encode()
    if "/proof" in path and m == "no-proof":
        return 404, b'{"type":"about:blank","title":"Not Found","status":404}'
    if path.startswith("/v1/log/checkpoint") and status == 200 and m == "flip-root":
        lines = body.decode().split("\n")
        lines[2] = flip_b64(lines[2])
        return status, "\n".join(lines).encode()
    if path.startswith("/v1/log/consistency") and status == 200 and m == "flip-consistency":
        doc = json.loads(body)
        if doc["proof"]:
            doc["proof"][0] = flip_b64(doc["proof"][0])
        return status, json.dumps(doc).encode()
    if path.startswith("/v1/log/tile/0/") and status == 200 and m == "flip-tile":
        raw = bytearray(body)
        raw[0] ^= 1
        return status, bytes(raw)
    return status, body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        conn = http.client.HTTPSConnection(up.hostname, up.port, context=ctx, timeout=10)
        conn.request("GET", self.path, headers={"Accept": self.headers.get("Accept", "*/*")})
        r = conn.getresponse()
        body = r.read()
        ctype = r.getheader("Content-Type", "application/octet-stream")
        conn.close()
        status, body = rewrite(self.path, r.status, body, mode())
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("log_proxy: " + (fmt % args) + "\n")


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
