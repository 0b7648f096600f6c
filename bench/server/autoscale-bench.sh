#!/usr/bin/env bash
# The elastic fleet end to end (issue 17): `fastserve autoscale --actuator local` over sim replicas, a router on its
# endpoints file, and `fastserve bench` driving a ramp then a light tail through the router. Prints when each scale
# decision came (seconds from the ramp's start) and why, each replica's exec-to-ready time, how long the fleet took to
# grow and to drain back, and whether every request got exactly one final (sent, ok, unfinished, errors, P99).
# Usage: bench/server/autoscale-bench.sh [--json]
# Knobs (environment): RAMP (ramp:2:24 req/s), RAMP_S (20), TAIL_RPS (2), TAIL_S (30), TARGET (4 in flight a
# replica), MAX (4), WINDOW_S (6: the stable window and the scale-down delay), TIME_SCALE (100: sim step times x100,
# ~0.58 s a request on the tiny model). Needs dist/fastserve and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p build/autoscale-bench
[ -d build/autoscale-bench/tiny ] || dist/fastserve make-model --preset tiny --out build/autoscale-bench/tiny --seed 7 --json >/dev/null
python3 - "$@" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, threading, time
as_json = "--json" in sys.argv[1:]
env = os.environ.get
ramp, ramp_s, tail_rps, tail_s = env("RAMP", "ramp:2:24"), env("RAMP_S", "20"), env("TAIL_RPS", "2"), env("TAIL_S", "30")
target, mx, window, scale = env("TARGET", "4"), env("MAX", "4"), env("WINDOW_S", "6"), env("TIME_SCALE", "100")
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
d = os.path.abspath("build/autoscale-bench"); ep = f"{d}/endpoints.json"
mport, first = free_port(), free_port()
events, lock = [], threading.Lock()
scaler = subprocess.Popen(["dist/fastserve", "autoscale", "--actuator", "local", "--router-metrics", f"http://127.0.0.1:{mport}/metrics",
    "--endpoints-file", ep, "--fastserve", "dist/fastserve", "--ports", f"{first}-{first + 19}", "--min-replicas", "1", "--max-replicas", mx,
    "--target-concurrency", target, "--stable-window-s", window, "--panic-window-s", "2", "--scale-down-delay-s", window,
    "--max-scale-down-per-minute", "1", "--tick-ms", "500", "--drain-delay-ms", "1000", "--json",
    "--", "--backend", "sim", "--model", f"{d}/tiny", "--workers", "1", "--sim-time-scale", scale, "--grace-ms", "15000"],
    stdout=subprocess.PIPE, stderr=open(f"{d}/autoscale.err", "w"), text=True)
def read():
    for line in scaler.stdout:
        with lock: events.append((time.monotonic(), json.loads(line)))
threading.Thread(target=read, daemon=True).start()
def wait(cond, what, secs):
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > secs or scaler.poll() is not None: sys.exit(f"timed out waiting for {what}; see {d}/autoscale.err")
        time.sleep(0.1)
def named(n):
    with lock: return [(t, e) for t, e in events if e["event"] == n]
wait(lambda: named("replica.ready"), "the first replica", 60)
router = subprocess.Popen(["dist/fastserve", "route", "--listen", "0", "--endpoints", f"file:{ep}", "--metrics-port", str(mport), "--slow-start-ms", "0", "--json"],
    stdout=subprocess.PIPE, stderr=open(f"{d}/router.err", "w"), text=True)
rport = json.loads(router.stdout.readline())["port"]
wait(lambda: any(e.get("action") == "none" for _, e in named("tick")), "the router's signal", 30)
def bench(*args):
    out = subprocess.run(["dist/fastserve", "bench", "--port", str(rport), *args, "--warmup", "0", "--json"], capture_output=True, text=True, check=True).stdout
    p = json.loads(out)["points"][0]
    return {k: p[k] for k in ("sent", "ok", "unfinished", "errors")} | {"p99_ms": p["e2e_ms"]["p99"]}
t0 = time.monotonic()
r1 = bench("--profile", ramp, "--duration", ramp_s)
t1 = time.monotonic()
r2 = bench("--rate", tail_rps, "--duration", tail_s)
def settled():
    t = named("tick")
    return t and (f := t[-1][1].get("fleet")) and f["ready"] == 1 and f["starting"] == 0 and f["draining"] == 0
wait(settled, "the fleet back at one replica", 120)
def one(e): return (f := e.get("fleet")) and f["ready"] == 1 and f["starting"] == 0 and f["draining"] == 0
t_down = next(t for t, e in named("tick") if t > t1 and one(e))
router.send_signal(signal.SIGTERM); router.wait()
scaler.send_signal(signal.SIGTERM); scaler.wait()
changes = [{"t_s": round(t - t0, 2), "action": e["action"], "from": e["current"], "to": e["desired"], "reason": e["reason"]}
           for t, e in named("tick") if e["action"] in ("up", "down")]
starts = {e["replica"]: t for t, e in named("replica.starting")}
ready_ms = [round((t - starts[e["replica"]]) * 1000) for t, e in named("replica.ready") if e["replica"] in starts]
peak = max((e.get("fleet") or {}).get("ready", 0) for _, e in named("tick"))
at_peak = next((round(t - t0, 2) for t, e in named("tick") if (e.get("fleet") or {}).get("ready") == peak), None)
res = {"ramp": ramp, "ramp_s": float(ramp_s), "target_concurrency": float(target), "window_s": float(window), "peak_ready": peak,
       "first_up_s": next((c["t_s"] for c in changes if c["action"] == "up" and c["t_s"] >= 0), None), "peak_ready_at_s": at_peak,
       "back_to_one_after_ramp_s": round(t_down - t1, 2), "replica_ready_ms": ready_ms, "changes": changes, "ramp_bench": r1, "tail_bench": r2,
       "lost": sum(r["unfinished"] + max(0, r["sent"] - r["ok"] - sum(r["errors"].values()) - r["unfinished"]) for r in (r1, r2))}
if as_json: print(json.dumps(res, indent=2)); sys.exit(0)
print(f"ramp {ramp} over {ramp_s} s, then {tail_rps} req/s for {tail_s} s; target {target} in flight a replica, windows {window} s")
for c in changes: print(f"  {c['t_s']:7.2f} s  {c['action']:4s} {c['from']} -> {c['to']}: {c['reason']}")
print(f"peak {peak} ready at {at_peak} s; first scale-up {res['first_up_s']} s after the ramp began; back to 1 ready {res['back_to_one_after_ramp_s']} s after it ended")
print(f"replica exec-to-ready (ms): {ready_ms} (median {statistics.median(ready_ms):.0f})")
for name, r in (("ramp", r1), ("tail", r2)):
    print(f"{name}: sent {r['sent']}, ok {r['ok']}, unfinished {r['unfinished']}, errors {r['errors']}, P99 {r['p99_ms']:.0f} ms")
print(f"requests without exactly one final: {res['lost']}")
PY
