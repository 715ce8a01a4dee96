#!/usr/bin/env python3
"""A recording TLS proxy in front of keyline-kps, for the replay check of kps_transfer_test.sh.

It plays an attacker who holds even the KPS's TLS key: it forwards each request unchanged to the real
KPS and appends it (method, path, headers, body) as one JSON line to RECORD, so the test can replay it.
Usage: record_proxy.py PORT UPSTREAM_HOST:PORT CERT KEY CAFILE RECORD
"""
import base64
import http.client
import http.server
import json
import ssl
import sys

port, upstream, cert, key, cafile, record = sys.argv[1:7]
up_host, up_port = upstream.rsplit(":", 1)


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        with open(record, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "headers": headers,
                                "body": base64.b64encode(body).decode()}) + "\n")
        ctx = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(up_host, int(up_port), context=ctx, timeout=10)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
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
