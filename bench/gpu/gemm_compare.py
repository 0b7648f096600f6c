#!/usr/bin/env python3
"""FP8 GEMM of libfastserve_cuda.so against cuBLASLt FP8 (torch._scaled_mm) and BF16 torch.matmul.

For each shape (M tokens x K in -> N out) it times, with CUDA events on torch's current stream:
  ours           fs_cuda_matmul, F32 x, E4M3 weights with per-row scales (activation quantization fused)
  scaled_mm      torch._scaled_mm on pre-quantized E4M3 x (row-wise scales), bf16 out: the GEMM alone
  q+scaled_mm    the same plus the per-row amax/quantization of x that our kernel fuses
  bf16           torch.matmul with BF16 x and BF16 weights
checks ours against an exact W8A8 reference (same quantization, F32 product) and reports the error against the
unquantized F32 product too, and estimates the weight-streaming limit of a decode step from the measured device
copy bandwidth. Prints a table and writes JSON (--out).
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastserve_abi  # noqa: E402  (the library's ctypes signatures and ABI check, read from the header)

DECODE_M = [1, 8, 32, 64, 128]
PREFILL_M = [512, 2048]
# (N, K): Llama-3.2-1B and Llama-3.1-8B projections (q/o, k/v, gate/up, down), so a whole decode step adds up.
SHAPES = [(2048, 2048), (512, 2048), (8192, 2048), (2048, 8192), (4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]

# Weight shapes of one decode step (N, K, count per layer), for the bandwidth limit.
MODELS = {
    "llama-3.2-1b": dict(layers=16, vocab=128256, hidden=2048, shapes=[(2048, 2048, 2), (512, 2048, 2), (8192, 2048, 2), (2048, 8192, 1)]),
    "llama-3.1-8b": dict(layers=32, vocab=128256, hidden=4096, shapes=[(4096, 4096, 2), (1024, 4096, 2), (14336, 4096, 2), (4096, 14336, 1)]),
}



def die(msg, code=2):
    print(f"gemm_compare: {msg}", file=sys.stderr)
    sys.exit(code)


def load_lib(path):
    """The library with every function typed from native/include/fastserve_cuda.h; refused unless its ABI version is
    the header's."""
    try:
        return fastserve_abi.load(path)
    except fastserve_abi.AbiError as e:
        die(str(e))


def check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what}: status {status}: {lib.fs_cuda_last_error().decode(errors='replace')}")


def time_ms(torch, fn, iters, warmup=5):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def iters_for(m, n, k):
    work = m * n * k
    return 200 if work < 2**30 else 50 if work < 2**36 else 20


def quantize_rows(torch, t):
    """Per-row E4M3 quantization as the kernel does it: scale = amax / 448, q = e4m3(t * (448 / amax))."""
    amax = t.abs().amax(dim=1, keepdim=True).float()
    inv = torch.where(amax > 0, 448.0 / amax, torch.zeros_like(amax))
    q = (t.float() * inv).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, amax / 448.0


def scaled_mm(torch, a, b, sa, sb):
    r = torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    return r[0] if isinstance(r, tuple) else r  # torch < 2.5 returned (out, amax)


def copy_bandwidth(torch):
    n = 256 * 2**20  # 1 GiB of F32
    a = torch.empty(n, device="cuda", dtype=torch.float32)
    b = torch.empty_like(a)
    ms = time_ms(torch, lambda: b.copy_(a), 20, warmup=3)
    del a, b
    return 2 * n * 4 / (ms * 1e-3)  # read + write, bytes/s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="dist/libfastserve_cuda.so")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer shapes (M=1,64,512 on the 8B shapes)")
    args = ap.parse_args()
    lib = load_lib(args.lib)
    fs_f8e4m3 = fastserve_abi.constant("FS_F8E4M3")

    try:
        import torch
    except ImportError:
        die("PyTorch is not installed (pip install torch); it allocates the buffers and is the reference")
    if not torch.cuda.is_available():
        die("torch.cuda.is_available() is False: no GPU or no CUDA-enabled PyTorch")
    if not hasattr(torch, "float8_e4m3fn"):
        die(f"PyTorch {torch.__version__} has no float8_e4m3fn; 2.1 or newer is needed")

    torch.cuda.set_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    check(lib, lib.fs_cuda_init(args.device), "fs_cuda_init")
    props = torch.cuda.get_device_properties(args.device)
    cc = torch.cuda.get_device_capability(args.device)
    has_scaled_mm = hasattr(torch, "_scaled_mm") and cc >= (8, 9)

    bw = copy_bandwidth(torch)
    print(f"device: {props.name} (sm_{cc[0]}{cc[1]}, {props.multi_processor_count} SMs), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; device copy bandwidth {bw / 1e9:.0f} GB/s")

    ms_list = DECODE_M + PREFILL_M
    shapes = SHAPES
    if args.quick:
        ms_list, shapes = [1, 64, 512], [(4096, 4096), (14336, 4096), (4096, 14336)]

    results = []
    hdr = f"{'M':>5} {'N':>6} {'K':>6} | {'ours ms':>8} {'GB/s':>6} {'TF/s':>6} | {'scaled_mm':>9} {'q+smm':>8} {'bf16':>8} | {'ours/smm':>8} {'rel err':>8} {'vs f32':>8} {'bw limit':>8}"
    print(hdr)
    print("-" * len(hdr))
    for n, k in shapes:
        w = torch.randn(n, k, device="cuda") * (1.0 / math.sqrt(k))
        wq, ws = quantize_rows(torch, w)
        ws = ws.reshape(n).contiguous()
        w8 = wq.view(torch.uint8).contiguous()
        w_bf16 = w.to(torch.bfloat16)
        for m in ms_list:
            x = torch.randn(m, k, device="cuda")
            dst = torch.empty(m, n, device="cuda")
            stream = torch.cuda.current_stream().cuda_stream

            def ours():
                lib.fs_cuda_matmul(ctypes.c_void_p(stream), ctypes.c_void_p(x.data_ptr()), m, k,
                                   ctypes.c_void_p(w8.data_ptr()), fs_f8e4m3, ctypes.c_void_p(ws.data_ptr()), n,
                                   None, ctypes.c_void_p(dst.data_ptr()))

            check(lib, lib.fs_cuda_matmul(ctypes.c_void_p(stream), ctypes.c_void_p(x.data_ptr()), m, k,
                                          ctypes.c_void_p(w8.data_ptr()), fs_f8e4m3, ctypes.c_void_p(ws.data_ptr()),
                                          n, None, ctypes.c_void_p(dst.data_ptr())), f"fs_cuda_matmul {m}x{n}x{k}")
            torch.cuda.synchronize()
            xq, xs = quantize_rows(torch, x)
            ref = (xq.float() @ wq.float().t()) * xs * ws.reshape(1, n)
            full = x @ w.t()
            rel = ((dst - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            rel_full = ((dst - full).norm() / full.norm().clamp_min(1e-30)).item()

            it = iters_for(m, n, k)
            t_ours = time_ms(torch, ours, it)
            row = dict(m=m, n=n, k=k, ours_ms=t_ours, rel_err_w8a8=rel, rel_err_f32=rel_full)
            nbytes = n * k + m * k * 4 + m * n * 4 + n * 4
            row["ours_gbps"] = nbytes / (t_ours * 1e-3) / 1e9
            row["ours_tflops"] = 2 * m * n * k / (t_ours * 1e-3) / 1e12
            row["weight_bw_limit_ms"] = n * k / bw * 1e3

            if has_scaled_mm:
                try:
                    sa = xs.float().contiguous()             # [M, 1]
                    sb = ws.reshape(1, n).float().contiguous()  # [1, N]
                    b = wq.t()                               # [K, N], column-major as _scaled_mm wants
                    scaled_mm(torch, xq, b, sa, sb)
                    row["scaled_mm_ms"] = time_ms(torch, lambda: scaled_mm(torch, xq, b, sa, sb), it)

                    def q_and_mm():
                        q, s = quantize_rows(torch, x)
                        return scaled_mm(torch, q, b, s, sb)
                    row["quant_scaled_mm_ms"] = time_ms(torch, q_and_mm, it)
                except Exception as e:  # shapes cuBLASLt refuses (e.g. M not a multiple of 16 on some versions)
                    row["scaled_mm_error"] = str(e).splitlines()[0][:160]
            xb = x.to(torch.bfloat16)
            row["bf16_ms"] = time_ms(torch, lambda: xb @ w_bf16.t(), it)
            results.append(row)

            def f(key, fmt="{:8.4f}"):
                return fmt.format(row[key]) if key in row else f"{'n/a':>8}"
            ratio = f"{row['ours_ms'] / row['scaled_mm_ms']:8.2f}" if "scaled_mm_ms" in row else f"{'n/a':>8}"
            print(f"{m:5d} {n:6d} {k:6d} | {t_ours:8.4f} {row['ours_gbps']:6.0f} {row['ours_tflops']:6.1f} | "
                  f"{f('scaled_mm_ms', '{:9.4f}') if 'scaled_mm_ms' in row else '      n/a'} {f('quant_scaled_mm_ms')} "
                  f"{f('bf16_ms')} | {ratio} {rel:8.1e} {rel_full:8.1e} {row['weight_bw_limit_ms']:8.4f}")
            del x, dst, xq, ref, full
        del w, wq, w8, w_bf16
        torch.cuda.empty_cache()

    # Decode step: all linear weights of the model once (FP8, 1 byte each) plus the BF16 lm_head, at copy bandwidth.
    estimates = {}
    for name, cfg in MODELS.items():
        fp8_bytes = cfg["layers"] * sum(n * k * c for n, k, c in cfg["shapes"])
        head_bytes = cfg["vocab"] * cfg["hidden"] * 2
        measured = {}
        for m in DECODE_M:
            total = 0.0
            ok = True
            for n, k, c in cfg["shapes"]:
                hit = [r for r in results if r["m"] == m and r["n"] == n and r["k"] == k]
                if not hit:
                    ok = False
                    break
                total += hit[0]["ours_ms"] * c * cfg["layers"]
            if ok:
                measured[str(m)] = total
        estimates[name] = dict(fp8_weight_bytes=fp8_bytes, bf16_lm_head_bytes=head_bytes,
                               limit_ms=(fp8_bytes + head_bytes) / bw * 1e3,
                               fp8_linear_limit_ms=fp8_bytes / bw * 1e3,
                               ours_fp8_linear_ms_by_m=measured)
        have = ", ".join(f"M={m}: {t:.3f} ms" for m, t in measured.items()) or "shapes not all measured"
        print(f"{name}: decode step reads {fp8_bytes / 1e9:.2f} GB FP8 + {head_bytes / 1e9:.2f} GB BF16 lm_head -> "
              f">= {estimates[name]['limit_ms']:.3f} ms at {bw / 1e9:.0f} GB/s "
              f"(FP8 linears alone {estimates[name]['fp8_linear_limit_ms']:.3f} ms; ours: {have})")

    worst = max((r["rel_err_w8a8"] for r in results), default=0.0)
    ok = worst < 1e-3
    print(f"correctness: worst relative error against the W8A8 reference {worst:.2e} -> {'ok' if ok else 'FAILED'}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(device=props.name, capability=f"{cc[0]}.{cc[1]}", sms=props.multi_processor_count,
                           torch=torch.__version__, torch_cuda=torch.version.cuda, copy_bandwidth_gbps=bw / 1e9,
                           time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), results=results,
                           decode_estimates=estimates, worst_rel_err_w8a8=worst, ok=ok), fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
