#!/usr/bin/env python3
"""A rewriting TLS proxy in front of keyline-backupdb, for message_e2e.sh.

It plays a public DB (or a network attacker holding its TLS key) that lies about one device: the
record of VICTIM_IMEI is served with its transport certificate (certificates[2]) swapped for the one of
DONOR_IMEI's record, and its record_hash recomputed (core/include/keyline/core/record.h, Record::hash),
so the JSON is well-formed and self-consistent. Everything else is forwarded unchanged.
MODE swap: as above; strip: the third certificate removed (a record as published before it existed).
Usage: rewrite_proxy.py PORT UPSTREAM_HOST:PORT CERT KEY CAFILE MODE VICTIM_IMEI DONOR_IMEI
"""
import base64
import hashlib
import http.client
import http.server
import json
import ssl
import struct
import sys

port, upstream, cert, key, cafile, mode, victim, donor = sys.argv[1:9]
up_host, up_port = upstream.rsplit(":", 1)


def get(path):
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(up_host, int(up_port), context=ctx, timeout=10)
    conn.request("GET", path, headers={"Accept": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.getheaders(), resp.read()


def der_of(pem):
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def record_hash(rec):
    """Record::hash: "KLRC" || 1 || chip ID || IMEI || u32 len backup || backup || u16 n || {u32 len || DER}*."""
    backup = base64.b64decode(rec["backup"])
    enc = b"KLRC\x01" + bytes.fromhex(rec["chip_id"]) + rec["imei"].encode()
    enc += struct.pack(">I", len(backup)) + backup + struct.pack(">H", len(rec["certificates"]))
    for pem in rec["certificates"]:
        der = der_of(pem)
        enc += struct.pack(">I", len(der)) + der
    return hashlib.sha256(enc).hexdigest().upper()


def rewritten():
    status, _, body = get("/v1/imei/" + victim)
    if status != 200:
        return status, body
    rec = json.loads(body)
    if mode == "swap":
        _, _, donor_body = get("/v1/imei/" + donor)
        rec["certificates"][2] = json.loads(donor_body)["certificates"][2]
    else:
        del rec["certificates"][2:]
    rec["record_hash"] = record_hash(rec)
    return 200, json.dumps(rec).encode()


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/v1/imei/" + victim:
            status, data = rewritten()
            headers = [("Content-Type", "application/json")]
        else:
            status, headers, data = get(self.path)
            headers = [(k, v) for k, v in headers
                       if k.lower() not in ("content-length", "connection", "transfer-encoding")]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Proxy)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("proxy ready", flush=True)
server.serve_forever()
