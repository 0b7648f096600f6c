#!/usr/bin/env bash
# TLS cost per request on the binary protocol (issue 20): two identical zero-cost `--backend sim` replicas
# (--sim-time-scale 0, as bench/ab-bench.sh's capacity points) on the tiny model's tokenizer,
# one plaintext and one with --tls-cert/--tls-key (a throwaway CA and leaf made with openssl), driven by
# `fastserve bench` in a closed loop of tiny requests (a one-character prompt, one token), plaintext and TLS in
# alternating rounds so drift on a shared machine hits both alike. Prints, per mode: requests/s, P50/P99 end-to-end
# latency (median over the rounds), and CPU per request of the replica (all its processes, from /proc) and of the
# load generator (rusage); then TLS's cost: added latency and CPU per request.
# Usage: bench/server/tls-bench.sh [--json]
# Knobs (environment): ROUNDS (3), SECONDS_PER_ROUND (15), CONCURRENCY (16), CONNECTIONS (4); BASE=DIR adds a third
# mode, "base": DIR/fastserve (another build, e.g. the commit before TLS) serving and benchmarking plaintext, to check
# that the plaintext path did not get slower. Needs dist/fastserve, openssl and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
d=build/tls-bench
mkdir -p "$d"
[ -d "$d/tiny" ] || dist/fastserve make-model --preset tiny --out "$d/tiny" --seed 7 --json >/dev/null
if [ ! -f "$d/leaf.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 -subj "/CN=tls-bench CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/leaf.key" -out "$d/leaf.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/leaf.ext"
  openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -out "$d/leaf.pem" -days 2 -extfile "$d/leaf.ext" 2>/dev/null
fi
python3 - "$@" <<'PY'
import json, os, resource, statistics, subprocess, sys, time
as_json = "--json" in sys.argv[1:]
env = os.environ.get
rounds, secs, conc, conns = int(env("ROUNDS", "3")), env("SECONDS_PER_ROUND", "15"), env("CONCURRENCY", "16"), env("CONNECTIONS", "4")
d = os.path.abspath("build/tls-bench")
tick = os.sysconf("SC_CLK_TCK")

base = env("BASE")
def start(name, extra, exe="dist/fastserve"):
    p = subprocess.Popen([exe, "serve", "--port", "0", "--json", "--backend", "sim", "--model", f"{d}/tiny", "--workers", "1",
                          "--sim-time-scale", "0", "--max-seqs", "1024", "--max-batched-tokens", "4096", *extra],
                         stdout=subprocess.PIPE, stderr=open(f"{d}/{name}.err", "w"), text=True)
    line = p.stdout.readline()
    if not line: sys.exit(f"the {name} replica did not start; see {d}/{name}.err")
    return p, json.loads(line)["port"]

def tree_cpu(pid):
    # utime + stime of the supervisor and its children (engine, worker), in seconds.
    total, pids = 0, [pid]
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                st = open(f"/proc/{e}/stat").read()
                if int(st[st.rindex(")") + 2:].split()[1]) == pid: pids.append(int(e))
            except OSError: pass
    for q in pids:
        try:
            f = open(f"/proc/{q}/stat").read(); f = f[f.rindex(")") + 2:].split()
            total += int(f[11]) + int(f[12])
        except OSError: pass
    return total / tick

plain, pport = start("plain", [])
tls, tport = start("tls", ["--tls-cert", f"{d}/leaf.pem", "--tls-key", f"{d}/leaf.key"])
modes = {"plaintext": (plain, pport, []), "tls": (tls, tport, ["--tls-ca", f"{d}/ca.pem", "--tls-host", "localhost"])}
exes = {m: "dist/fastserve" for m in modes}
if base:
    modes["base"] = (*start("base", [], f"{base}/fastserve"), [])
    exes["base"] = f"{base}/fastserve"
runs = {m: [] for m in modes}
try:
    for i in range(rounds):
        for m, (proc, port, flags) in modes.items():
            c0, r0 = tree_cpu(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([exes[m], "bench", "--port", str(port), *flags, "--concurrency", conc, "--connections", conns,
                                  "--duration", secs, "--warmup", "2", "--max-tokens", "1", "--prompt", "x", "--no-text", "--no-throttle", "--json"],
                                 capture_output=True, text=True)
            if out.returncode != 0: sys.exit(f"bench ({m}) failed: {out.stderr.strip()}")
            c1, r1 = tree_cpu(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
            p = json.loads(out.stdout)["points"][0]
            # CPU over the whole run (warm-up and drain included) per request sent in it: an upper bound, alike for both modes.
            total = max(1, p["sent"] * (float(secs) + 2) / float(secs))
            runs[m].append({"rps": p["achieved_rps"], "p50_ms": p["e2e_ms"]["p50"], "p99_ms": p["e2e_ms"]["p99"], "ok": p["ok"], "sent": p["sent"],
                            "server_cpu_us": (c1 - c0) * 1e6 / total,
                            "client_cpu_us": ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)) * 1e6 / total})
            if not as_json: print(f"round {i + 1} {m:9}: {p['achieved_rps']:8.0f} req/s  p50 {p['e2e_ms']['p50']:.3f} ms  p99 {p['e2e_ms']['p99']:.3f} ms", file=sys.stderr)
finally:
    for proc, _, _ in modes.values():
        proc.terminate(); proc.wait(20)

def med(m, k): return statistics.median(r[k] for r in runs[m])
summary = {m: {k: med(m, k) for k in ("rps", "p50_ms", "p99_ms", "server_cpu_us", "client_cpu_us")} for m in runs}
cost = {"p50_added_us": (summary["tls"]["p50_ms"] - summary["plaintext"]["p50_ms"]) * 1000,
        "p99_added_us": (summary["tls"]["p99_ms"] - summary["plaintext"]["p99_ms"]) * 1000,
        "server_cpu_added_us": summary["tls"]["server_cpu_us"] - summary["plaintext"]["server_cpu_us"],
        "client_cpu_added_us": summary["tls"]["client_cpu_us"] - summary["plaintext"]["client_cpu_us"],
        "rps_ratio": summary["tls"]["rps"] / summary["plaintext"]["rps"]}
errors = {m: sum(r["sent"] - r["ok"] for r in runs[m]) for m in runs}
if base:
    cost["plaintext_vs_base_rps_ratio"] = summary["plaintext"]["rps"] / summary["base"]["rps"]
    cost["plaintext_vs_base_p50_us"] = (summary["plaintext"]["p50_ms"] - summary["base"]["p50_ms"]) * 1000
if as_json:
    print(json.dumps({"rounds": runs, "median": summary, "tls_cost": cost, "not_ok": errors, "concurrency": int(conc), "connections": int(conns), "seconds": float(secs)}, indent=1))
else:
    print(f"{'mode':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/req':>18} {'client CPU us/req':>18} {'not ok':>7}")
    for m, s in summary.items():
        print(f"{m:10} {s['rps']:9.0f} {s['p50_ms']:8.3f} {s['p99_ms']:8.3f} {s['server_cpu_us']:18.1f} {s['client_cpu_us']:18.1f} {errors[m]:7}")
    print(f"TLS cost per request: +{cost['p50_added_us']:.0f} us at P50, +{cost['p99_added_us']:.0f} us at P99, "
          f"+{cost['server_cpu_added_us']:.1f} us replica CPU, +{cost['client_cpu_added_us']:.1f} us client CPU; throughput x{cost['rps_ratio']:.3f}")
    if base:
        print(f"plaintext against the base build: throughput x{cost['plaintext_vs_base_rps_ratio']:.3f}, {cost['plaintext_vs_base_p50_us']:+.0f} us at P50")
PY
