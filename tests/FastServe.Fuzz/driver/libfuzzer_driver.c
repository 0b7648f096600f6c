// libFuzzer front end for a SharpFuzz target running in a separate .NET process.
//
// libFuzzer (linked in with clang -fsanitize=fuzzer) mutates inputs in this process; the .NET process
// (`FastServe.Fuzz fuzz`, i.e. SharpFuzz's Fuzzer.LibFuzzer.Run) executes them against the instrumented assembly.
// SharpFuzz's side of the exchange, which this file implements the other half of:
//   - one System V shared memory segment: MAP_SIZE bytes of edge counters written by the instrumented code,
//     then up to MAX_INPUT bytes of input; its id travels in __LIBFUZZER_SHM_ID;
//   - a control pipe on fd 198 (__LIBFUZZER_CONTROL_PIPE_ID) and a status pipe on fd 199 (__LIBFUZZER_STATUS_PIPE_ID);
//   - the target writes an int32 once it is attached; then per input we write the int32 length and it answers
//     an int32 status, 0 = fine, anything else = an exception escaped (the target prints it and exits).
// The counters are copied into a __libfuzzer_extra_counters section, which libFuzzer reads as coverage.
//
// Environment: FASTSERVE_FUZZ_TARGET = an executable to start with no arguments (run.sh writes a launcher script).
// A target that throws or dies makes this abort(), so libFuzzer stores the input as a crash-* artifact.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/types.h>
#include <unistd.h>

#define MAP_SIZE (1 << 16)
#define MAX_INPUT (1 << 20)
#define CTL_FD 198
#define ST_FD 199

__attribute__((used, section("__libfuzzer_extra_counters"))) uint8_t fs_extra_counters[MAP_SIZE];

static int ctl_fd = -1;
static int st_fd = -1;
static uint8_t *shm_base;
static pid_t target_pid;

static void fail(const char *what)
{
    fprintf(stderr, "libfuzzer_driver: %s: %s\n", what, strerror(errno));
    exit(1);
}

// Full read or write of 4 bytes; returns 0 on success, -1 when the other end is gone.
static int io4(int fd, void *buf, int writing)
{
    size_t done = 0;
    while (done < 4)
    {
        ssize_t n = writing ? write(fd, (char *)buf + done, 4 - done) : read(fd, (char *)buf + done, 4 - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *target = getenv("FASTSERVE_FUZZ_TARGET");
    if (!target || !*target)
    {
        fprintf(stderr, "libfuzzer_driver: set FASTSERVE_FUZZ_TARGET to the target executable\n");
        exit(1);
    }
    // A dead target must show up as EPIPE, not kill this process before it can report the input.
    signal(SIGPIPE, SIG_IGN);

    int ctl[2], st[2];
    if (pipe(ctl) || pipe(st)) fail("pipe");
    int shm_id = shmget(IPC_PRIVATE, MAP_SIZE + MAX_INPUT, IPC_CREAT | IPC_EXCL | 0600);
    if (shm_id < 0) fail("shmget");
    shm_base = shmat(shm_id, NULL, 0);
    if (shm_base == (void *)-1)
    {
        shmctl(shm_id, IPC_RMID, NULL);
        fail("shmat");
    }

    pid_t parent = getpid();
    target_pid = fork();
    if (target_pid < 0) fail("fork");
    if (target_pid == 0)
    {
        // The target must not outlive this process (libFuzzer leaves with _exit on timeouts).
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        if (dup2(ctl[0], CTL_FD) < 0 || dup2(st[1], ST_FD) < 0) fail("dup2");
        close(ctl[0]);
        close(ctl[1]);
        close(st[0]);
        close(st[1]);
        char id[16];
        snprintf(id, sizeof id, "%d", shm_id);
        setenv("__LIBFUZZER_SHM_ID", id, 1);
        setenv("__LIBFUZZER_CONTROL_PIPE_ID", "198", 1);
        setenv("__LIBFUZZER_STATUS_PIPE_ID", "199", 1);
        execl(target, target, (char *)NULL);
        fail("exec of FASTSERVE_FUZZ_TARGET");
    }
    close(ctl[0]);
    close(st[1]);
    ctl_fd = ctl[1];
    st_fd = st[0];

    int32_t ready;
    int ok = io4(st_fd, &ready, 0);
    // Both sides are attached (or the target is gone): the segment can go once both detach.
    shmctl(shm_id, IPC_RMID, NULL);
    if (ok != 0)
    {
        fprintf(stderr, "libfuzzer_driver: the target exited before it was ready\n");
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_INPUT) return 0;
    memset(shm_base, 0, MAP_SIZE);
    memcpy(shm_base + MAP_SIZE, data, size);
    int32_t len = (int32_t)size, status = 0;
    int ok = io4(ctl_fd, &len, 1) == 0 && io4(st_fd, &status, 0) == 0;
    memcpy(fs_extra_counters, shm_base, MAP_SIZE);
    if (!ok)
    {
        fprintf(stderr, "libfuzzer_driver: the target process died on this input\n");
        abort();
    }
    if (status != 0)
    {
        fprintf(stderr, "libfuzzer_driver: an exception escaped the target on this input (printed above)\n");
        abort();
    }
    return 0;
}
