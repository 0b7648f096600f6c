/* Loads libfastserve_cuda.so the way the host does (dlopen, by path) and checks what can be checked without a GPU:
 * the ABI version, device enumeration (0 devices or a clean FS_ERR_NO_DEVICE, never a crash), argument checks with
 * their messages, and that an op on a machine without a device fails with a status and a last error.
 * Usage: fastserve_cuda_smoke path/to/libfastserve_cuda.so. On a GPU machine it also initialises device 0. */
#include "fastserve_cuda.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static int failures;
#define EXPECT(cond, ...)                                  \
    do {                                                   \
        if (!(cond)) {                                     \
            failures++;                                    \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);    \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
        }                                                  \
    } while (0)

#define LOAD(name) name##_fn name = (name##_fn)dlsym(lib, #name); if (!name) { printf("missing symbol %s\n", #name); return 1; }

typedef int (*fs_cuda_abi_version_fn)(void);
typedef const char* (*fs_cuda_last_error_fn)(void);
typedef fs_status (*fs_cuda_device_count_fn)(int*);
typedef fs_status (*fs_cuda_device_info_get_fn)(int, fs_cuda_device_info*);
typedef fs_status (*fs_cuda_init_fn)(int);
typedef fs_status (*fs_cuda_matmul_fn)(fs_stream, const float*, int, int, const void*, fs_dtype, const float*, int,
                                       const float*, float*);
typedef fs_status (*fs_cuda_add_fn)(fs_stream, float*, const float*, size_t);
typedef size_t (*fs_cuda_sample_workspace_bytes_fn)(int, int);

int main(int argc, char** argv) {
    const char* path = argc > 1 ? argv[1] : "dist/libfastserve_cuda.so";
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    LOAD(fs_cuda_abi_version) LOAD(fs_cuda_last_error) LOAD(fs_cuda_device_count) LOAD(fs_cuda_device_info_get)
    LOAD(fs_cuda_init) LOAD(fs_cuda_matmul) LOAD(fs_cuda_add) LOAD(fs_cuda_sample_workspace_bytes)

    EXPECT(fs_cuda_abi_version() == FS_CUDA_ABI_VERSION, "abi version %d", fs_cuda_abi_version());
    EXPECT(strcmp(fs_cuda_last_error(), "") == 0, "fresh thread has last error '%s'", fs_cuda_last_error());

    int count = -1;
    fs_status st = fs_cuda_device_count(&count);
    EXPECT(st == FS_OK && count >= 0, "device_count: status %d count %d (%s)", st, count, fs_cuda_last_error());
    printf("devices: %d\n", count);
    EXPECT(fs_cuda_device_count(NULL) == FS_ERR_INVALID_ARGUMENT, "device_count(NULL) accepted");
    EXPECT(strstr(fs_cuda_last_error(), "count is null") != NULL, "message '%s'", fs_cuda_last_error());

    fs_cuda_device_info info;
    st = fs_cuda_device_info_get(0, &info);
    if (count == 0) {
        EXPECT(st == FS_ERR_NO_DEVICE, "device_info_get(0) without devices: %d (%s)", st, fs_cuda_last_error());
        EXPECT(fs_cuda_init(0) == FS_ERR_NO_DEVICE, "init(0) without devices: %s", fs_cuda_last_error());
        printf("init(0): %s\n", fs_cuda_last_error());
        /* An op with plausible arguments reaches the runtime, which must fail cleanly. */
        st = fs_cuda_add(NULL, (float*)(uintptr_t)0x1000, (const float*)(uintptr_t)0x2000, 16);
        EXPECT(st != FS_OK, "add without a device returned FS_OK");
        printf("add without a device: status %d, %s\n", st, fs_cuda_last_error());
    } else {
        EXPECT(st == FS_OK, "device_info_get(0): %d (%s)", st, fs_cuda_last_error());
        printf("device 0: %s sm_%d%d, %d SMs, driver %d, runtime %d, fp8 mma %d\n", info.name, info.major,
               info.minor, info.multiprocessors, info.driver_version, info.runtime_version, info.fp8_tensor_cores);
        st = fs_cuda_init(0);
        EXPECT(st == FS_OK || st == FS_ERR_UNSUPPORTED, "init(0): %d (%s)", st, fs_cuda_last_error());
    }

    EXPECT(fs_cuda_matmul(NULL, NULL, 1, 16, NULL, FS_F8E4M3, NULL, 16, NULL, NULL) == FS_ERR_INVALID_ARGUMENT,
           "matmul with null pointers accepted");
    EXPECT(strstr(fs_cuda_last_error(), "matmul: null pointer") != NULL && strstr(fs_cuda_last_error(), "matmul.cu:"),
           "message '%s'", fs_cuda_last_error());
    EXPECT(fs_cuda_sample_workspace_bytes(4, 1000) >= 4 * 1000 * sizeof(float), "workspace too small");
    EXPECT(fs_cuda_sample_workspace_bytes(-1, 10) == 0, "negative rows");

    printf("%s\n", failures ? "smoke: FAILED" : "smoke: ok");
    return failures ? 1 : 0;
}
