// dist/fastserve: picks the NativeAOT build of fastserve this processor runs and execs it in place.
//
// NativeAOT fixes the instruction set at compile time, so build.sh publishes two builds next to this launcher:
//   fastserve-v4  x86-64-v4: the v3 set plus AVX-512 F, BW, CD, DQ, VL and the OS saving the opmask/ZMM state
//   fastserve-v3  x86-64-v3: SSE to SSE4.2, POPCNT, AVX, AVX2, FMA, F16C, MOVBE, LZCNT, BMI1, BMI2 and the OS
//                 saving the YMM state
// The checks mirror what the .NET runtime checks before main (dotnet/runtime src/native/minipal/cpufeatures.c), so a
// build this launcher picks never stops with "The required instruction sets are not supported by the current CPU."
// The best build present that the processor runs is chosen (v4, else v3: a copy without fastserve-v4 still runs, on the
// AVX2 kernels). execv() replaces this process: same pid, argv (argv[0] included), environment, open descriptors,
// signal mask and dispositions, and the exit status is the build's own. Nothing is printed unless it cannot exec:
//   exit 1, one line on stderr  error[cpu.unsupported]: ...  the processor is below x86-64-v3 (names what it lacks)
//                               error[install.incomplete]: ...  no build this processor runs is next to the launcher
//                               error[install.exec_failed]: ... execv failed (the path and errno's text)
// With --json among the arguments the same error is also written to stdout as {"error": {"code", "message"}}, as the
// CLI does. Compiled for the x86-64 baseline (no SSE3 and up), so it runs on any x86-64 processor.
#define _GNU_SOURCE
#include <cpuid.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct feature
{
    const char *name;
    int present;
};

// XCR0, the state components the OS saves; only valid when CPUID reports OSXSAVE (xgetbv faults otherwise).
static unsigned xcr0(void)
{
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}

static int bit(unsigned reg, int n) { return (reg >> n) & 1u; }

// Fills v3 (x86-64-v3 as .NET checks it, in the order an error names them) and v4 (what AVX-512 adds); returns counts.
static void probe(struct feature *v3, int *n3, struct feature *v4, int *n4)
{
    unsigned a, b, c, d, c1 = 0, d1 = 0, b7 = 0, ce = 0;
    if (__get_cpuid(1, &a, &b, &c, &d)) c1 = c, d1 = d;
    if (__get_cpuid_max(0, 0) >= 7)
    {
        __cpuid_count(7, 0, a, b, c, d);
        b7 = b;
    }
    if (__get_cpuid(0x80000001u, &a, &b, &c, &d)) ce = c;
    unsigned x = bit(c1, 27) ? xcr0() : 0;
    int i = 0;
    v3[i++] = (struct feature){"AVX2", bit(b7, 5)};
    v3[i++] = (struct feature){"FMA", bit(c1, 12)};
    v3[i++] = (struct feature){"AVX", bit(c1, 28)};
    v3[i++] = (struct feature){"F16C", bit(c1, 29)};
    v3[i++] = (struct feature){"MOVBE", bit(c1, 22)};
    v3[i++] = (struct feature){"LZCNT", bit(ce, 5)};
    v3[i++] = (struct feature){"BMI1", bit(b7, 3)};
    v3[i++] = (struct feature){"BMI2", bit(b7, 8)};
    v3[i++] = (struct feature){"OSXSAVE", bit(c1, 27)};
    v3[i++] = (struct feature){"OS YMM state (XCR0)", (x & 0x06) == 0x06};
    v3[i++] = (struct feature){"SSE", bit(d1, 25)};
    v3[i++] = (struct feature){"SSE2", bit(d1, 26)};
    v3[i++] = (struct feature){"SSE3", bit(c1, 0)};
    v3[i++] = (struct feature){"SSSE3", bit(c1, 9)};
    v3[i++] = (struct feature){"SSE4.1", bit(c1, 19)};
    v3[i++] = (struct feature){"SSE4.2", bit(c1, 20)};
    v3[i++] = (struct feature){"POPCNT", bit(c1, 23)};
    *n3 = i;
    i = 0;
    v4[i++] = (struct feature){"AVX512F", bit(b7, 16)};
    v4[i++] = (struct feature){"AVX512BW", bit(b7, 30)};
    v4[i++] = (struct feature){"AVX512CD", bit(b7, 28)};
    v4[i++] = (struct feature){"AVX512DQ", bit(b7, 17)};
    v4[i++] = (struct feature){"AVX512VL", bit(b7, 31)};
    v4[i++] = (struct feature){"OS ZMM state (XCR0)", (x & 0xE6) == 0xE6};
    *n4 = i;
}

static int all(const struct feature *f, int n)
{
    for (int i = 0; i < n; i++)
        if (!f[i].present) return 0;
    return 1;
}

static int fail(int argc, char **argv, const char *code, const char *message)
{
    fprintf(stderr, "error[%s]: %s\n", code, message);
    for (int i = 1; i < argc; i++)
    {
        if (strcmp(argv[i], "--json") != 0) continue;
        printf("{\n  \"error\": {\n    \"code\": \"%s\",\n    \"message\": \"", code);
        for (const char *p = message; *p; p++)
        {
            if (*p == '"' || *p == '\\') putchar('\\');
            if ((unsigned char)*p >= 0x20) putchar(*p);
        }
        printf("\"\n  }\n}\n");
        break;
    }
    return 1;
}

int main(int argc, char **argv)
{
    struct feature v3[24], v4[8];
    int n3, n4;
    probe(v3, &n3, v4, &n4);
    int runs_v3 = all(v3, n3), runs_v4 = runs_v3 && all(v4, n4);
    char message[PATH_MAX + 256];
    if (!runs_v3)
    {
        int len = snprintf(message, sizeof message, "this processor lacks");
        const char *sep = " ";
        for (int i = 0; i < n3; i++)
        {
            if (v3[i].present) continue;
            len += snprintf(message + len, sizeof message - len, "%s%s", sep, v3[i].name);
            sep = ", ";
        }
        snprintf(message + len, sizeof message - len,
                 ": fastserve needs an x86-64-v3 processor (AVX2 + FMA: Intel Haswell, AMD Excavator or Zen, or newer)");
        return fail(argc, argv, "cpu.unsupported", message);
    }

    // The builds sit next to the launcher's real file (/proc/self/exe resolves symlinks), else next to argv[0].
    char dir[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n > 0) dir[n] = '\0';
    else if (argc > 0 && strchr(argv[0], '/') && strlen(argv[0]) < sizeof dir) strcpy(dir, argv[0]);
    else strcpy(dir, "./fastserve");
    char *slash = strrchr(dir, '/');
    if (slash) slash[1] = '\0';
    else strcpy(dir, "./");

    const char *names[2] = {"fastserve-v4", "fastserve-v3"};
    char path[PATH_MAX + 16];
    for (int i = runs_v4 ? 0 : 1; i < 2; i++)
    {
        snprintf(path, sizeof path, "%s%s", dir, names[i]);
        if (access(path, F_OK) != 0) continue;
        execv(path, argv);
        snprintf(message, sizeof message, "%s: %s", path, strerror(errno));
        return fail(argc, argv, "install.exec_failed", message);
    }
    snprintf(message, sizeof message, "%.*s: no %s next to the launcher (build.sh publishes the builds into dist/ with it)",
             (int)(strlen(dir) > 1 ? strlen(dir) - 1 : 1), dir, runs_v4 ? "fastserve-v4 or fastserve-v3" : "fastserve-v3");
    return fail(argc, argv, "install.incomplete", message);
}
