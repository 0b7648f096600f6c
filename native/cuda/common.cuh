// Shared by every kernel file: error recording (thread-local last error), the check macros, the exported-function
// wrapper, and small numeric helpers (BF16 / E4M3 conversions, warp reductions).
#pragma once

#include "fastserve_cuda.h"

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

// The FP8 mma (mma.sync ... e4m3) needs PTX ISA 8.4 (CUDA 12.4) and sm_89. FS_FP8_MMA_TOOLKIT says whether this
// toolkit can emit it at all; FS_FP8_MMA (device code only) whether the arch being compiled gets it.
#if defined(__CUDACC_VER_MAJOR__) && (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 4))
#define FS_FP8_MMA_TOOLKIT 1
#else
#define FS_FP8_MMA_TOOLKIT 0
#endif
#if FS_FP8_MMA_TOOLKIT && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define FS_FP8_MMA 1
#else
#define FS_FP8_MMA 0
#endif

namespace fs {

// Records "message at file:line" as the calling thread's last error and returns status.
fs_status set_error(fs_status status, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
// Maps a CUDA error to a status (allocation -> FS_ERR_OUT_OF_MEMORY, no device / driver -> FS_ERR_NO_DEVICE) and
// records "<call> failed: <cudaGetErrorString> at file:line".
fs_status cuda_error(cudaError_t err, const char* call, const char* file, int line);

}  // namespace fs

// Every CUDA runtime call goes through this: on failure it records the call and returns from the enclosing function.
#define FS_CUDA_CHECK(call)                                                   \
    do {                                                                      \
        cudaError_t fs_err_ = (call);                                         \
        if (fs_err_ != cudaSuccess) return fs::cuda_error(fs_err_, #call, __FILE__, __LINE__); \
    } while (0)

// After a <<<>>> launch: a bad configuration or a missing kernel image shows up here, not at the launch.
#define FS_LAUNCH_CHECK(kernel_name)                                          \
    do {                                                                      \
        cudaError_t fs_err_ = cudaGetLastError();                             \
        if (fs_err_ != cudaSuccess) return fs::cuda_error(fs_err_, "launch of " kernel_name, __FILE__, __LINE__); \
    } while (0)

#define FS_CHECK_ARG(cond, ...)                                               \
    do {                                                                      \
        if (!(cond)) return fs::set_error(FS_ERR_INVALID_ARGUMENT, __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

// Body wrapper of every exported function: no C++ exception (bad_alloc from the runtime, anything) crosses the C ABI.
#define FS_API_BEGIN try {
#define FS_API_END                                                            \
    }                                                                         \
    catch (...) {                                                             \
        return fs::set_error(FS_ERR_CUDA, __FILE__, __LINE__, "unexpected C++ exception in %s", __func__); \
    }

// Grid sizes are 32-bit on y/z; keep the x dimension within what every arch accepts.
#define FS_MAX_GRID_X 2147483647u

namespace fs {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. scratch: 32 floats of shared memory. Contains __syncthreads.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }

// Round to nearest even; NaN stays NaN.
__host__ __device__ __forceinline__ uint16_t float_to_bf16_bits(float f) {
    uint32_t u;
#if defined(__CUDA_ARCH__)
    u = __float_as_uint(f);
#else
    __builtin_memcpy(&u, &f, 4);
#endif
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// Bit casts usable on host and device, so the conversions below can be checked exhaustively on the CPU
// (native/tests/convert_test.cu).
__host__ __device__ __forceinline__ uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    return u;
#endif
}
__host__ __device__ __forceinline__ float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
#endif
}

// OCP E4M3 (e4m3fn: bias 7, no infinities, 0x7f/0xff NaN) to F32, exact.
__host__ __device__ __forceinline__ float e4m3_to_float(uint8_t b) {
    const uint32_t sign = (uint32_t)(b & 0x80) << 24;
    const uint32_t e = (b >> 3) & 0xf, m = b & 0x7;
    float v;
    if (e == 0) v = (float)m * 0.001953125f;               // subnormal: m * 2^-9
    else if (e == 15 && m == 7) return f32_from_bits(0x7fc00000u);
    else v = f32_from_bits(((e + 120) << 23) | (m << 20));
    return f32_from_bits(f32_bits(v) | sign);
}

// F32 to E4M3 with round-to-nearest-even and saturation to +-448 (the "satfinite" conversion); NaN -> 0x7f.
__host__ __device__ __forceinline__ uint8_t float_to_e4m3(float f) {
    const uint8_t sign = (uint8_t)((f32_bits(f) >> 24) & 0x80);
    const float a = fabsf(f);
    if (a != a) return 0x7f;
    if (a >= 448.f) return sign | 0x7e;
    if (a < 0.015625f) {  // subnormal range (< 2^-6): m * 2^-9, m = 8 being 2^-6 itself
#if defined(__CUDA_ARCH__)
        return sign | (uint8_t)__float2uint_rn(a * 512.f);
#else
        return sign | (uint8_t)rintf(a * 512.f);  // default rounding mode: nearest even
#endif
    }
    uint32_t ua = f32_bits(a);
    ua += 0x7ffffu + ((ua >> 20) & 1u);  // round the mantissa to 3 bits, nearest even
    const uint32_t e = (ua >> 23) - 120u, m = (ua >> 20) & 7u;
    return sign | (uint8_t)((e << 3) | m);
}

// Four F32 to four packed E4M3 bytes (a in the lowest byte). The hardware conversion of pairs exists on sm_89, but
// ptxas accepts it there only from CUDA 12.1 (PTX ISA 8.1); CUDA 11.8 has it for sm_90 alone.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900 || (__CUDA_ARCH__ >= 890 && defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 1))))
#define FS_HW_E4M3_CVT 1
#else
#define FS_HW_E4M3_CVT 0
#endif
__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {
#if FS_HW_E4M3_CVT
    uint16_t lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(b), "f"(a));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(d), "f"(c));
    return (uint32_t)lo | ((uint32_t)hi << 16);
#else
    return (uint32_t)float_to_e4m3(a) | ((uint32_t)float_to_e4m3(b) << 8) | ((uint32_t)float_to_e4m3(c) << 16) |
           ((uint32_t)float_to_e4m3(d) << 24);
#endif
}

}  // namespace fs
