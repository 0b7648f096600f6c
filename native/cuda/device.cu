// Library and device entry points: ABI version, the thread-local last error, device enumeration and init.
#include "common.cuh"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

namespace {
thread_local char g_last_error[1024];

// Compiled for every target arch; fs_cuda_init asks the runtime for its attributes to learn whether this build has
// code the device can run.
__global__ void probe_kernel(int* out) {
    if (out) *out = FS_FP8_MMA;
}
}  // namespace

namespace fs {

fs_status set_error(fs_status status, const char* file, int line, const char* fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char* base = strrchr(file, '/');
    snprintf(g_last_error, sizeof g_last_error, "%s at %s:%d", msg, base ? base + 1 : file, line);
    return status;
}

fs_status cuda_error(cudaError_t err, const char* call, const char* file, int line) {
    // "cudaMemsetAsync(dst, 0, n, s)" -> "cudaMemsetAsync"
    char name[96];
    size_t n = strcspn(call, "(");
    if (n >= sizeof name) n = sizeof name - 1;
    memcpy(name, call, n);
    name[n] = '\0';
    fs_status status = FS_ERR_CUDA;
    if (err == cudaErrorMemoryAllocation) status = FS_ERR_OUT_OF_MEMORY;
    else if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver || err == cudaErrorInvalidDevice)
        status = FS_ERR_NO_DEVICE;
    else if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorUnsupportedPtxVersion)
        status = FS_ERR_UNSUPPORTED;
    return set_error(status, file, line, "%s failed: %s (%s)", name, cudaGetErrorString(err), cudaGetErrorName(err));
}

}  // namespace fs

extern "C" {

FS_API int fs_cuda_abi_version(void) { return FS_CUDA_ABI_VERSION; }

FS_API const char* fs_cuda_last_error(void) { return g_last_error; }

FS_API fs_status fs_cuda_device_count(int* count) {
    FS_API_BEGIN
    FS_CHECK_ARG(count != nullptr, "count is null");
    *count = 0;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();  // not an error for this call: no devices
        return FS_OK;
    }
    FS_CUDA_CHECK(err);
    *count = n;
    return FS_OK;
    FS_API_END
}

FS_API fs_status fs_cuda_device_info_get(int device, fs_cuda_device_info* info) {
    FS_API_BEGIN
    FS_CHECK_ARG(info != nullptr, "info is null");
    FS_CHECK_ARG(device >= 0, "device %d is negative", device);
    memset(info, 0, sizeof *info);
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();
        return fs::set_error(FS_ERR_NO_DEVICE, __FILE__, __LINE__, "no CUDA device (%s)", cudaGetErrorString(err));
    }
    FS_CUDA_CHECK(err);
    if (device >= count)
        return fs::set_error(FS_ERR_NO_DEVICE, __FILE__, __LINE__, "device %d does not exist (%d visible)", device, count);
    cudaDeviceProp prop;
    FS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    snprintf(info->name, sizeof info->name, "%s", prop.name);
    info->major = prop.major;
    info->minor = prop.minor;
    info->multiprocessors = prop.multiProcessorCount;
    info->total_memory = prop.totalGlobalMem;
    FS_CUDA_CHECK(cudaDriverGetVersion(&info->driver_version));
    FS_CUDA_CHECK(cudaRuntimeGetVersion(&info->runtime_version));
    // The FP8 mma code exists for the built archs >= sm_89 (and reaches newer GPUs through the compute_90 PTX) when
    // the toolkit that built this library could emit it.
#ifndef FS_BUILD_FP8_MMA_ARCH
#define FS_BUILD_FP8_MMA_ARCH 1
#endif
#if FS_FP8_MMA_TOOLKIT && FS_BUILD_FP8_MMA_ARCH
    info->fp8_tensor_cores = prop.major * 10 + prop.minor >= 89 ? 1 : 0;
#else
    info->fp8_tensor_cores = 0;
#endif
    return FS_OK;
    FS_API_END
}

FS_API fs_status fs_cuda_init(int device) {
    FS_API_BEGIN
    FS_CHECK_ARG(device >= 0, "device %d is negative", device);
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();
        return fs::set_error(FS_ERR_NO_DEVICE, __FILE__, __LINE__, "no CUDA device (%s)", cudaGetErrorString(err));
    }
    FS_CUDA_CHECK(err);
    if (device >= count)
        return fs::set_error(FS_ERR_NO_DEVICE, __FILE__, __LINE__, "device %d does not exist (%d visible)", device, count);
    // The runtime uses the device's primary context, the one the host made current.
    FS_CUDA_CHECK(cudaSetDevice(device));
    int major = 0, minor = 0;
    FS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    FS_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    if (major < 8)
        return fs::set_error(FS_ERR_UNSUPPORTED, __FILE__, __LINE__,
                             "device %d has compute capability %d.%d; the CUDA kernels need 8.0 or higher", device,
                             major, minor);
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, probe_kernel);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return fs::set_error(FS_ERR_UNSUPPORTED, __FILE__, __LINE__,
                             "this build has no code for compute capability %d.%d (%s); rebuild with its arch in "
                             "CMAKE_CUDA_ARCHITECTURES",
                             major, minor, cudaGetErrorString(err));
    }
    return FS_OK;
    FS_API_END
}

}  // extern "C"
