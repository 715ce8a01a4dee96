#!/usr/bin/env python3
"""Drivers for the line page test (linepage.sh), standard library only.

  cdp.py browse RUN_LOG OUT_DIR TOTAL   headless Chromium (started at once) on the line page that
                                        RUN_LOG names, over the DevTools protocol: the page loads, its
                                        done count rises while devices finish, a failure shows with its
                                        reason; screenshots and /metrics (once the failure is in) in OUT_DIR
  cdp.py stall HOST:PORT SECONDS        a client that never reads: connections beyond the page's
                                        cap, then a few held with pipelined /events requests
  cdp.py check-metrics FILE             the Prometheus text format 0.0.4 checks promtool makes that
                                        matter here (used when promtool is not installed)

The DevTools protocol runs over a WebSocket (RFC 6455); the minimal client below speaks only what
Chromium's endpoint needs: the opening handshake (section 4.1), masked text frames from the client
(section 5.3), unmasked frames back, possibly fragmented (section 5.4), ping and close.
"""
import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


class WebSocket:
    def __init__(self, url, timeout=30):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not m:
            raise ValueError("not a ws:// URL: " + url)
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET {m.group(3)} HTTP/1.1\r\nHost: {m.group(1)}:{m.group(2)}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("WebSocket handshake: connection closed")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError("WebSocket handshake refused: " + head.split(b"\r\n")[0].decode())

    def _recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("WebSocket closed")
            data += chunk
        return data

    def send(self, text):
        payload = text.encode()
        head = bytes([0x81])  # FIN, text
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._recv_exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b1 & 0x80 else None
            data = self._recv_exact(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise ConnectionError("WebSocket closed by the browser")
            if opcode in (0x9, 0xA):  # ping or pong: Chromium's endpoint sends none; skip either
                continue
            if opcode in (0x0, 0x1, 0x2):
                message += data
                if b0 & 0x80:
                    return message.decode()


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (flat sessions)."""

    def __init__(self, out_dir):
        self.profile = tempfile.mkdtemp(prefix="chromium-", dir=out_dir)
        exe = next((c for c in ("chromium", "chromium-browser") if subprocess.call(
            ["sh", "-c", "command -v " + c], stdout=subprocess.DEVNULL) == 0), None)
        if exe is None:
            raise RuntimeError("no chromium")
        self.log = open(os.path.join(out_dir, "chromium.log"), "w")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-port=0",
             "--user-data-dir=" + self.profile, "--no-first-run", "--window-size=1280,900",
             "--disable-background-networking", "--disable-extensions", "about:blank"],
            stdout=self.log, stderr=self.log)
        self.next_id = 0
        self.session = None
        try:
            self.ws = WebSocket(self._devtools_url())
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def _devtools_url(self):
        # --remote-debugging-port=0: Chromium writes the port it took and the browser's path here.
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        for _ in range(300):
            if os.path.exists(port_file) and len(open(port_file).read().split("\n")) >= 2:
                port, path = open(port_file).read().split("\n")[:2]
                return f"ws://127.0.0.1:{port}{path}"
            if self.proc.poll() is not None:
                raise RuntimeError("chromium exited %d (see chromium.log)" % self.proc.returncode)
            time.sleep(0.1)
        raise RuntimeError("chromium wrote no DevToolsActivePort in 30 s (see chromium.log)")

    def call(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            return None
        return r["result"].get("value")

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.call("Browser.close", session=False)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


STATE = """(() => ({
  title: document.title,
  conn: document.getElementById('conn').textContent,
  done: Number(document.body.dataset.done || -1),
  failed: Number(document.body.dataset.failed || -1),
  failures: Array.from(document.querySelectorAll('#failures tbody tr')).map(r => r.innerText),
  fixtures: document.querySelectorAll('#fixtures tbody tr').length,
  external: performance.getEntriesByType('resource').map(e => e.name)
    .filter(n => !n.startsWith(location.origin)),
}))()"""


def wait_for(browser, what, test, seconds):
    deadline = time.time() + seconds
    state = None
    while time.time() < deadline:
        state = browser.eval(STATE)
        if state and test(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen in {seconds} s; last page state {json.dumps(state)}")


def listeners(run_log, seconds=60):
    """The page's and the operations listener's URLs from the run's "line: ... on http://..." lines."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        text = open(run_log).read() if os.path.exists(run_log) else ""
        page = re.search(r"^line: line page on (http://[0-9.:]+)/$", text, re.M)
        ops = re.search(r"^line: operations \(metrics, healthz\) on (http://[0-9.:]+)$", text, re.M)
        if page and ops:
            return page.group(1), ops.group(1)
        time.sleep(0.05)
    raise AssertionError("the run did not name its listeners in " + run_log)


HOSTILE = """(() => {
  show({time: "t", elapsed_s: 1, done: 1, failed: 1, in_flight: 0, waiting: 0, queued: 0, target: 2, rate: 1,
        eta_s: null, outbox: 0, stopping: false, db_down_s: 0, halted: "<i>halted</i>", readers: false,
        failures: [{reason: "<b>4012</b>", text: '<img src=x onerror="window.pwned=1">'}],
        fixtures: [{name: "<script>window.pwned=2</script>", state: "busy", step: "<u>claim</u>", chip: "",
                    imei: "", done: 0, failed: 0}]});
  return {markup: document.querySelectorAll("main img, main script, main b, main i, main u").length,
          failure: document.querySelector("#failures tbody tr").innerText,
          fixture: document.querySelector("#fixtures tbody tr").innerText};
})()"""


def hostile(browser):
    """Text a device or a failure could carry is shown as text, never made markup."""
    r = browser.eval(HOSTILE)
    if not r or r["markup"] != 0 or "<img src=x" not in r["failure"] or "<script>" not in r["fixture"]:
        raise AssertionError("the page made markup of a snapshot's text: " + json.dumps(r))
    time.sleep(0.5)
    if browser.eval("window.pwned || 0") != 0:
        raise AssertionError("a snapshot's text ran as script")
    print("ok: markup in a snapshot (failure text, fixture name) is shown as text")


def browse(run_log, out_dir, total):
    total = int(total)
    browser = Browser(out_dir)  # before the line starts: Chromium takes a few seconds to come up
    try:
        url, ops = listeners(run_log)
        browser.open(url + "/")
        s = wait_for(browser, "the page loads and gets its first event",
                     lambda s: s["title"] == "keyline line" and s["conn"] == "live" and s["done"] >= 0, 30)
        print(f"ok: the page loaded and is live (done {s['done']})")
        first = wait_for(browser, "devices done while the line runs", lambda s: 0 < s["done"] < total - 2, 60)
        shot1 = browser.screenshot(os.path.join(out_dir, "linepage-1.png"))
        later = wait_for(browser, "the done count rising on the same page",
                         lambda s: s["done"] > first["done"] + 1, 60)
        print(f"ok: done rose from {first['done']} to {later['done']} without a reload ({shot1})")
        failed = wait_for(browser, "the failure with its reason",
                          lambda s: s["failed"] >= 1 and any("error 4012" in f and "step backup" in f
                                                             for f in s["failures"]), 60)
        print("ok: the failure shows with its reason: " + failed["failures"][0].replace("\t", " | ")[:200])
        with urllib.request.urlopen(ops + "/metrics", timeout=10) as r:
            open(os.path.join(out_dir, "metrics.txt"), "wb").write(r.read())
        end = wait_for(browser, "every device handled", lambda s: s["done"] + s["failed"] >= total, 90)
        if end["external"]:
            raise AssertionError("the page loaded from elsewhere: " + ", ".join(end["external"]))
        if end["fixtures"] < total:
            raise AssertionError(f"{end['fixtures']} fixtures shown, want {total}")
        shot = browser.screenshot(os.path.join(out_dir, "linepage.png"))
        print(f"ok: {end['done']} done, {end['failed']} failed on the page, {end['fixtures']} fixtures")
        print("screenshot: " + shot)
        hostile(browser)
    finally:
        browser.close()


def stall(address, seconds, opened=24, kept=8):
    """More connections than the page takes from one address (the core refuses the rest, counted),
    then `kept` of them held with pipelined /events requests that are never read."""
    host, port = address.rsplit(":", 1)
    held = []
    request = (f"GET /events HTTP/1.1\r\nHost: {address}\r\nLast-Event-ID: 1.0\r\n\r\n" * 64).encode()
    for _ in range(opened):
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(request)
            held.append(s)
        except OSError:
            pass
    time.sleep(1)
    # Room again for the browser, which comes from the same address.
    for s in held[kept:]:
        s.close()
    print(f"stall: {min(kept, len(held))} connections that never read, of {opened} opened", flush=True)
    time.sleep(float(seconds))
    for s in held[:kept]:
        s.close()


NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(\{{(.*)\}})? (-?[0-9.eE+-]+|[+-]Inf|NaN)( -?\d+)?$")
LABEL = re.compile(rf'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def check_metrics(path):
    """What promtool check metrics reports as errors or lint problems, for this exposition."""
    problems, types, helps, seen = [], {}, set(), set()
    for n, line in enumerate(open(path), 1):
        line = line.rstrip("\n")
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not re.fullmatch(NAME, parts[2]):
                problems.append(f"{n}: bad comment line")
                continue
            if parts[1] == "TYPE":
                if parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    problems.append(f"{n}: unknown type {parts[3]}")
                if parts[2] in types:
                    problems.append(f"{n}: second TYPE for {parts[2]}")
                types[parts[2]] = parts[3]
                if parts[3] == "counter" and not parts[2].endswith("_total"):
                    problems.append(f"{parts[2]}: counter metrics should have \"_total\" suffix")
            else:
                helps.add(parts[2])
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            problems.append(f"{n}: not a sample line: {line}")
            continue
        name, labels = m.group(1), m.group(3) or ""
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        family = name if name in types else base
        if family not in types:
            problems.append(f"{n}: {name} has no TYPE before it")
        if family not in helps:
            problems.append(f"{family}: no help text")
        rest, keys = labels, []
        while rest:
            lm = LABEL.match(rest)
            if not lm:
                problems.append(f"{n}: bad labels {{{labels}}}")
                break
            keys.append(lm.group(1))
            rest = rest[lm.end():]
        if len(keys) != len(set(keys)):
            problems.append(f"{n}: a label twice")
        if types.get(family) == "histogram" and name.endswith("_bucket") and "le" not in keys:
            problems.append(f"{n}: bucket without le")
        if (name, labels) in seen:
            problems.append(f"{n}: duplicate sample {name}{{{labels}}}")
        seen.add((name, labels))
    for p in problems:
        print("metrics: " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    # SIGTERM from the test's EXIT trap: unwind, so that Browser.close ends Chromium too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "browse" and len(sys.argv) == 5:
        browse(*sys.argv[2:])
    elif cmd == "stall" and len(sys.argv) == 4:
        stall(*sys.argv[2:])
    elif cmd == "check-metrics" and len(sys.argv) == 3:
        sys.exit(check_metrics(sys.argv[2]))
    else:
        sys.exit(__doc__)
