/*
 * fastserve_cuda.h: the one C ABI of libfastserve_cuda.so, the hand-written CUDA kernels of FastServe's `cuda`
 * backend (docs/cuda.md). The NativeAOT host calls it through [LibraryImport] (interop/FastServe.Interop/
 * FastServeCuda.cs, checked against this file by tests/FastServe.Tests/Interop/DeviceInfoLayoutTests.cs); the Python
 * GPU scripts through bench/gpu/fastserve_abi.py, which parses this file. Bump FS_CUDA_ABI_VERSION with any change
 * to a function, enum or struct: both hosts refuse a library whose fs_cuda_abi_version() differs from theirs.
 *
 * Rules for every function:
 *  - It returns an fs_status; FS_OK (0) on success. On failure the calling thread's last-error message
 *    (fs_cuda_last_error) says what failed, with the CUDA call, file and line. No C++ exception ever crosses it.
 *  - Devices, contexts, streams, memory, events and graphs belong to the host, which drives them through the CUDA
 *    Driver API (interop/). This library only launches kernels: every op takes the stream (a CUstream, which is a
 *    cudaStream_t) to enqueue on and returns at once. The host makes the device's primary context current on the
 *    calling thread first (cuDevicePrimaryCtxRetain + cuCtxSetCurrent), which is the context the runtime uses.
 *  - Pointers passed to ops are device pointers (CUdeviceptr values), never host memory.
 *  - Activations are row-major F32 [rows, cols], one row per token, as the runtime's IBackend contract says.
 *  - Linear weights are [n (out), k (in)] row-major. FP8 weights are OCP E4M3 ("e4m3fn") bytes with one F32 scale
 *    per output row: w[j, i] = w_scale[j] * e4m3(q[j, i]).
 *  - Ops never allocate: what an op needs beyond its arguments (sampling) comes from a caller's workspace whose size
 *    a *_workspace_bytes function gives. So a decode step captured into a CUDA graph replays with no allocation.
 */
#ifndef FASTSERVE_CUDA_H
#define FASTSERVE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FS_API __declspec(dllexport)
#else
#define FS_API __attribute__((visibility("default")))
#endif

#define FS_CUDA_ABI_VERSION 2

typedef enum fs_status {
    FS_OK = 0,
    FS_ERR_INVALID_ARGUMENT = 1, /* a null pointer, a negative or inconsistent size */
    FS_ERR_NO_DEVICE = 2,        /* no CUDA device, or the driver is missing or too old */
    FS_ERR_OUT_OF_MEMORY = 3,
    FS_ERR_UNSUPPORTED = 4,      /* the device cannot run this (e.g. compute capability below 8.0) */
    FS_ERR_CUDA = 5,             /* any other CUDA error; the message names it */
} fs_status;

/* Weight storage types accepted by fs_cuda_matmul and fs_cuda_embedding. */
typedef enum fs_dtype { FS_F32 = 0, FS_F16 = 1, FS_BF16 = 2, FS_F8E4M3 = 3 } fs_dtype;

/* A CUstream / cudaStream_t; NULL is the legacy default stream. */
typedef void* fs_stream;

typedef struct fs_cuda_device_info {
    char name[256];
    int major, minor;             /* compute capability */
    int multiprocessors;
    size_t total_memory;
    int driver_version;           /* e.g. 13000 */
    int runtime_version;          /* the CUDA runtime the library was built with, e.g. 11080 */
    int fp8_tensor_cores;         /* 1 when this build has the FP8 mma path and the device can run it (sm_89+) */
} fs_cuda_device_info;

/* ---- library and device ---------------------------------------------------------------------------------------- */

/* FS_CUDA_ABI_VERSION of the library; the host refuses a library whose version differs from its own. */
FS_API int fs_cuda_abi_version(void);
/* The calling thread's last error message ("" when none). Valid until the thread's next failing call. */
FS_API const char* fs_cuda_last_error(void);
/* Number of visible devices (0 when none or no driver; that is not an error). */
FS_API fs_status fs_cuda_device_count(int* count);
FS_API fs_status fs_cuda_device_info_get(int device, fs_cuda_device_info* info);
/* Binds the calling thread to the device (its primary context) and checks that the kernels can run there (compute
 * capability 8.0 or higher, and this build's code for it). */
FS_API fs_status fs_cuda_init(int device);

/* ---- ops (asynchronous, on the given stream) --------------------------------------------------------------------- */

/* dst[i, :] = table[tokens[i], :] as F32 (table [vocab, cols]; for FP8, times scale[tokens[i]]). */
FS_API fs_status fs_cuda_embedding(fs_stream stream, const void* table, fs_dtype dtype, const float* scale,
                                   int vocab, int cols, const int32_t* tokens, int n, float* dst);

/* dst[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * gamma. x may equal dst. */
FS_API fs_status fs_cuda_rmsnorm(fs_stream stream, const float* x, const float* gamma, float eps, int rows, int cols, float* dst);

/* residual += x; dst = rmsnorm(residual). */
FS_API fs_status fs_cuda_add_rmsnorm(fs_stream stream, float* residual, const float* x, const float* gamma, float eps,
                                     int rows, int cols, float* dst);

/* acc += x over n elements. */
FS_API fs_status fs_cuda_add(fs_stream stream, float* acc, const float* x, size_t n);

/*
 * dst[r, j] = sum_i x[r, i] * w[j, i] (+ bias[j]); x [rows, k] F32, w [n, k], dst [rows, n] F32.
 * FP8 (W8A8): each row of x is quantized to E4M3 on the fly with its own scale s_a[r] = amax / 448 (fused: no
 * quantized copy of x is written), products accumulate in F32, and the epilogue is s_a[r] * w_scale[j] * acc
 * (+ bias). w_scale has n values (per output channel). F32/F16/BF16 weights: w_scale is ignored (may be null).
 */
FS_API fs_status fs_cuda_matmul(fs_stream stream, const float* x, int rows, int k, const void* w, fs_dtype dtype,
                                const float* w_scale, int n, const float* bias, float* dst);

/* Rotary embedding in place on x viewed as [rows, heads, head_dim], rotate-half layout: pairs (i, i + head_dim/2)
 * rotate by positions[row] * inv_freq[i] (inv_freq has head_dim/2 values). */
FS_API fs_status fs_cuda_rope(fs_stream stream, float* x, int rows, int heads, int head_dim, const int32_t* positions,
                              const float* inv_freq);

/* dst = silu(gate) * up over n elements. */
FS_API fs_status fs_cuda_silu_gate(fs_stream stream, const float* gate, const float* up, size_t n, float* dst);

/*
 * Paged KV cache, BF16, never quantized: for each layer, K and V are [num_blocks, block_size, kv_heads, head_dim].
 * k_cache/v_cache point at this layer's K and V. slots[r] = block * block_size + offset is where row r goes.
 */
FS_API fs_status fs_cuda_kv_store(fs_stream stream, uint16_t* k_cache, uint16_t* v_cache, int kv_heads, int head_dim,
                                  const float* k, const float* v, int rows, const int32_t* slots);

/*
 * Causal grouped-query attention over the paged cache, decode and prefill alike. q [rows, heads * head_dim];
 * row r belongs to sequence seq_of_row[r] and sits at position positions[r]; it attends to positions
 * 0..positions[r] of its sequence, whose blocks are block_tables[seq * max_blocks .. + max_blocks). Query head h
 * uses KV head h / (heads / kv_heads). Scores scaled by 1/sqrt(head_dim), softmax in F32. dst [rows, heads * head_dim].
 */
FS_API fs_status fs_cuda_attention(fs_stream stream, const float* q, int rows, int heads, int kv_heads, int head_dim,
                                   const uint16_t* k_cache, const uint16_t* v_cache, int block_size,
                                   const int32_t* block_tables, int max_blocks, const int32_t* seq_of_row,
                                   const int32_t* positions, float* dst);

/* dst[i, :] = src[rows_idx[i], :] for i < n; cols columns. */
FS_API fs_status fs_cuda_gather_rows(fs_stream stream, const float* src, int cols, const int32_t* rows_idx, int n, float* dst);

/*
 * Sampling on the device, so only token ids come back: for each row of logits [rows, vocab], temperature[r] == 0
 * picks the arg-max (lowest id on ties); otherwise softmax(logits / temperature) restricted to the smallest set of
 * tokens whose probability reaches top_p[r] (and to the top_k[r] most likely when top_k[r] > 0), drawn with a
 * counter-based generator keyed by seeds[r] at counter counters[r] (Philox4x32-10; the host passes each sequence's
 * seed and the position the token will take, so a seeded request draws the same tokens whatever batch it is in).
 * top_p, top_k, seeds and counters may be NULL (1.0, 0, 0, 0 for every row). The probabilities' masses are summed
 * exactly (40-bit fixed point), so the pick depends only on the inputs. out_tokens [rows].
 */
FS_API fs_status fs_cuda_sample(fs_stream stream, const float* logits, int rows, int vocab, const float* temperature,
                                const float* top_p, const int32_t* top_k, const uint64_t* seeds, const uint64_t* counters,
                                void* workspace, size_t workspace_bytes, int32_t* out_tokens);
/* Bytes of device workspace fs_cuda_sample needs for rows x vocab. */
FS_API size_t fs_cuda_sample_workspace_bytes(int rows, int vocab);

#ifdef __cplusplus
}
#endif

#endif /* FASTSERVE_CUDA_H */
