#!/usr/bin/env python3
"""Wire probe: sends normal and hostile byte sequences to a running `fastserve serve --backend sim` and through
`fastserve route` in front of it, and writes every reply frame (hex) to a transcript, one case per block.

    tests/wire-probe/probe.py --bin OLD/fastserve --out /tmp/old.txt
    tests/wire-probe/probe.py --bin NEW/fastserve --out /tmp/new.txt
    diff /tmp/old.txt /tmp/new.txt            # must be empty

(tests/wire-probe/compare.sh OLD NEW does the three steps.) Fields that differ by nature are masked with `..`: the
FINAL's eight hand-off timings, and a LOAD_REPORT's estimated wait and age; for a cancelled request, also its
completion-token count and its output (how far it got before the CANCEL is timing). DELTAs of one request are joined (how
tokens group into DELTA frames depends on timing) and shown once, before that request's FINAL. Each case runs on a
fresh connection; the transcript also says whether the peer closed the connection. The probe starts both processes
itself (ports chosen by the OS) and stops them at the end.
"""
import argparse
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

MAGIC = 0x56525346
HELLO, REQUEST, CANCEL, PING, LOAD_QUERY, DRAIN = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
HELLO_OK, DELTA, FINAL, PONG, LOAD_REPORT, DRAIN_OK, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x8F


def frame(ftype, payload=b"", fid=0, flags=0, length=None):
    n = len(payload) if length is None else length
    return struct.pack("<IBBHQ", n, ftype, flags, 0, fid) + payload


def str16(b):
    return struct.pack("<H", len(b)) + b


def hello(major=1, minor=0, name=b"probe", magic=MAGIC):
    return frame(HELLO, struct.pack("<IHH", magic, major, minor) + str16(name))


def request(fid, prompt=b"hello world", max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, seed=0, deadline=0,
            priority=0, flags=0, stops=(), prompt_len=None, ids=None):
    body = prompt if ids is None else b"".join(struct.pack("<I", i) for i in ids)
    if ids is not None:
        flags |= 1
    plen = (len(prompt) if ids is None else len(ids)) if prompt_len is None else prompt_len
    fixed = struct.pack("<IffiQIBBHII", max_tokens, temperature, top_p, top_k, seed, deadline, priority, flags,
                        len(stops), plen, 0)
    return frame(REQUEST, fixed + body + b"".join(str16(s) for s in stops), fid)


def ping(data=b"12345678"):
    return frame(PING, data)


def load_query(interval=0, flags=0):
    return frame(LOAD_QUERY, struct.pack("<I", interval), flags=flags)


# A case: a list of steps. bytes = send; ("sleep", ms); ("shut",) = half-close our side; ("wait", ms) = how long
# to keep reading after the last step with no data before giving up (default 700 ms).
H = hello()


def cases(server):
    big = 65536  # --max-frame given to both processes
    c = {
        # ---- normal
        "hello": [H],
        "ping": [H, ping()],
        "ping-empty": [H, ping(b"")],
        "load-once": [H, load_query(0)],
        "request-greedy": [H, request(1, max_tokens=6)],
        "request-ids": [H, request(7, ids=[1, 2, 3, 4], max_tokens=5)],
        "request-notext": [H, request(3, max_tokens=4, flags=8)],
        "request-seeded": [H, request(2, max_tokens=6, temperature=0.8, top_p=0.9, top_k=20, seed=42, flags=2)],
        "request-stop": [H, request(4, max_tokens=12, stops=(b"e", b"zz"))],
        "two-requests-pipelined": [H + request(1, max_tokens=3) + request(2, max_tokens=4)],
        "cancel-unknown": [H, frame(CANCEL, b"", 99), ping()],
        "cancel-running": [H, request(5, max_tokens=1500, flags=4) + frame(CANCEL, b"", 5)],
        "unsubscribe": [H, load_query(0, flags=1), ping()],
        "dribble-bytes": [bytes([b]) for b in H + ping(b"abc")],
        "dribble-header-split": [(H + request(1, max_tokens=3))[:20], ("sleep", 50), (H + request(1, max_tokens=3))[20:]],
        "many-pings-one-write": [H + b"".join(ping(struct.pack("<Q", i)) for i in range(40))],
        # ---- hostile: handshake
        "first-not-hello": [ping()],
        "hello-bad-magic": [hello(magic=0x12345678)],
        "hello-major-2": [hello(major=2)],
        "hello-minor-9": [hello(minor=9), ping()],
        "hello-truncated": [frame(HELLO, b"FSR")],
        "hello-empty-name": [hello(name=b""), ping()],
        "hello-str-overrun": [frame(HELLO, struct.pack("<IHHH", MAGIC, 1, 0, 200) + b"ab")],
        "first-too-large": [frame(HELLO, b"", length=big + 1)],
        "first-length-max": [frame(HELLO, b"", length=0xFFFFFFFF)],
        "garbage-16": [b"\xff" * 16],
        "zero-header": [b"\x00" * 16],
        "eof-mid-header": [H[:7], ("shut",)],
        "eof-mid-payload": [H[:20], ("shut",)],
        # ---- hostile: after HELLO
        "second-hello": [H, H, ping()],
        "unknown-type": [H, frame(0x7F, b"x"), ping()],
        "server-only-type": [H, frame(DELTA, b"\x00" * 8, 1), frame(HELLO_OK), ping()],
        "request-id-zero": [H, request(0), ping()],
        "request-truncated": [H, frame(REQUEST, b"\x01\x00", 9), ping()],
        "request-prompt-len-lie": [H, request(9, prompt_len=1000), ping()],
        "request-bad-temp": [H, request(9, temperature=-1.0), ping()],
        "request-nan-top-p": [H, request(9, top_p=float("nan")), ping()],
        "request-max-tokens-0": [H, request(9, max_tokens=0), ping()],
        "request-huge-max-tokens": [H, request(9, max_tokens=0xFFFFFFFF), ping()],
        "request-too-many-stops": [H, request(9, stops=tuple(b"s%d" % i for i in range(9))), ping()],
        "request-empty-stop": [H, request(9, stops=(b"",)), ping()],
        "request-bad-utf8": [H, request(9, prompt=b"\xff\xfe\xc3"), ping()],
        "request-empty-prompt": [H, request(9, prompt=b"")],
        "request-dup-id": [H, request(6, max_tokens=1500, flags=4) + request(6, max_tokens=2), frame(CANCEL, b"", 6)],
        "request-over-in-flight": [H, request(1, max_tokens=1500, flags=4) + request(2, max_tokens=1500, flags=4)
                                   + request(3, max_tokens=2) + frame(CANCEL, b"", 1) + frame(CANCEL, b"", 2)],
        "ping-65": [H, ping(b"p" * 65), ping()],
        "load-query-empty": [H, frame(LOAD_QUERY), ping()],
        "drain-no-token": [H, frame(DRAIN), ping()],
        "drain-wrong-token": [H, frame(DRAIN, str16(b"wrong")), ping()],
        "frame-too-large": [H, frame(PING, b"", length=big + 1)],
        "frame-at-max": [H, frame(PING, b"q" * big), ping()],
        "too-large-after-frames": [H + ping(b"a") + frame(PING, b"", length=0x7FFFFFFF)],
        "trailing-garbage": [H + ping() + b"\x01\x02\x03", ("sleep", 100), ("shut",)],
    }
    if server == "serve":
        # The router's frame and idle timeouts are not settable from its CLI (10 s, 60 s): the replica's only.
        c["partial-frame-timeout"] = [H, ping()[:10], ("wait", 1500)]
        c["idle-timeout"] = [H, ("wait", 3000)]
        c["no-hello-timeout"] = [("wait", 3000)]
    return c


def run_case(port, steps):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = bytearray()
    closed = False
    wait_ms = 700
    for st in steps:
        if isinstance(st, (bytes, bytearray)):
            try:
                s.sendall(st)
            except OSError:
                closed = True
                break
            if len(steps) > 20:
                time.sleep(0.002)
        elif st[0] == "sleep":
            time.sleep(st[1] / 1000)
        elif st[0] == "shut":
            s.shutdown(socket.SHUT_WR)
        elif st[0] == "wait":
            wait_ms = st[1]
    deadline = time.time() + 20
    last = time.time()
    while not closed and time.time() < deadline:
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            try:
                b = s.recv(1 << 20)
            except OSError:
                closed = True
                break
            if not b:
                closed = True
                break
            data += b
            last = time.time()
        elif (time.time() - last) * 1000 > wait_ms:
            break
    s.close()
    return bytes(data), closed


def describe(data):
    """Reply frames as lines, timing fields masked, DELTAs of a request joined before its FINAL."""
    out = []
    deltas = {}  # id -> [ids bytes, text bytes, frame count is timing-dependent: not shown]
    pos = 0
    while pos + 16 <= len(data):
        n, t, fl, _, fid = struct.unpack_from("<IBBHQ", data, pos)
        if pos + 16 + n > len(data):
            break
        p = data[pos + 16:pos + 16 + n]
        pos += 16 + n
        head = f"type=0x{t:02X} flags={fl} id={fid} len="
        if t == DELTA:
            nid, tb = struct.unpack_from("<II", p, 0)
            ids, text = p[8:8 + 4 * nid], p[8 + 4 * nid:8 + 4 * nid + tb]
            d = deltas.setdefault(fid, [b"", b"", fl])
            d[0] += ids
            d[1] += text
            continue
        if t == FINAL:
            cancelled = len(p) >= 2 and struct.unpack_from("<H", p, 0)[0] == 1
            if fid in deltas:
                ids, text, dfl = deltas.pop(fid)
                # How far a request got before its CANCEL arrived (whether it sent any DELTA at all) is timing.
                if not cancelled:
                    out.append(f"  DELTA* id={fid} flags={dfl} ids={ids.hex()} text={text.hex()}")
            if cancelled:
                hexp = p[:16].hex() + ".." * 4 + p[20:24].hex() + ".." * 32 + p[56:].hex()
            else:
                hexp = p[:24].hex() + ".." * 32 + p[56:].hex()
        elif t == LOAD_REPORT and len(p) >= 32:
            hexp = p[:20].hex() + ".." * 4 + p[24:28].hex() + ".." * 4 + p[32:].hex()
        else:
            hexp = p.hex()
        out.append(f"  {head}{n} {hexp}")
    for fid, (ids, text, dfl) in deltas.items():
        out.append(f"  DELTA* id={fid} flags={dfl} ids={ids.hex()} text={text.hex()} (no FINAL)")
    if pos != len(data):
        out.append(f"  trailing {len(data) - pos} bytes: {data[pos:].hex()}")
    return out


def start(argv, env=None):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = p.stdout.readline()
    if not line:
        p.kill()
        sys.exit(f"{argv[1]} did not start")
    return p, json.loads(line)["port"]


def wait_ready(port):
    """Until a request through this port finishes ok (the router needs its upstream connection first)."""
    until = time.time() + 30
    while time.time() < until:
        data, _ = run_case(port, [H, request(1, max_tokens=1)])
        if any(l.strip().startswith("type=0x83") and " 0000" in l[:60] for l in describe(data)):
            return
        time.sleep(0.2)
    sys.exit(f"port {port} never answered a request")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="a model directory (default: make-model --preset tiny --seed 7 into a temp dir)")
    ap.add_argument("--only", help="comma-separated case names")
    a = ap.parse_args()
    b = os.path.abspath(a.bin)
    tmp = tempfile.mkdtemp(prefix="wire-probe-")
    model = a.model
    if model is None:
        model = os.path.join(tmp, "tiny")
        subprocess.run([b, "make-model", "--preset", "tiny", "--seed", "7", "--out", model], check=True,
                       stdout=subprocess.DEVNULL)
    env = dict(os.environ, FASTSERVE_ADMIN_TOKEN="probe-secret")
    replica = [b, "serve", "--port", "0", "--json", "--metrics-port", "0", "--agent-port", "0", "--backend", "sim",
               "--model", model, "--workers", "1", "--max-frame", "65536", "--max-in-flight", "2",
               "--name", "probe-replica"]
    # The short timeouts are for the replica's own cases; the router's replica keeps the defaults, or it would close
    # the router's (idle) upstream connection every 1.5 s and requests would race the reconnect.
    serve, sport = start(replica + ["--frame-timeout-ms", "400", "--idle-timeout-ms", "1500"], env)
    upstream = route = None
    lines = []
    try:
        upstream, uport = start(replica, env)
        wait_ready(sport)
        wait_ready(uport)
        route, rport = start([b, "route", "--listen", "0", "--endpoints", f"127.0.0.1:{uport}", "--json",
                              "--max-frame", "65536", "--max-in-flight", "2", "--name", "probe-router",
                              "--connections-per-endpoint", "1", "--slow-start-ms", "0"])
        wait_ready(rport)
        only = set(a.only.split(",")) if a.only else None
        for server, port in (("serve", sport), ("route", rport)):
            for name, steps in cases(server).items():
                if only and name not in only:
                    continue
                data, closed = run_case(port, steps)
                lines.append(f"[{server}] {name}: {'closed by peer' if closed else 'open'}")
                lines.extend(describe(data))
    finally:
        for p in (route, upstream, serve):
            if p is not None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(lines)} lines -> {a.out}")


if __name__ == "__main__":
    main()
