// dst = x * w^T (+ bias). FP8 weights take the W8A8 path: every CTA computes the per-token amax of its rows, and
// activations are quantized to E4M3 as they are loaded (into registers for decode, into shared memory for prefill),
// so no quantized copy of x ever reaches global memory. F16 and BF16 weights take the same two kernel shapes on
// 16-bit tensor cores (activations rounded to the weight's type as they are loaded); F32 weights, and any shape the
// tensor-core kernels cannot take, a plain tiled F32 kernel. Kernel choice and its reasons: docs/cuda.md.
#include "mma.cuh"
#include "mma16.cuh"
#include "wgmma.cuh"

#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <type_traits>

namespace {

constexpr float kE4M3Max = 448.f;

// Per-token scale of rows [m0, m0 + rows) of x into s_scale (amax / 448) and s_inv (448 / amax, 0 for a zero row).
// One warp per row; vec4 reads when the caller has checked alignment.
template <bool kVec4>
__device__ __forceinline__ void row_scales(const float* __restrict__ x, int M, int K, int m0, int rows,
                                           float* s_scale, float* s_inv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int r = warp; r < rows; r += warps) {
        float m = 0.f;
        if (m0 + r < M) {
            const float* xr = x + (size_t)(m0 + r) * K;
            if (kVec4) {
                const float4* x4 = reinterpret_cast<const float4*>(xr);
                for (int i = lane; i < K / 4; i += 32) {
                    const float4 v = x4[i];
                    m = fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
                }
            } else {
                for (int i = lane; i < K; i += 32) m = fmaxf(m, fabsf(xr[i]));
            }
        }
        m = fs::warp_max(m);
        if (lane == 0) {
            s_scale[r] = m / kE4M3Max;
            s_inv[r] = m > 0.f ? kE4M3Max / m : 0.f;
        }
    }
}

// ---- operand policies -------------------------------------------------------------------------------------------
// The decode and tiled kernels below are written once; a policy says how one weight type meets F32 activations.
// Both policies move 16-byte weight vectors and 4-byte fragment registers, so the kernels' loads, shared layouts
// and fragment positions differ only by the values per register (kPerReg) and the k of one mma (kMmaK).
//   Fp8Op:   E4M3 weights with per-row scales, W8A8 (activations quantized per token to E4M3 on load), m16n8k32.
//   Half16Op: F16/BF16 weights, W16A16 (activations rounded to T on load), m16n8k16.
struct Fp8Op {
    using W = uint8_t;
    static constexpr bool kScaled = true;
    static constexpr int kMmaK = 32;
    // This lane's 16 activations x[k..k+15] of one token, scaled and quantized, as two mmas' B fragments.
    __device__ static __forceinline__ void lane_activations(const float* xp, float inv, uint32_t q[4]) {
        const float4* x4 = reinterpret_cast<const float4*>(xp);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float4 v = x4[e];
            q[e] = fs::pack_e4m3x4(v.x * inv, v.y * inv, v.z * inv, v.w * inv);
        }
    }
    // Four activations into shared memory as the weight type.
    __device__ static __forceinline__ void store4(W* dst, float4 v, float inv) {
        *reinterpret_cast<uint32_t*>(dst) = fs::pack_e4m3x4(v.x * inv, v.y * inv, v.z * inv, v.w * inv);
    }
    __device__ static __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
        fs::mma_e4m3_16x8x32(c, a, b);
    }
};

template <fs_dtype T>
struct Half16Op {
    using W = uint16_t;
    static constexpr bool kScaled = false;
    static constexpr int kMmaK = 16;
    __device__ static __forceinline__ void lane_activations(const float* xp, float, uint32_t q[4]) {
        const float4* x4 = reinterpret_cast<const float4*>(xp);
        const float4 v0 = x4[0], v1 = x4[1];
        q[0] = fs::pack_16x2<T>(v0.x, v0.y);
        q[1] = fs::pack_16x2<T>(v0.z, v0.w);
        q[2] = fs::pack_16x2<T>(v1.x, v1.y);
        q[3] = fs::pack_16x2<T>(v1.z, v1.w);
    }
    __device__ static __forceinline__ void store4(W* dst, float4 v, float) {
        *reinterpret_cast<uint2*>(dst) = make_uint2(fs::pack_16x2<T>(v.x, v.y), fs::pack_16x2<T>(v.z, v.w));
    }
    __device__ static __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
        fs::mma_16x8x16<T>(c, a[0], a[1], a[2], a[3], b[0], b[1]);
    }
};

// ---- decode: rows <= 32 -----------------------------------------------------------------------------------------
// Weights are the mma's A operand (16 output channels per m-tile) and tokens its B operand (8 per n-tile), so a single
// token wastes 7/8 of an n8 tile instead of 15/16 of an m16 tile. The kernel is bound by streaming w once: each lane
// reads 16 contiguous bytes of two weight rows per 64-byte k chunk straight into registers (no shared memory), and
// the CTA's 8 warps split k, their partial sums meeting in shared memory at the end. The 16 bytes of lane t cover
// values t*V .. t*V+V-1 of the chunk (V = 16 / sizeof(W)), fed to two mmas as the registers (x, y) and (z, w) of
// the vector, each register standing for the same k in A and B; the activations follow the same order.
constexpr int kDecodeWarps = 8;

template <class Op, int MT, int NT>
__global__ void __launch_bounds__(kDecodeWarps * 32)
decode_kernel(const float* __restrict__ x, int M, int K, const typename Op::W* __restrict__ w,
              const float* __restrict__ w_scale, int N, const float* __restrict__ bias, float* __restrict__ dst) {
    using W = typename Op::W;
    constexpr int ROWS = 16 * MT, TOK = 8 * NT;
    constexpr int kChunk = 64 / (int)sizeof(W), kLane = 16 / (int)sizeof(W);  // values per k chunk, per lane
    // Chunks each lane has in flight: 64 bytes of weights per chunk and m-tile; enough to cover DRAM latency at
    // about one CTA per SM.
    constexpr int kDecodeUnroll = MT == 1 ? 4 : 2;
    __shared__ float s_scale[TOK], s_inv[TOK];
    __shared__ float red[kDecodeWarps][ROWS][TOK + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * ROWS;
    // blockIdx.y picks a group of TOK tokens (more than 32 rows: see launch_decode); the rest of the kernel sees
    // only its group.
    const int tok0 = blockIdx.y * TOK;
    x += (size_t)tok0 * K;
    dst += (size_t)tok0 * N;
    M -= tok0;

    if constexpr (Op::kScaled) {
        row_scales<true>(x, M, K, 0, TOK, s_scale, s_inv);
        __syncthreads();
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // Rows past N read row N-1 (in bounds) and are never written back.
    const W* wrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = min(n0 + mt * 16 + h * 8 + g, N - 1);
            wrow[mt][h] = w + (size_t)r * K;
        }

    const int chunks = (K + kChunk - 1) / kChunk;
    for (int c0 = warp * kDecodeUnroll; c0 < chunks; c0 += kDecodeWarps * kDecodeUnroll) {
        uint4 wv[kDecodeUnroll][MT][2];
#pragma unroll
        for (int u = 0; u < kDecodeUnroll; ++u) {
            const int k = (c0 + u) * kChunk + t * kLane;
            const bool ok = c0 + u < chunks && k < K;  // K % kLane == 0: a lane's 16 bytes are all in or all out
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    wv[u][mt][h] = ok ? __ldg(reinterpret_cast<const uint4*>(wrow[mt][h] + k)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kDecodeUnroll; ++u) {
            const int k = (c0 + u) * kChunk + t * kLane;
            const bool ok = c0 + u < chunks && k < K;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int tok = nt * 8 + g;
                uint32_t q[4] = {0u, 0u, 0u, 0u};
                if (ok && tok < M) Op::lane_activations(x + (size_t)tok * K + k, Op::kScaled ? s_inv[tok] : 1.f, q);
                const uint32_t b0[2] = {q[0], q[1]}, b1[2] = {q[2], q[3]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const uint4 lo = wv[u][mt][0], hi = wv[u][mt][1];
                    const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y}, a1[4] = {lo.z, hi.z, lo.w, hi.w};
                    Op::mma(acc[mt][nt], a0, b0);
                    Op::mma(acc[mt][nt], a1, b1);
                }
            }
        }
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) red[warp][mt * 16 + g + (e >> 1) * 8][nt * 8 + t * 2 + (e & 1)] = acc[mt][nt][e];
    __syncthreads();
    // Consecutive threads take consecutive output channels, so the stores of one token are coalesced.
    for (int i = threadIdx.x; i < ROWS * TOK; i += blockDim.x) {
        const int r = i % ROWS, tok = i / ROWS, n = n0 + r;
        if (tok >= M || n >= N) continue;
        float s = 0.f;
#pragma unroll
        for (int wi = 0; wi < kDecodeWarps; ++wi) s += red[wi][r][tok];
        if constexpr (Op::kScaled) s = s_scale[tok] * w_scale[n] * s;
        dst[(size_t)tok * N + n] = s + (bias ? bias[n] : 0.f);
    }
}

// ---- prefill: rows > 32 ------------------------------------------------------------------------------------------
// Classic tiled tensor-core GEMM: BM x 128 tile, k steps of 64 bytes of weights, 8 warps as 2 x 4 (warp tile BM/2 x
// 32), double-buffered shared memory; one wave of CTAs, each taking one row block and several n tiles, so its amax
// pass is paid once. Weights go to shared memory by cp.async; activations are read as F32 into registers one k step
// ahead, converted to the weight type (scaled and quantized for FP8) and stored, so the load of step k+1 overlaps the
// mmas of step k. Shared rows are padded to 80 bytes so the fragment reads (8 rows x 4 words per warp) hit 32
// distinct banks.
constexpr int kTileN = 128, kTileBytes = 64, kTileLdBytes = kTileBytes + 16, kTileThreads = 256;

template <class Op, int BM>
__global__ void __launch_bounds__(kTileThreads)
tiled_kernel(const float* __restrict__ x, int M, int K, const typename Op::W* __restrict__ w,
             const float* __restrict__ w_scale, int N, const float* __restrict__ bias, float* __restrict__ dst) {
    using W = typename Op::W;
    constexpr int kK = kTileBytes / (int)sizeof(W), kLd = kTileLdBytes / (int)sizeof(W);  // values per k step, row
    constexpr int kPerReg = 4 / (int)sizeof(W), kHalf = Op::kMmaK / 2;                    // fragment positions
    constexpr int WM = BM / 2, MI = WM / 16, NI = 4;
    constexpr int A_PER_ROW = kK / 4, B_PER_ROW = kTileBytes / 16;
    constexpr int A_ITERS = BM * A_PER_ROW / kTileThreads;  // float4 loads per thread per k step
    constexpr int B_ITERS = kTileN * B_PER_ROW / kTileThreads;
    __shared__ __align__(16) W As[2][BM][kLd];
    __shared__ __align__(16) W Bs[2][kTileN][kLd];
    __shared__ float s_scale[BM], s_inv[BM];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * BM;
    const int wm0 = (warp >> 2) * WM, wn0 = (warp & 3) * 32;
    int n0 = blockIdx.x * kTileN;  // the CTA walks n tiles n0, n0 + gridDim.x * 128, ... (see the launcher)

    if constexpr (Op::kScaled) {
        row_scales<true>(x, M, K, m0, BM, s_scale, s_inv);
        __syncthreads();
    }

    float4 areg[A_ITERS];
    auto load_a = [&](int kt) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx / A_PER_ROW, k = kt * kK + (idx % A_PER_ROW) * 4;
            areg[i] = (m0 + r < M && k < K) ? *reinterpret_cast<const float4*>(x + (size_t)(m0 + r) * K + k)
                                            : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    };
    auto store_a = [&](int st) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx / A_PER_ROW;
            Op::store4(&As[st][r][(idx % A_PER_ROW) * 4], areg[i], Op::kScaled ? s_inv[r] : 1.f);
        }
    };
    auto load_b = [&](int kt, int st) {
#pragma unroll
        for (int i = 0; i < B_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx / B_PER_ROW, col = (idx % B_PER_ROW) * (16 / (int)sizeof(W));
            const int k = kt * kK + col;
            const bool ok = n0 + r < N && k < K;
            fs::cp_async_16(&Bs[st][r][col], ok ? w + (size_t)(n0 + r) * K + k : w, ok ? 16 : 0);
        }
        fs::cp_async_commit();
    };

    const int KT = (K + kK - 1) / kK;
    for (; n0 < N; n0 += gridDim.x * kTileN) {
        float acc[MI][NI][4];
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NI; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

        // Both stages are free here: the previous tile's last k step ended with a barrier.
        load_b(0, 0);
        load_a(0);
        store_a(0);
        fs::cp_async_wait_all();
        __syncthreads();

        for (int kt = 0; kt < KT; ++kt) {
            const int st = kt & 1;
            const bool more = kt + 1 < KT;
            if (more) {
                load_b(kt + 1, st ^ 1);
                load_a(kt + 1);
            }
#pragma unroll
            for (int ks = 0; ks < kK; ks += Op::kMmaK) {
                uint32_t af[MI][4], bf[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    const int r = wm0 + mi * 16 + g;
                    af[mi][0] = *reinterpret_cast<const uint32_t*>(&As[st][r][ks + t * kPerReg]);
                    af[mi][1] = *reinterpret_cast<const uint32_t*>(&As[st][r + 8][ks + t * kPerReg]);
                    af[mi][2] = *reinterpret_cast<const uint32_t*>(&As[st][r][ks + kHalf + t * kPerReg]);
                    af[mi][3] = *reinterpret_cast<const uint32_t*>(&As[st][r + 8][ks + kHalf + t * kPerReg]);
                }
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) {
                    const int c = wn0 + ni * 8 + g;
                    bf[ni][0] = *reinterpret_cast<const uint32_t*>(&Bs[st][c][ks + t * kPerReg]);
                    bf[ni][1] = *reinterpret_cast<const uint32_t*>(&Bs[st][c][ks + kHalf + t * kPerReg]);
                }
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) Op::mma(acc[mi][ni], af[mi], bf[ni]);
            }
            if (more) {
                store_a(st ^ 1);  // stage st^1 was last read in iteration kt-1, before its closing barrier
                fs::cp_async_wait_all();
            }
            __syncthreads();
        }

#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int rl = wm0 + mi * 16 + g + (e >> 1) * 8, r = m0 + rl, c = n0 + wn0 + ni * 8 + t * 2 + (e & 1);
                    if (r < M && c < N) {
                        float v = acc[mi][ni][e];
                        if constexpr (Op::kScaled) v = s_scale[rl] * w_scale[c] * v;
                        dst[(size_t)r * N + c] = v + (bias ? bias[c] : 0.f);
                    }
                }
    }
}

// ---- FP8 prefill on Hopper: warpgroup MMA (sm_90a) ---------------------------------------------------------------
// On sm_90 the mma.sync E4M3 form above runs as F16 HMMA after a hardware unpack (docs/cuda.md): Hopper's FP8
// tensor-core rate needs wgmma. 128 x 128 CTA tile, two warpgroups of 64 rows, k steps of 64 bytes (two k32
// wgmmas), double-buffered; both operands K-major in shared memory as core matrices of 8 rows x 16 bytes without
// swizzle ([rows / 8][k / 16][8][16]: 128 bytes between k neighbours, 512 between 8-row groups). Activations are
// quantized on their way in exactly as in tiled_kernel; weights arrive by cp.async. Not yet run on a GPU, so it is
// opt-in: FASTSERVE_CUDA_WGMMA=1 on a library built for sm_90a (see use_wgmma).
constexpr int kWgBM = 128, kWgBN = 128, kWgThreads = 256;
static_assert(kWgBN == kTileN, "the launcher's grid walks n in the tiled kernel's 128-wide tiles");

#if FS_WGMMA
constexpr int kWgK = 64;                   // bytes (E4M3 values) of k per step
constexpr int kWgSbo = (kWgK / 16) * 128;  // bytes between 8-row groups

__device__ __forceinline__ int wg_offset(int row, int kbyte) {
    return (row >> 3) * kWgSbo + (kbyte >> 4) * 128 + (row & 7) * 16 + (kbyte & 15);
}
#endif

__global__ void __launch_bounds__(kWgThreads)
fp8_wgmma_kernel(const float* __restrict__ x, int M, int K, const uint8_t* __restrict__ w,
                 const float* __restrict__ w_scale, int N, const float* __restrict__ bias, float* __restrict__ dst) {
#if FS_WGMMA
    constexpr int A_ITERS = kWgBM * (kWgK / 4) / kWgThreads;  // float4 loads per thread per k step
    constexpr int B_ITERS = kWgBN * (kWgK / 16) / kWgThreads;  // 16-byte copies per thread per k step
    __shared__ __align__(128) uint8_t As[2][kWgBM * kWgK];
    __shared__ __align__(128) uint8_t Bs[2][kWgBN * kWgK];
    __shared__ float s_scale[kWgBM], s_inv[kWgBM];

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * kWgBM;
    int n0 = blockIdx.x * kWgBN;

    row_scales<true>(x, M, K, m0, kWgBM, s_scale, s_inv);
    __syncthreads();

    float4 areg[A_ITERS];
    auto load_a = [&](int kt) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kWgThreads, r = idx >> 4, k = kt * kWgK + (idx & 15) * 4;
            areg[i] = (m0 + r < M && k < K) ? *reinterpret_cast<const float4*>(x + (size_t)(m0 + r) * K + k)
                                            : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    };
    auto store_a = [&](int st) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kWgThreads, r = idx >> 4;
            Fp8Op::store4(&As[st][wg_offset(r, (idx & 15) * 4)], areg[i], s_inv[r]);
        }
    };
    auto load_b = [&](int kt, int st) {
#pragma unroll
        for (int i = 0; i < B_ITERS; ++i) {
            const int idx = tid + i * kWgThreads, r = idx >> 2, kb = (idx & 3) * 16, k = kt * kWgK + kb;
            const bool ok = n0 + r < N && k < K;
            fs::cp_async_16(&Bs[st][wg_offset(r, kb)], ok ? w + (size_t)(n0 + r) * K + k : w, ok ? 16 : 0);
        }
        fs::cp_async_commit();
    };

    const int KT = (K + kWgK - 1) / kWgK;
    for (; n0 < N; n0 += gridDim.x * kWgBN) {
        float d[64];
#pragma unroll
        for (int e = 0; e < 64; ++e) d[e] = 0.f;

        load_b(0, 0);
        load_a(0);
        store_a(0);
        fs::cp_async_wait_all();
        fs::fence_proxy_async();  // this thread's shared writes, before wgmma (the async proxy) reads them
        __syncthreads();

        for (int kt = 0; kt < KT; ++kt) {
            const int st = kt & 1;
            const bool more = kt + 1 < KT;
            if (more) {  // stage st^1 was last read by the wgmmas of step kt-1, which completed before its barrier
                load_b(kt + 1, st ^ 1);
                load_a(kt + 1);
            }
            fs::wgmma_fence();
#pragma unroll
            for (int s = 0; s < kWgK / 32; ++s) {
                const uint64_t da = fs::wgmma_desc(&As[st][wg * 8 * kWgSbo + s * 256], 128, kWgSbo);
                const uint64_t db = fs::wgmma_desc(&Bs[st][s * 256], 128, kWgSbo);
                fs::wgmma_e4m3_m64n128k32(d, da, db, 1);
            }
            fs::wgmma_commit();
            fs::wgmma_wait_all();
            if (more) {
                store_a(st ^ 1);
                fs::cp_async_wait_all();
                fs::fence_proxy_async();
            }
            __syncthreads();
        }

#pragma unroll
        for (int j = 0; j < 16; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int rl = wg * 64 + warp * 16 + g + (e >> 1) * 8, r = m0 + rl, c = n0 + j * 8 + t * 2 + (e & 1);
                if (r < M && c < N) dst[(size_t)r * N + c] = s_scale[rl] * w_scale[c] * d[j * 4 + e] + (bias ? bias[c] : 0.f);
            }
    }
#else
    // Only sm_90a with CUDA 12.4+ has this kernel; use_wgmma never launches it elsewhere.
    (void)x; (void)M; (void)K; (void)w; (void)w_scale; (void)N; (void)bias; (void)dst;
    __trap();
#endif
}

// ---- any weight type, any alignment: F32 SIMT tiles -------------------------------------------------------------
// 64 x 64 output tile, k steps of 16, 4 x 4 outputs per thread. FP8 here follows the same W8A8 arithmetic as the
// tensor-core kernels (each activation rounded to E4M3 with its row's scale), so results do not depend on the path.
template <fs_dtype T>
__device__ __forceinline__ float weight_at(const void* w, size_t i) {
    if constexpr (T == FS_F32) return static_cast<const float*>(w)[i];
    else if constexpr (T == FS_F16) return fs::half_bits_to_float(static_cast<const uint16_t*>(w)[i]);
    else if constexpr (T == FS_BF16) return fs::bf16_bits_to_float(static_cast<const uint16_t*>(w)[i]);
    else return fs::e4m3_to_float(static_cast<const uint8_t*>(w)[i]);
}

template <fs_dtype T>
__global__ void __launch_bounds__(256)
simt_matmul_kernel(const float* __restrict__ x, int M, int K, const void* __restrict__ w,
                   const float* __restrict__ w_scale, int N, const float* __restrict__ bias, float* __restrict__ dst) {
    constexpr int BM = 64, BN = 64, BK = 16;
    __shared__ float As[BK][BM + 4], Ws[BK][BN + 4];
    __shared__ float s_scale[BM], s_inv[BM];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    if constexpr (T == FS_F8E4M3) {
        row_scales<false>(x, M, K, m0, BM, s_scale, s_inv);
        __syncthreads();
    }
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int i = 0; i < (BM * BK) / 256; ++i) {
            const int idx = tid + i * 256, r = idx / BK, kk = idx % BK, k = k0 + kk;
            float a = (m0 + r < M && k < K) ? x[(size_t)(m0 + r) * K + k] : 0.f;
            if constexpr (T == FS_F8E4M3) a = fs::e4m3_to_float(fs::float_to_e4m3(a * s_inv[r]));
            As[kk][r] = a;
            const int n = n0 + r;  // BN == BM: the same index walks the weight tile
            Ws[kk][r] = (n < N && k < K) ? weight_at<T>(w, (size_t)n * K + k) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Ws[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int rl = ty * 4 + i, r = m0 + rl;
        if (r >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = n0 + tx * 4 + j;
            if (c >= N) continue;
            float v = acc[i][j];
            if constexpr (T == FS_F8E4M3) v *= s_scale[rl] * w_scale[c];
            dst[(size_t)r * N + c] = v + (bias ? bias[c] : 0.f);
        }
    }
}

int sm_count() {
    static std::atomic<int> cached[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        (void)cudaGetLastError();
        return 108;
    }
    int n = cached[dev].load(std::memory_order_relaxed);
    if (n == 0) {
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
            (void)cudaGetLastError();
            n = 108;
        }
        cached[dev].store(n, std::memory_order_relaxed);
    }
    return n;
}

template <class Op, int MT, int NT>
void launch_decode(cudaStream_t s, const float* x, int M, int K, const typename Op::W* w, const float* ws, int N,
                   const float* bias, float* dst) {
    const dim3 grid((unsigned)((N + 16 * MT - 1) / (16 * MT)), (unsigned)((M + 8 * NT - 1) / (8 * NT)));
    decode_kernel<Op, MT, NT><<<grid, kDecodeWarps * 32, 0, s>>>(x, M, K, w, ws, N, bias, dst);
}

template <fs_dtype T>
void launch_simt(cudaStream_t s, const float* x, int M, int K, const void* w, const float* ws, int N, const float* bias,
                 float* dst) {
    const dim3 grid((unsigned)((N + 63) / 64), (unsigned)((M + 63) / 64));
    simt_matmul_kernel<T><<<grid, 256, 0, s>>>(x, M, K, w, ws, N, bias, dst);
}

constexpr int kGroupedDecodeRows = 128;

bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

// One wave of CTAs (ctas_per_sm is what registers allow: 1 for the 128-row tile, 2 for the 64-row one), each walking
// several n tiles of its row block: the row block's amax pass over x, the one read that does not overlap with mmas,
// is then paid once per CTA instead of once per tile.
dim3 tiled_grid(int rows, int n, int bm, int ctas_per_sm) {
    const long long tiles_n = (n + kTileN - 1) / kTileN, tiles_m = (rows + bm - 1) / bm;
    const long long slots = (long long)ctas_per_sm * sm_count();
    long long per = (tiles_n * tiles_m + slots - 1) / slots;
    if (per < 1) per = 1;
    return dim3((unsigned)((tiles_n + per - 1) / per), (unsigned)tiles_m);
}

// The wgmma kernel (FP8 prefill on Hopper) runs only where this library has it (built for sm_90a with CUDA 12.4+,
// FS_BUILD_WGMMA), the current device is compute capability 9.0, and FASTSERVE_CUDA_WGMMA=1: it has not been
// checked on a GPU yet.
bool use_wgmma() {
#if FS_BUILD_WGMMA
    static const bool wanted = [] {
        const char* v = getenv("FASTSERVE_CUDA_WGMMA");
        return v && strcmp(v, "1") == 0;
    }();
    if (!wanted) return false;
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return major == 9 && minor == 0;
#else
    return false;
#endif
}

// Tensor-core path for one operand policy. Rows <= 32: the decode kernel, two m16 tiles per CTA once that still
// leaves about one CTA per SM (fewer re-reads of x per weight byte). Up to 128 rows, while the 64-row tiles would not
// fill the SMs once (n / 128 x rows / 64 CTAs: 16 for 64 rows and n = 2048 on 132 SMs), the decode kernel again, one
// grid row per 32 tokens: each group streams the weights again, mostly from L2, which beats leaving most SMs idle.
// Beyond that the 64-row tiles up to 256 rows, then the 128-row ones.
template <class Op>
void launch_tensor_cores(cudaStream_t s, const float* x, int rows, int k, const void* w_, const float* ws, int n,
                         const float* bias, float* dst) {
    const auto* w = static_cast<const typename Op::W*>(w_);
    const bool wide = n / 32 >= sm_count();
    const long long small_tiles = (long long)((n + kTileN - 1) / kTileN) * ((rows + 63) / 64);
    if (rows <= 32) {
        if (rows <= 8) wide ? launch_decode<Op, 2, 1>(s, x, rows, k, w, ws, n, bias, dst)
                            : launch_decode<Op, 1, 1>(s, x, rows, k, w, ws, n, bias, dst);
        else if (rows <= 16) wide ? launch_decode<Op, 2, 2>(s, x, rows, k, w, ws, n, bias, dst)
                                  : launch_decode<Op, 1, 2>(s, x, rows, k, w, ws, n, bias, dst);
        else wide ? launch_decode<Op, 2, 4>(s, x, rows, k, w, ws, n, bias, dst)
                  : launch_decode<Op, 1, 4>(s, x, rows, k, w, ws, n, bias, dst);
    } else if (rows <= kGroupedDecodeRows && small_tiles < sm_count()) {
        wide ? launch_decode<Op, 2, 4>(s, x, rows, k, w, ws, n, bias, dst)
             : launch_decode<Op, 1, 4>(s, x, rows, k, w, ws, n, bias, dst);
    } else if (std::is_same_v<Op, Fp8Op> && use_wgmma()) {
        fp8_wgmma_kernel<<<tiled_grid(rows, n, kWgBM, 1), kWgThreads, 0, s>>>(x, rows, k, reinterpret_cast<const uint8_t*>(w), ws, n,
                                                                           bias, dst);
    } else if (rows <= 256) {
        tiled_kernel<Op, 64><<<tiled_grid(rows, n, 64, 2), kTileThreads, 0, s>>>(x, rows, k, w, ws, n, bias, dst);
    } else {
        tiled_kernel<Op, 128><<<tiled_grid(rows, n, 128, 1), kTileThreads, 0, s>>>(x, rows, k, w, ws, n, bias, dst);
    }
}

}  // namespace

extern "C" FS_API fs_status fs_cuda_matmul(fs_stream stream, const float* x, int rows, int k, const void* w,
                                           fs_dtype dtype, const float* w_scale, int n, const float* bias,
                                           float* dst) {
    FS_API_BEGIN
    FS_CHECK_ARG(x && w && dst, "matmul: null pointer (x %p, w %p, dst %p)", (const void*)x, w, (void*)dst);
    FS_CHECK_ARG(rows >= 0 && k >= 0 && n >= 0, "matmul: bad shape rows %d k %d n %d", rows, k, n);
    FS_CHECK_ARG(dtype != FS_F8E4M3 || w_scale, "matmul: FP8 weights need w_scale (one F32 per output row)");
    FS_CHECK_ARG(rows <= 65535 * 64, "matmul: rows %d exceeds %d", rows, 65535 * 64);
    if (rows == 0 || n == 0) return FS_OK;
    cudaStream_t s = (cudaStream_t)stream;
    switch (dtype) {
    case FS_F32: launch_simt<FS_F32>(s, x, rows, k, w, w_scale, n, bias, dst); break;
    // The tensor-core kernels read 16-byte weight and activation vectors: whole ones per lane (k a multiple of 16
    // values for FP8, 8 for 16-bit types) from 16-byte aligned rows. Anything else takes the SIMT kernel.
    case FS_F16:
        if (k > 0 && k % 8 == 0 && aligned16(x) && aligned16(w)) launch_tensor_cores<Half16Op<FS_F16>>(s, x, rows, k, w, w_scale, n, bias, dst);
        else launch_simt<FS_F16>(s, x, rows, k, w, w_scale, n, bias, dst);
        break;
    case FS_BF16:
        if (k > 0 && k % 8 == 0 && aligned16(x) && aligned16(w)) launch_tensor_cores<Half16Op<FS_BF16>>(s, x, rows, k, w, w_scale, n, bias, dst);
        else launch_simt<FS_BF16>(s, x, rows, k, w, w_scale, n, bias, dst);
        break;
    case FS_F8E4M3:
        if (k > 0 && k % 16 == 0 && aligned16(x) && aligned16(w)) launch_tensor_cores<Fp8Op>(s, x, rows, k, w, w_scale, n, bias, dst);
        else launch_simt<FS_F8E4M3>(s, x, rows, k, w, w_scale, n, bias, dst);
        break;
    default: return fs::set_error(FS_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "matmul: unknown dtype %d", (int)dtype);
    }
    FS_LAUNCH_CHECK("matmul kernel");
    return FS_OK;
    FS_API_END
}
