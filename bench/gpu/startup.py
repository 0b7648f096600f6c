#!/usr/bin/env python3
"""Start-up of a cuda replica, measured from outside: time to ready, weight upload GB/s, lazy graph capture.

Starts `fastserve serve --backend cuda --json --port 0` STARTS times. Each time it records the ready event
(start_ms: milliseconds from exec to each stage, as the serve command reports them) and the time this script saw
it, and the backend's upload line from the engine's stderr:
    fastserve cuda: weights uploaded: G GB in S s, R GB/s (...)
On the first start only, it then drives load (`fastserve bench --concurrency C` for LOAD seconds) so the decode
graphs get captured, and collects the capture lines, timestamped as they arrive:
    fastserve cuda: graph for batch B captured in M ms (...)
Then SIGTERM, and the next start. Prints a summary and writes every number to OUT (JSON). Exit status: 0, or 1
when a start failed (no ready event before the timeout, a serve that exited, no upload line, a failed bench).

    startup.py --exe dist/fastserve --model DIR --out startup.json [--starts 3] [--load 8] [--concurrency 32]
               [--timeout 300] [-- EXTRA SERVE ARGS]
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

UPLOAD = re.compile(r"fastserve cuda: weights uploaded: ([0-9.]+) GB in ([0-9.]+) s, ([0-9.]+) GB/s")
CAPTURE = re.compile(r"fastserve cuda: graph for batch (\d+) captured in ([0-9.]+) ms")


class Serve:
    """One `fastserve serve` process; every line of its stdout and stderr kept with the seconds since exec."""

    def __init__(self, argv):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.out, self.err = [], []
        self.ready = threading.Event()
        self.ready_event, self.ready_seen_s = None, None
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, args=(self.p.stdout, self.out, True), daemon=True),
                        threading.Thread(target=self._read, args=(self.p.stderr, self.err, False), daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self, stream, lines, stdout):
        for line in stream:
            t = time.monotonic() - self.t0
            line = line.rstrip("\n")
            with self.lock:
                lines.append((t, line))
            if stdout and self.ready_event is None and line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "ready":
                    self.ready_event, self.ready_seen_s = ev, t
                    self.ready.set()
        if stdout:
            self.ready.set()  # the process closed stdout: wake the waiter

    def wait_ready(self, timeout):
        self.ready.wait(timeout)
        return self.ready_event

    def stop(self, grace=60):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for t in self.threads:
            t.join(5)
        return self.p.returncode

    def stderr_lines(self):
        with self.lock:
            return list(self.err)


def parse_upload(lines):
    """The last upload line's (gigabytes, seconds, GB/s, full line), or None."""
    found = None
    for _, line in lines:
        m = UPLOAD.search(line)
        if m:
            found = {"gb": float(m.group(1)), "seconds": float(m.group(2)), "gb_per_s": float(m.group(3)), "line": line.strip()}
    return found


def parse_captures(lines, ready_s):
    """Every capture line: batch size, milliseconds, and when it came, in seconds after the ready event."""
    caps = []
    for t, line in lines:
        m = CAPTURE.search(line)
        if m:
            caps.append({"batch": int(m.group(1)), "ms": float(m.group(2)), "after_ready_s": round(t - ready_s, 3)})
    return caps


def one_start(args, index, load):
    argv = [args.exe, "serve", "--model", args.model, "--backend", "cuda", "--json", "--port", "0", "--grace-ms", "5000"] + args.serve_args
    s = Serve(argv)
    result = {"start": index, "argv": argv}
    ev = s.wait_ready(args.timeout)
    if ev is None:
        code = s.stop()
        result["error"] = f"no ready event within {args.timeout} s (serve exited {code})" if code is not None else "no ready event"
        result["stderr_tail"] = [l for _, l in s.stderr_lines()[-20:]]
        return result
    result["ready_seen_s"] = round(s.ready_seen_s, 3)
    result["start_ms"] = ev.get("start_ms", {})
    if load > 0:
        bench = [args.exe, "bench", "--port", str(ev["port"]), "--concurrency", str(args.concurrency), "--duration", str(load),
                 "--warmup", "0", "--drain", "10", "--max-tokens", str(args.max_tokens), "--json"]
        b = subprocess.run(bench, capture_output=True, text=True, timeout=load + 120)
        result["bench_exit"] = b.returncode
        if b.returncode != 0:
            result["error"] = f"bench exited {b.returncode}: {b.stderr.strip()[-300:]}"
        else:
            try:
                result["bench"] = json.loads(b.stdout)
            except ValueError:
                result["bench_stdout_tail"] = b.stdout[-300:]
    result["exit"] = s.stop()
    lines = s.stderr_lines()
    result["upload"] = parse_upload(lines)
    if result["upload"] is None and "error" not in result:
        result["error"] = "the engine logged no 'weights uploaded' line (is this the cuda backend?)"
    if load > 0:
        result["captures"] = parse_captures(lines, s.ready_seen_s)
    return result


def summarize(starts):
    ok = [r for r in starts if "error" not in r]
    summary = {"starts": len(starts), "failed": len(starts) - len(ok)}
    ready = [r["start_ms"].get("ready") for r in ok if isinstance(r.get("start_ms", {}).get("ready"), (int, float))]
    if ready:
        summary["ready_ms_median"] = statistics.median(ready)
        summary["ready_ms"] = ready
    seen = [r["ready_seen_s"] * 1e3 for r in ok]
    if seen:
        summary["ready_seen_ms_median"] = round(statistics.median(seen), 1)
    stages = {}
    for r in ok:
        for k, v in r.get("start_ms", {}).items():
            if isinstance(v, (int, float)):
                stages.setdefault(k, []).append(v)
    summary["stages_ms_median"] = {k: statistics.median(v) for k, v in stages.items()}
    up = [r["upload"] for r in ok if r.get("upload")]
    if up:
        summary["upload_gb"] = up[0]["gb"]
        summary["upload_gb_per_s_median"] = statistics.median(u["gb_per_s"] for u in up)
        summary["upload_seconds_median"] = statistics.median(u["seconds"] for u in up)
    caps = next((r["captures"] for r in starts if "captures" in r), None)
    if caps is not None:
        summary["graphs_captured"] = len(caps)
        summary["capture_ms_total"] = round(sum(c["ms"] for c in caps), 1)
        summary["capture_ms_max"] = max((c["ms"] for c in caps), default=0)
        summary["captures_before_ready"] = sum(1 for c in caps if c["after_ready_s"] < 0)
        summary["last_capture_after_ready_s"] = max((c["after_ready_s"] for c in caps), default=None)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exe", default="dist/fastserve")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--load", type=float, default=8, help="seconds of load after the first start (0: none)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("serve_args", nargs="*", help="after --: more arguments for serve (e.g. --eager)")
    args = ap.parse_args()
    if args.starts < 1:
        ap.error("--starts must be at least 1")
    starts = [one_start(args, i, args.load if i == 0 else 0) for i in range(args.starts)]
    summary = summarize(starts)
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "starts": starts}, f, indent=1)
    for r in starts:
        if "error" in r:
            print(f"start {r['start']}: FAILED: {r['error']}")
            for l in r.get("stderr_tail", []):
                print(f"    {l}")
    if "ready_ms_median" in summary:
        st = ", ".join(f"{k} {v:.0f}" for k, v in summary["stages_ms_median"].items())
        print(f"time to ready: median {summary['ready_ms_median']:.0f} ms from exec over {len(summary['ready_ms'])} starts "
              f"(seen here at {summary['ready_seen_ms_median']:.0f} ms; stages, ms: {st})")
    if "upload_gb_per_s_median" in summary:
        print(f"weight upload: {summary['upload_gb']:.3f} GB at {summary['upload_gb_per_s_median']:.1f} GB/s "
              f"(median {summary['upload_seconds_median']:.3f} s)")
    if "graphs_captured" in summary:
        last = summary["last_capture_after_ready_s"]
        print(f"graph capture: {summary['graphs_captured']} batch sizes in {summary['capture_ms_total']:.1f} ms in all "
              f"(longest {summary['capture_ms_max']:.1f} ms), {summary['captures_before_ready']} before ready"
              + (f", last {last:.2f} s after ready" if last is not None else ""))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
