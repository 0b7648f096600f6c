// dst = x * w^T (+ bias). FP8 weights take the W8A8 path: every CTA computes the per-token amax of its rows, and
// activations are quantized to E4M3 as they are loaded (into registers for decode, into shared memory for prefill),
// so no quantized copy of x ever reaches global memory. F16 and BF16 weights take the same two kernel shapes on
// 16-bit tensor cores (activations rounded to the weight's type as they are loaded); F32 weights, and any shape the
// tensor-core kernels cannot take, a plain tiled F32 kernel. Kernel choice and its reasons: docs/cuda.md.
#include "mma.cuh"
#include "mma16.cuh"

#include <atomic>

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

// ---- decode: rows <= 32 -----------------------------------------------------------------------------------------
// Weights are the mma's A operand (16 output channels per m-tile) and tokens its B operand (8 per n-tile), so a single
// token wastes 7/8 of an n8 tile instead of 15/16 of an m16 tile. The kernel is bound by streaming w once: each lane
// reads 16 contiguous bytes of two weight rows per 64-byte k chunk straight into registers (no shared memory), and
// the CTA's 8 warps split k, their partial sums meeting in shared memory at the end. The 16 bytes of lane t cover
// k = t*16 .. t*16+15 of the chunk, fed to two k32 mmas as (t*16+0..3, t*16+4..7) and (t*16+8..11, t*16+12..15),
// the same order for the quantized activations.
constexpr int kDecodeWarps = 8;

template <int MT, int NT>
__global__ void __launch_bounds__(kDecodeWarps * 32)
fp8_decode_kernel(const float* __restrict__ x, int M, int K, const uint8_t* __restrict__ w,
                  const float* __restrict__ w_scale, int N, const float* __restrict__ bias, float* __restrict__ dst) {
    constexpr int ROWS = 16 * MT, TOK = 8 * NT;
    // Chunks each lane has in flight: 64 bytes of weights per chunk and m-tile; enough to cover DRAM latency at
    // about one CTA per SM.
    constexpr int kDecodeUnroll = MT == 1 ? 4 : 2;
    __shared__ float s_scale[TOK], s_inv[TOK];
    __shared__ float red[kDecodeWarps][ROWS][TOK + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * ROWS;

    row_scales<true>(x, M, K, 0, TOK, s_scale, s_inv);
    __syncthreads();

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // Rows past N read row N-1 (in bounds) and are never written back.
    const uint8_t* wrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = min(n0 + mt * 16 + h * 8 + g, N - 1);
            wrow[mt][h] = w + (size_t)r * K;
        }

    const int chunks = (K + 63) / 64;
    for (int c0 = warp * kDecodeUnroll; c0 < chunks; c0 += kDecodeWarps * kDecodeUnroll) {
        uint4 wv[kDecodeUnroll][MT][2];
#pragma unroll
        for (int u = 0; u < kDecodeUnroll; ++u) {
            const int k = (c0 + u) * 64 + t * 16;
            const bool ok = c0 + u < chunks && k < K;  // K % 16 == 0: a lane's 16 bytes are all in or all out
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    wv[u][mt][h] = ok ? __ldg(reinterpret_cast<const uint4*>(wrow[mt][h] + k)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kDecodeUnroll; ++u) {
            const int k = (c0 + u) * 64 + t * 16;
            const bool ok = c0 + u < chunks && k < K;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int tok = nt * 8 + g;
                uint32_t q[4] = {0u, 0u, 0u, 0u};
                if (ok && tok < M) {
                    const float4* xp = reinterpret_cast<const float4*>(x + (size_t)tok * K + k);
                    const float inv = s_inv[tok];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float4 v = xp[e];
                        q[e] = fs::pack_e4m3x4(v.x * inv, v.y * inv, v.z * inv, v.w * inv);
                    }
                }
                const uint32_t b0[2] = {q[0], q[1]}, b1[2] = {q[2], q[3]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const uint4 lo = wv[u][mt][0], hi = wv[u][mt][1];
                    const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y}, a1[4] = {lo.z, hi.z, lo.w, hi.w};
                    fs::mma_e4m3_16x8x32(acc[mt][nt], a0, b0);
                    fs::mma_e4m3_16x8x32(acc[mt][nt], a1, b1);
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
        dst[(size_t)tok * N + n] = s_scale[tok] * w_scale[n] * s + (bias ? bias[n] : 0.f);
    }
}

// ---- prefill: rows > 32 ------------------------------------------------------------------------------------------
// Classic tiled tensor-core GEMM: BM x 128 tile, k steps of 64, 8 warps as 2 x 4 (warp tile BM/2 x 32), double-buffered
// shared memory; one wave of CTAs, each taking one row block and several n tiles, so its amax pass is paid once. Weights go to shared memory by cp.async; activations are read as F32 into registers one k step ahead,
// scaled, converted to E4M3 and stored, so the load of step k+1 overlaps the mmas of step k. Shared rows are padded to
// 80 bytes so the fragment reads (8 rows x 4 words per warp) hit 32 distinct banks.
constexpr int kTileN = 128, kTileK = 64, kTileLd = kTileK + 16, kTileThreads = 256;

template <int BM>
__global__ void __launch_bounds__(kTileThreads)
fp8_tiled_kernel(const float* __restrict__ x, int M, int K, const uint8_t* __restrict__ w,
                 const float* __restrict__ w_scale, int N, const float* __restrict__ bias, float* __restrict__ dst) {
    constexpr int WM = BM / 2, MI = WM / 16, NI = 4;
    constexpr int A_ITERS = BM * (kTileK / 4) / kTileThreads;  // float4 loads per thread per k step
    constexpr int B_ITERS = kTileN * (kTileK / 16) / kTileThreads;
    __shared__ __align__(16) uint8_t As[2][BM][kTileLd];
    __shared__ __align__(16) uint8_t Bs[2][kTileN][kTileLd];
    __shared__ float s_scale[BM], s_inv[BM];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * BM;
    const int wm0 = (warp >> 2) * WM, wn0 = (warp & 3) * 32;
    int n0 = blockIdx.x * kTileN;  // the CTA walks n tiles n0, n0 + gridDim.x * 128, ... (see the launcher)

    row_scales<true>(x, M, K, m0, BM, s_scale, s_inv);
    __syncthreads();

    float4 areg[A_ITERS];
    auto load_a = [&](int kt) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx >> 4, k = kt * kTileK + (idx & 15) * 4;
            areg[i] = (m0 + r < M && k < K) ? *reinterpret_cast<const float4*>(x + (size_t)(m0 + r) * K + k)
                                            : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    };
    auto store_a = [&](int st) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx >> 4;
            const float inv = s_inv[r];
            const float4 v = areg[i];
            *reinterpret_cast<uint32_t*>(&As[st][r][(idx & 15) * 4]) =
                fs::pack_e4m3x4(v.x * inv, v.y * inv, v.z * inv, v.w * inv);
        }
    };
    auto load_b = [&](int kt, int st) {
#pragma unroll
        for (int i = 0; i < B_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx >> 2, k = kt * kTileK + (idx & 3) * 16;
            const bool ok = n0 + r < N && k < K;
            fs::cp_async_16(&Bs[st][r][(idx & 3) * 16], ok ? w + (size_t)(n0 + r) * K + k : w, ok ? 16 : 0);
        }
        fs::cp_async_commit();
    };

    const int KT = (K + kTileK - 1) / kTileK;
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
            for (int ks = 0; ks < kTileK; ks += 32) {
                uint32_t af[MI][4], bf[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    const int r = wm0 + mi * 16 + g;
                    af[mi][0] = *reinterpret_cast<const uint32_t*>(&As[st][r][ks + t * 4]);
                    af[mi][1] = *reinterpret_cast<const uint32_t*>(&As[st][r + 8][ks + t * 4]);
                    af[mi][2] = *reinterpret_cast<const uint32_t*>(&As[st][r][ks + 16 + t * 4]);
                    af[mi][3] = *reinterpret_cast<const uint32_t*>(&As[st][r + 8][ks + 16 + t * 4]);
                }
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) {
                    const int c = wn0 + ni * 8 + g;
                    bf[ni][0] = *reinterpret_cast<const uint32_t*>(&Bs[st][c][ks + t * 4]);
                    bf[ni][1] = *reinterpret_cast<const uint32_t*>(&Bs[st][c][ks + 16 + t * 4]);
                }
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) fs::mma_e4m3_16x8x32(acc[mi][ni], af[mi], bf[ni]);
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
                    if (r < M && c < N)
                        dst[(size_t)r * N + c] = s_scale[rl] * w_scale[c] * acc[mi][ni][e] + (bias ? bias[c] : 0.f);
                }
    }
}

// ---- 16-bit weights (F16, BF16): the same decode and prefill shapes on m16n8k16 tensor cores -------------------
// Decode: weights are the A operand, read straight into registers, 16 bytes (8 values) of two rows per lane per
// 32-value k chunk; lane t's 8 values k = t*8 .. t*8+7 feed two k16 mmas as (t*8+0..1, t*8+2..3) and
// (t*8+4..5, t*8+6..7), and each token's activations are rounded to T in the same order.
template <fs_dtype T, int MT, int NT>
__global__ void __launch_bounds__(kDecodeWarps * 32)
w16_decode_kernel(const float* __restrict__ x, int M, int K, const uint16_t* __restrict__ w, int N,
                  const float* __restrict__ bias, float* __restrict__ dst) {
    constexpr int ROWS = 16 * MT, TOK = 8 * NT;
    constexpr int kUnroll = MT == 1 ? 4 : 2;
    __shared__ float red[kDecodeWarps][ROWS][TOK + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * ROWS;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    const uint16_t* wrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) wrow[mt][h] = w + (size_t)min(n0 + mt * 16 + h * 8 + g, N - 1) * K;

    const int chunks = (K + 31) / 32;
    for (int c0 = warp * kUnroll; c0 < chunks; c0 += kDecodeWarps * kUnroll) {
        uint4 wv[kUnroll][MT][2];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int k = (c0 + u) * 32 + t * 8;
            const bool ok = c0 + u < chunks && k < K;  // K % 8 == 0: a lane's 8 values are all in or all out
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    wv[u][mt][h] = ok ? __ldg(reinterpret_cast<const uint4*>(wrow[mt][h] + k)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int k = (c0 + u) * 32 + t * 8;
            const bool ok = c0 + u < chunks && k < K;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int tok = nt * 8 + g;
                uint32_t q[4] = {0u, 0u, 0u, 0u};
                if (ok && tok < M) {
                    const float4* xp = reinterpret_cast<const float4*>(x + (size_t)tok * K + k);
                    const float4 v0 = xp[0], v1 = xp[1];
                    q[0] = fs::pack_16x2<T>(v0.x, v0.y);
                    q[1] = fs::pack_16x2<T>(v0.z, v0.w);
                    q[2] = fs::pack_16x2<T>(v1.x, v1.y);
                    q[3] = fs::pack_16x2<T>(v1.z, v1.w);
                }
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const uint4 lo = wv[u][mt][0], hi = wv[u][mt][1];
                    fs::mma_16x8x16<T>(acc[mt][nt], lo.x, hi.x, lo.y, hi.y, q[0], q[1]);
                    fs::mma_16x8x16<T>(acc[mt][nt], lo.z, hi.z, lo.w, hi.w, q[2], q[3]);
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
    for (int i = threadIdx.x; i < ROWS * TOK; i += blockDim.x) {
        const int r = i % ROWS, tok = i / ROWS, n = n0 + r;
        if (tok >= M || n >= N) continue;
        float s = 0.f;
#pragma unroll
        for (int wi = 0; wi < kDecodeWarps; ++wi) s += red[wi][r][tok];
        dst[(size_t)tok * N + n] = s + (bias ? bias[n] : 0.f);
    }
}

// Prefill: the FP8 tiled kernel's shape with 16-bit values: BM x 128 tiles, k steps of 32 values (64 bytes, so the
// padded 80-byte shared rows and their conflict-free fragment reads are the same), activations rounded to T on
// their way into shared memory one step ahead, weights by cp.async.
constexpr int kTile16K = 32, kTile16Ld = kTile16K + 8;

template <fs_dtype T, int BM>
__global__ void __launch_bounds__(kTileThreads)
w16_tiled_kernel(const float* __restrict__ x, int M, int K, const uint16_t* __restrict__ w, int N,
                 const float* __restrict__ bias, float* __restrict__ dst) {
    constexpr int WM = BM / 2, MI = WM / 16, NI = 4;
    constexpr int A_ITERS = BM * (kTile16K / 4) / kTileThreads;
    constexpr int B_ITERS = kTileN * (kTile16K / 8) / kTileThreads;
    __shared__ __align__(16) uint16_t As[2][BM][kTile16Ld];
    __shared__ __align__(16) uint16_t Bs[2][kTileN][kTile16Ld];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * BM;
    const int wm0 = (warp >> 2) * WM, wn0 = (warp & 3) * 32;
    int n0 = blockIdx.x * kTileN;

    float4 areg[A_ITERS];
    auto load_a = [&](int kt) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx >> 3, k = kt * kTile16K + (idx & 7) * 4;
            areg[i] = (m0 + r < M && k < K) ? *reinterpret_cast<const float4*>(x + (size_t)(m0 + r) * K + k)
                                            : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    };
    auto store_a = [&](int st) {
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx >> 3;
            const float4 v = areg[i];
            *reinterpret_cast<uint2*>(&As[st][r][(idx & 7) * 4]) =
                make_uint2(fs::pack_16x2<T>(v.x, v.y), fs::pack_16x2<T>(v.z, v.w));
        }
    };
    auto load_b = [&](int kt, int st) {
#pragma unroll
        for (int i = 0; i < B_ITERS; ++i) {
            const int idx = tid + i * kTileThreads, r = idx >> 2, k = kt * kTile16K + (idx & 3) * 8;
            const bool ok = n0 + r < N && k < K;
            fs::cp_async_16(&Bs[st][r][(idx & 3) * 8], ok ? w + (size_t)(n0 + r) * K + k : w, ok ? 16 : 0);
        }
        fs::cp_async_commit();
    };

    const int KT = (K + kTile16K - 1) / kTile16K;
    for (; n0 < N; n0 += gridDim.x * kTileN) {
        float acc[MI][NI][4];
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NI; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

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
            for (int ks = 0; ks < kTile16K; ks += 16) {
                uint32_t af[MI][4], bf[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    const int r = wm0 + mi * 16 + g;
                    af[mi][0] = *reinterpret_cast<const uint32_t*>(&As[st][r][ks + t * 2]);
                    af[mi][1] = *reinterpret_cast<const uint32_t*>(&As[st][r + 8][ks + t * 2]);
                    af[mi][2] = *reinterpret_cast<const uint32_t*>(&As[st][r][ks + 8 + t * 2]);
                    af[mi][3] = *reinterpret_cast<const uint32_t*>(&As[st][r + 8][ks + 8 + t * 2]);
                }
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) {
                    const int c = wn0 + ni * 8 + g;
                    bf[ni][0] = *reinterpret_cast<const uint32_t*>(&Bs[st][c][ks + t * 2]);
                    bf[ni][1] = *reinterpret_cast<const uint32_t*>(&Bs[st][c][ks + 8 + t * 2]);
                }
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni)
                        fs::mma_16x8x16<T>(acc[mi][ni], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bf[ni][0], bf[ni][1]);
            }
            if (more) {
                store_a(st ^ 1);
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
                    const int r = m0 + wm0 + mi * 16 + g + (e >> 1) * 8, c = n0 + wn0 + ni * 8 + t * 2 + (e & 1);
                    if (r < M && c < N) dst[(size_t)r * N + c] = acc[mi][ni][e] + (bias ? bias[c] : 0.f);
                }
    }
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

template <int MT, int NT>
void launch_decode(cudaStream_t s, const float* x, int M, int K, const uint8_t* w, const float* ws, int N,
                   const float* bias, float* dst) {
    const unsigned blocks = (unsigned)((N + 16 * MT - 1) / (16 * MT));
    fp8_decode_kernel<MT, NT><<<blocks, kDecodeWarps * 32, 0, s>>>(x, M, K, w, ws, N, bias, dst);
}

template <fs_dtype T>
void launch_simt(cudaStream_t s, const float* x, int M, int K, const void* w, const float* ws, int N, const float* bias,
                 float* dst) {
    const dim3 grid((unsigned)((N + 63) / 64), (unsigned)((M + 63) / 64));
    simt_matmul_kernel<T><<<grid, 256, 0, s>>>(x, M, K, w, ws, N, bias, dst);
}

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

template <fs_dtype T, int MT, int NT>
void launch_w16_decode(cudaStream_t s, const float* x, int M, int K, const uint16_t* w, int N, const float* bias,
                       float* dst) {
    const unsigned blocks = (unsigned)((N + 16 * MT - 1) / (16 * MT));
    w16_decode_kernel<T, MT, NT><<<blocks, kDecodeWarps * 32, 0, s>>>(x, M, K, w, N, bias, dst);
}

// F16 / BF16 weights: tensor cores when rows of 8 values are 16-byte vectors, the SIMT kernel otherwise; the row
// thresholds and grids are the FP8 path's (see fs_cuda_matmul).
template <fs_dtype T>
void launch_16bit(cudaStream_t s, const float* x, int rows, int k, const void* w, const float* ws, int n,
                  const float* bias, float* dst) {
    const uint16_t* w16 = static_cast<const uint16_t*>(w);
    if (!(k > 0 && k % 8 == 0 && aligned16(x) && aligned16(w))) {
        launch_simt<T>(s, x, rows, k, w, ws, n, bias, dst);
    } else if (rows <= 32) {
        const bool wide = n / 32 >= sm_count();
        if (rows <= 8) wide ? launch_w16_decode<T, 2, 1>(s, x, rows, k, w16, n, bias, dst)
                            : launch_w16_decode<T, 1, 1>(s, x, rows, k, w16, n, bias, dst);
        else if (rows <= 16) wide ? launch_w16_decode<T, 2, 2>(s, x, rows, k, w16, n, bias, dst)
                                  : launch_w16_decode<T, 1, 2>(s, x, rows, k, w16, n, bias, dst);
        else wide ? launch_w16_decode<T, 2, 4>(s, x, rows, k, w16, n, bias, dst)
                  : launch_w16_decode<T, 1, 4>(s, x, rows, k, w16, n, bias, dst);
    } else if (rows <= 256) {
        w16_tiled_kernel<T, 64><<<tiled_grid(rows, n, 64, 2), kTileThreads, 0, s>>>(x, rows, k, w16, n, bias, dst);
    } else {
        w16_tiled_kernel<T, 128><<<tiled_grid(rows, n, 128, 1), kTileThreads, 0, s>>>(x, rows, k, w16, n, bias, dst);
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
    case FS_F16: launch_16bit<FS_F16>(s, x, rows, k, w, w_scale, n, bias, dst); break;
    case FS_BF16: launch_16bit<FS_BF16>(s, x, rows, k, w, w_scale, n, bias, dst); break;
    case FS_F8E4M3: {
        const uint8_t* w8 = static_cast<const uint8_t*>(w);
        // The tensor-core kernels read 16-byte weight and activation vectors.
        const bool fast = k > 0 && k % 16 == 0 && aligned16(x) && aligned16(w);
        if (!fast) {
            launch_simt<FS_F8E4M3>(s, x, rows, k, w, w_scale, n, bias, dst);
        } else if (rows <= 32) {
            // Two m16 tiles per CTA once that still leaves about one CTA per SM: fewer re-reads of x per weight byte.
            const bool wide = n / 32 >= sm_count();
            if (rows <= 8) wide ? launch_decode<2, 1>(s, x, rows, k, w8, w_scale, n, bias, dst)
                                : launch_decode<1, 1>(s, x, rows, k, w8, w_scale, n, bias, dst);
            else if (rows <= 16) wide ? launch_decode<2, 2>(s, x, rows, k, w8, w_scale, n, bias, dst)
                                      : launch_decode<1, 2>(s, x, rows, k, w8, w_scale, n, bias, dst);
            else wide ? launch_decode<2, 4>(s, x, rows, k, w8, w_scale, n, bias, dst)
                      : launch_decode<1, 4>(s, x, rows, k, w8, w_scale, n, bias, dst);
        } else if (rows <= 256) {
            fp8_tiled_kernel<64><<<tiled_grid(rows, n, 64, 2), kTileThreads, 0, s>>>(x, rows, k, w8, w_scale, n, bias, dst);
        } else {
            fp8_tiled_kernel<128><<<tiled_grid(rows, n, 128, 1), kTileThreads, 0, s>>>(x, rows, k, w8, w_scale, n, bias, dst);
        }
        break;
    }
    default: return fs::set_error(FS_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, "matmul: unknown dtype %d", (int)dtype);
    }
    FS_LAUNCH_CHECK("matmul kernel");
    return FS_OK;
    FS_API_END
}
