#!/usr/bin/env python3
"""Every op of libfastserve_cuda.so against a PyTorch reference on the GPU (test-backend-ops style).

Prints one line per case and a summary; exits 1 if any case fails, 2 when it cannot run (no PyTorch or GPU, or a
library that does not match native/include/fastserve_cuda.h: fastserve_abi.py types every call from the header and
checks the library's ABI version). --out writes the cases as JSON.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastserve_abi  # noqa: E402  (the library's ctypes signatures and ABI check, read from the header)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", default="dist/libfastserve_cuda.so")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    try:
        lib = fastserve_abi.load(args.lib)
    except fastserve_abi.AbiError as e:
        print(f"ops_check: {e}", file=sys.stderr)
        return 2
    F32, F16, BF16, F8 = (fastserve_abi.constant(n) for n in ("FS_F32", "FS_F16", "FS_BF16", "FS_F8E4M3"))
    try:
        import torch
    except ImportError:
        print("ops_check: PyTorch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("ops_check: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    assert lib.fs_cuda_init(0) == 0, lib.fs_cuda_last_error()
    dev = "cuda"
    S = lambda: torch.cuda.current_stream().cuda_stream
    P = lambda t: None if t is None else t.data_ptr()
    cases = []

    def call(name, *a):
        st = getattr(lib, name)(*a)
        if st != 0:
            raise RuntimeError(f"{name}: status {st}: {lib.fs_cuda_last_error().decode()}")
        torch.cuda.synchronize()

    def report(name, err, tol):
        ok = err <= tol
        cases.append(dict(case=name, err=err, tol=tol, ok=ok))
        print(f"{'ok  ' if ok else 'FAIL'} {name:48s} err {err:.2e} (tol {tol:.0e})")

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

    def run(name, fn):
        try:
            fn()
        except Exception as e:
            cases.append(dict(case=name, ok=False, error=str(e)))
            print(f"FAIL {name}: {e}")

    # embedding
    def embedding():
        vocab, cols = 1000, 384
        tok = torch.tensor([0, 5, 999, 5, 42, 1000, -1], dtype=torch.int32, device=dev)
        valid = (tok >= 0) & (tok < vocab)
        base = torch.randn(vocab, cols, device=dev)
        for dt, table, scale, deq in [
            (F32, base, None, base),
            (F16, base.half(), None, base.half().float()),
            (BF16, base.bfloat16(), None, base.bfloat16().float()),
        ] + [(F8, *(lambda q, s: (q.view(torch.uint8), s, q.float() * s[:, None]))(
                (base / (base.abs().amax(1, keepdim=True) / 448)).clamp(-448, 448).to(torch.float8_e4m3fn),
                (base.abs().amax(1) / 448).contiguous()))]:
            dst = torch.empty(len(tok), cols, device=dev)
            call("fs_cuda_embedding", S(), P(table.view(torch.uint8) if dt != F32 else table), dt, P(scale), vocab, cols,
                 P(tok), len(tok), P(dst))
            ref = torch.zeros_like(dst)
            ref[valid] = deq[tok[valid].long()]
            report(f"embedding dtype={dt}", rel(dst, ref), 1e-6)
    run("embedding", embedding)

    def norms():
        for rows, cols in [(1, 2048), (7, 4096), (3, 100)]:
            x, g = torch.randn(rows, cols, device=dev), torch.randn(cols, device=dev)
            ref = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-5) * g
            dst = torch.empty_like(x)
            call("fs_cuda_rmsnorm", S(), P(x), P(g), 1e-5, rows, cols, P(dst))
            report(f"rmsnorm {rows}x{cols}", rel(dst, ref), 1e-5)
            xi = x.clone()
            call("fs_cuda_rmsnorm", S(), P(xi), P(g), 1e-5, rows, cols, P(xi))
            report(f"rmsnorm in place {rows}x{cols}", rel(xi, ref), 1e-5)
            res, d = torch.randn(rows, cols, device=dev), torch.randn(rows, cols, device=dev)
            r2 = res + d
            ref2 = r2 * torch.rsqrt(r2.pow(2).mean(1, keepdim=True) + 1e-6) * g
            dst = torch.empty_like(x)
            call("fs_cuda_add_rmsnorm", S(), P(res), P(d), P(g), 1e-6, rows, cols, P(dst))
            report(f"add_rmsnorm {rows}x{cols} out", rel(dst, ref2), 1e-5)
            report(f"add_rmsnorm {rows}x{cols} residual", rel(res, r2), 1e-7)
    run("norms", norms)

    def elementwise():
        n = 100003
        a, b = torch.randn(n, device=dev), torch.randn(n, device=dev)
        r = a + b
        call("fs_cuda_add", S(), P(a), P(b), n)
        report("add", rel(a, r), 1e-7)
        g, u, d = torch.randn(n, device=dev), torch.randn(n, device=dev), torch.empty(n, device=dev)
        call("fs_cuda_silu_gate", S(), P(g), P(u), n, P(d))
        report("silu_gate", rel(d, torch.nn.functional.silu(g) * u), 1e-6)
        src = torch.randn(50, 300, device=dev)
        idx = torch.tensor([3, 0, 49, 3], dtype=torch.int32, device=dev)
        d = torch.empty(4, 300, device=dev)
        call("fs_cuda_gather_rows", S(), P(src), 300, P(idx), 4, P(d))
        report("gather_rows", rel(d, src[idx.long()]), 0.0)
    run("elementwise", elementwise)

    def rope():
        rows, heads, hd = 5, 4, 64
        x = torch.randn(rows, heads, hd, device=dev)
        pos = torch.tensor([0, 1, 17, 4095, 100000], dtype=torch.int32, device=dev)
        inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device=dev).float() / hd))
        # The angle is rounded to F32 as the kernel (and Hugging Face) compute it; sin/cos are then compared exactly.
        ang = (pos.float()[:, None] * inv[None, :]).double()
        c, s = ang.cos()[:, None, :], ang.sin()[:, None, :]
        x1, x2 = x[..., : hd // 2].double(), x[..., hd // 2:].double()
        ref = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)
        y = x.clone()
        call("fs_cuda_rope", S(), P(y), rows, heads, hd, P(pos), P(inv))
        report("rope", rel(y, ref), 1e-5)
    run("rope", rope)

    def attention():
        # (new rows, context after them) per sequence: prefill, decode, chunked prefill. The batch-1 decode cases leave
        # few CTAs, which on sm_90 takes the cluster (split keys) path.
        mixed, decode1 = [(37, 37), (1, 300), (5, 20)], [(1, 300)]
        for heads, kvh, hd, seqs in [(32, 8, 64, mixed), (32, 8, 128, mixed), (8, 8, 128, mixed), (16, 2, 96, mixed),
                                     (8, 4, 256, mixed), (12, 1, 64, mixed), (32, 8, 128, decode1),
                                     (32, 8, 64, decode1), (8, 4, 256, decode1), (16, 2, 96, [(1, 300), (1, 7)])]:
            bs, nblocks, maxb = 16, 64, 20
            kc = torch.zeros(nblocks, bs, kvh, hd, dtype=torch.bfloat16, device=dev)
            vc = torch.zeros_like(kc)
            perm = torch.randperm(nblocks, device=dev).int()
            tables = perm[: len(seqs) * maxb].reshape(len(seqs), maxb).contiguous()
            ks, vs, q_rows, seq_of, posl, slots = [], [], [], [], [], []
            for si, (new, ctx) in enumerate(seqs):
                k_all = torch.randn(ctx, kvh, hd, device=dev)
                v_all = torch.randn(ctx, kvh, hd, device=dev)
                ks.append(k_all); vs.append(v_all)
                # Older positions are already cached; the new rows go through kv_store.
                for p in range(ctx):
                    blk, off = tables[si, p // bs].item(), p % bs
                    if p < ctx - new:
                        kc[blk, off] = k_all[p].bfloat16(); vc[blk, off] = v_all[p].bfloat16()
                for p in range(ctx - new, ctx):
                    seq_of.append(si); posl.append(p); slots.append(tables[si, p // bs].item() * bs + p % bs)
            rows = len(posl)
            knew = torch.stack([ks[s][p] for s, p in zip(seq_of, posl)]).reshape(rows, kvh * hd).contiguous()
            vnew = torch.stack([vs[s][p] for s, p in zip(seq_of, posl)]).reshape(rows, kvh * hd).contiguous()
            slots_t = torch.tensor(slots + [-1], dtype=torch.int32, device=dev)
            knew_pad = torch.cat([knew, torch.randn(1, kvh * hd, device=dev)])
            vnew_pad = torch.cat([vnew, torch.randn(1, kvh * hd, device=dev)])
            call("fs_cuda_kv_store", S(), P(kc), P(vc), kvh, hd, P(knew_pad), P(vnew_pad), rows + 1, P(slots_t))
            q = torch.randn(rows, heads * hd, device=dev)
            dst = torch.empty_like(q)
            call("fs_cuda_attention", S(), P(q), rows, heads, kvh, hd, P(kc), P(vc), bs, P(tables), maxb,
                 P(torch.tensor(seq_of, dtype=torch.int32, device=dev)),
                 P(torch.tensor(posl, dtype=torch.int32, device=dev)), P(dst))
            ref = torch.empty_like(q)
            grp = heads // kvh
            for r, (s, p) in enumerate(zip(seq_of, posl)):
                K = ks[s][: p + 1].bfloat16().float()  # [p+1, kvh, hd]
                V = vs[s][: p + 1].bfloat16().float()
                qh = q[r].reshape(heads, hd)
                Kh = K.repeat_interleave(grp, dim=1)  # [p+1, heads, hd]
                Vh = V.repeat_interleave(grp, dim=1)
                sc = torch.einsum("hd,khd->hk", qh, Kh) / math.sqrt(hd)
                pr = sc.softmax(-1)
                ref[r] = torch.einsum("hk,khd->hd", pr, Vh).reshape(-1)
            report(f"kv_store+attention h{heads} kv{kvh} d{hd} rows {rows}", rel(dst, ref), 1e-4)
    run("attention", attention)

    def matmul():
        for m, k, n in [(1, 4096, 2048), (5, 4112, 4104), (16, 2048, 512), (33, 1024, 700), (300, 512, 256),
                        (600, 2064, 640), (3, 100, 50), (70, 72, 130)]:
            x = torch.randn(m, k, device=dev)
            w = torch.randn(n, k, device=dev) / math.sqrt(k)
            bias = torch.randn(n, device=dev)
            for dt, wt, wref in [(F32, w, w), (F16, w.half(), w.half().float()), (BF16, w.bfloat16(), w.bfloat16().float())]:
                dst = torch.empty(m, n, device=dev)
                call("fs_cuda_matmul", S(), P(x), m, k, P(wt), dt, None, n, P(bias), P(dst))
                report(f"matmul dtype={dt} {m}x{k}->{n}", rel(dst, x @ wref.t() + bias), 1e-5)
            ws = w.abs().amax(1) / 448
            wq = (w / ws[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
            amax = x.abs().amax(1, keepdim=True)
            xq = (x * (448.0 / amax)).clamp(-448, 448).to(torch.float8_e4m3fn)
            ref = (xq.float() @ wq.float().t()) * (amax / 448) * ws[None, :] + bias
            dst = torch.empty(m, n, device=dev)
            call("fs_cuda_matmul", S(), P(x), m, k, P(wq.view(torch.uint8)), F8, P(ws.contiguous()), n, P(bias), P(dst))
            report(f"matmul fp8 {m}x{k}->{n}", rel(dst, ref), 1e-4)
            report(f"matmul fp8 {m}x{k}->{n} vs f32 (quantization)", rel(dst, x @ w.t() + bias), 0.1)
    run("matmul", matmul)

    def sample():
        rows, vocab = 6, 50000
        logits = torch.randn(rows, vocab, device=dev) * 3
        logits[0, 123] = logits[0, 777] = 100.0  # tie: lowest id wins
        ws = torch.empty(lib.fs_cuda_sample_workspace_bytes(rows, vocab), dtype=torch.uint8, device=dev)
        out = torch.empty(rows, dtype=torch.int32, device=dev)
        seeds = torch.arange(rows, dtype=torch.int64, device=dev) + 7

        def draw(temp, top_p, top_k, step):
            t = torch.full((rows,), temp, device=dev)
            p = torch.full((rows,), top_p, device=dev)
            kk = torch.full((rows,), top_k, dtype=torch.int32, device=dev)
            ctr = torch.full((rows,), step, dtype=torch.int64, device=dev)
            call("fs_cuda_sample", S(), P(logits), rows, vocab, P(t), P(p), P(kk), P(seeds), P(ctr), P(ws), ws.numel(), P(out))
            return out.clone()

        g = draw(0.0, 1.0, 0, 0)
        ref = logits.argmax(1).int()
        report("sample greedy (lowest id on ties)", float((g != ref).sum().item()), 0)
        report("sample top_k=1 is the arg-max", float((draw(1.0, 1.0, 1, 3) != ref).sum().item()), 0)
        a, b = draw(0.8, 0.9, 50, 11), draw(0.8, 0.9, 50, 11)
        report("sample same (seed, step) same token", float((a != b).sum().item()), 0)
        # Draws over many steps stay within the top-k set and follow softmax(logits / T) restricted to it.
        small = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 0.2, 1.5]], device=dev)
        lg1 = small.repeat(rows, 1).contiguous()
        w1 = torch.empty(lib.fs_cuda_sample_workspace_bytes(rows, 8), dtype=torch.uint8, device=dev)
        counts = torch.zeros(8)
        steps = 4000
        t = torch.full((rows,), 1.0, device=dev)
        p = torch.full((rows,), 1.0, device=dev)
        kk = torch.full((rows,), 4, dtype=torch.int32, device=dev)
        for st in range(steps):
            ctr = torch.full((rows,), st, dtype=torch.int64, device=dev)
            call("fs_cuda_sample", S(), P(lg1), rows, 8, P(t), P(p), P(kk), P(seeds), P(ctr), P(w1), w1.numel(), P(out))
            for v in out.tolist():
                counts[v] += 1
        keep = small[0].topk(4).indices.cpu()
        expect = torch.zeros(8)
        expect[keep] = small[0].cpu()[keep].softmax(0)
        freq = counts / counts.sum()
        report("sample top_k=4 frequencies (max abs diff)", (freq - expect).abs().max().item(), 0.02)
        # top_p: probabilities softmax(small) -> smallest prefix reaching 0.6
        pr = small[0].cpu().softmax(0)
        order = pr.argsort(descending=True)
        csum = pr[order].cumsum(0)
        nkeep = int((csum < 0.6).sum().item()) + 1
        allowed = set(order[:nkeep].tolist())
        p = torch.full((rows,), 0.6, device=dev)
        kk = torch.zeros(rows, dtype=torch.int32, device=dev)
        seen = set()
        for st in range(500):
            ctr = torch.full((rows,), st, dtype=torch.int64, device=dev)
            call("fs_cuda_sample", S(), P(lg1), rows, 8, P(t), P(p), P(kk), P(seeds), P(ctr), P(w1), w1.numel(), P(out))
            seen.update(out.tolist())
        report("sample top_p=0.6 stays in the nucleus", float(len(seen - allowed)), 0)
    run("sample", sample)

    failed = [c for c in cases if not c["ok"]]
    print(f"{len(cases) - len(failed)} ok, {len(failed)} failed")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(cases=cases, failed=len(failed)), fh, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
