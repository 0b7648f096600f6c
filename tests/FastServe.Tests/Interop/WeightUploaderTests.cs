using FastServe.Interop;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// <see cref="CudaWeightUploader"/> itself, its copies, events and waits, against a stand-in libcuda.so.1 compiled
/// with clang in which device memory is host memory and the stream is a worker thread that runs each async copy only
/// after a delay and signals events in stream order. An uploader that wrote into a chunk before the copy reading it
/// had run, or sent a piece to the wrong offset, leaves wrong bytes on the "device". No GPU.
/// </summary>
/// <remarks>The stand-in is loaded through <c>FASTSERVE_CUDA_DRIVER</c>, and a process resolves the driver once: no
/// other in-process test touches the driver (the CLI tests run the published executable). If one ever did first,
/// this test is ignored, saying so, rather than run against the wrong library.</remarks>
[NonParallelizable]
public unsafe class WeightUploaderTests
{
    private const int Magic = 424242;

    private static readonly Lazy<string?> Library = new(Build);

    [TestCase(2, 16 << 10, 1, 0)]
    [TestCase(3, 16 << 10, 1, 1)]
    [TestCase(4, 64 << 10, 1, 2)]
    public void EveryByteArrivesThroughDelayedCopies(int chunks, int chunkBytes, int threads, int seed)
    {
        using var ctx = Context();
        var rng = new Random(seed);
        var sizes = Enumerable.Range(0, 60).Select(i => rng.Next(3) switch
        {
            0 => rng.Next(1, 300),
            1 => rng.Next(300, chunkBytes),
            _ => rng.Next(chunkBytes, 5 * chunkBytes),
        }).ToArray();
        var (stats, issued) = UploadAndCompare(ctx, new UploadOptions(chunks, chunkBytes, threads), sizes, rng);
        Assert.That(stats.Bytes, Is.EqualTo(sizes.Sum(s => (long)s)));
        Assert.That(stats.Sessions, Is.EqualTo(1));
        Assert.That(stats.Pieces, Is.GreaterThanOrEqualTo(sizes.Length));
        Assert.That(stats.TransferWaitSeconds, Is.GreaterThan(0), "with delayed copies the host must have waited for some chunk");
        Assert.That(issued, Is.EqualTo(sizes.Length));
    }

    [Test]
    public void LargePiecesAreCopiedBySeveralThreads()
    {
        using var ctx = Context();
        var rng = new Random(7);
        // 8 MiB chunks: pieces of 2 MiB or more are split over the copy threads.
        var (stats, _) = UploadAndCompare(ctx, new UploadOptions(2, 8L << 20, 4), [20 << 20, 5 << 20, 100, 3 << 20], rng);
        Assert.That(stats.Bytes, Is.EqualTo((20L << 20) + (5L << 20) + 100 + (3L << 20)));
    }

    [Test]
    public void SessionsAddUpAndAnEmptyFinishChangesNothing()
    {
        using var ctx = Context();
        using var up = new CudaWeightUploader(ctx, 0, new UploadOptions(2, 4096, 1), CudaException.Check, () => { });
        Assert.That(up.Finish(), Is.EqualTo(default(WeightUploadStats)));
        var src = new byte[10_000];
        new Random(3).NextBytes(src);
        using var a = CudaDeviceMemory.Alloc(ctx, src.Length, "a");
        using var b = CudaDeviceMemory.Alloc(ctx, src.Length, "b");
        fixed (byte* p = src) up.Upload(p, src.Length, a.Ptr);
        Assert.That(up.Active);
        var first = up.Finish();
        Assert.That(up.Active, Is.False);
        fixed (byte* p = src) up.Upload(p, src.Length, b.Ptr);
        up.Finish();
        Assert.That(first.Bytes, Is.EqualTo(10_000));
        Assert.That(up.Stats.Bytes, Is.EqualTo(20_000));
        Assert.That(up.Stats.Sessions, Is.EqualTo(2));
        Assert.That(new ReadOnlySpan<byte>((void*)b.Ptr, src.Length).SequenceEqual(src));
        Assert.That(up.StagingSeconds, Is.GreaterThanOrEqualTo(0));
    }

    private static (WeightUploadStats Stats, int Issued) UploadAndCompare(CudaContextHandle ctx, UploadOptions options, int[] sizes, Random rng)
    {
        int issued = 0;
        using var up = new CudaWeightUploader(ctx, 0, options, CudaException.Check, () => issued++);
        var sources = sizes.Select(n => { var b = new byte[n]; rng.NextBytes(b); return b; }).ToArray();
        var targets = sizes.Select((n, i) => CudaDeviceMemory.Alloc(ctx, n, $"w{i}")).ToArray();
        try
        {
            for (int i = 0; i < sizes.Length; i++)
            {
                var copy = (byte[])sources[i].Clone();
                fixed (byte* p = copy) up.Upload(p, copy.Length, targets[i].Ptr);
                Array.Fill(copy, (byte)0xEE); // the source may be dropped once Upload returns
            }
            var stats = up.Finish();
            for (int i = 0; i < sizes.Length; i++)
            {
                var got = new ReadOnlySpan<byte>((void*)targets[i].Ptr, sizes[i]);
                int bad = -1;
                for (int j = 0; j < sizes[i] && bad < 0; j++) if (got[j] != sources[i][j]) bad = j;
                Assert.That(bad, Is.EqualTo(-1), $"item {i} ({sizes[i]} bytes) differs first at byte {bad}");
            }
            return (stats, issued);
        }
        finally
        {
            foreach (var t in targets) t.Dispose();
        }
    }

    private static CudaContextHandle Context()
    {
        string? lib = Library.Value;
        if (lib is null) Assert.Ignore("clang is not installed; the stand-in driver cannot be built");
        string? before = Environment.GetEnvironmentVariable(NativeLibraries.DriverPathVariable);
        Environment.SetEnvironmentVariable(NativeLibraries.DriverPathVariable, lib);
        try
        {
            int v;
            if (CudaDriver.cuDriverGetVersion(&v) != CudaDriver.Success || v != Magic)
                Assert.Ignore("this process loaded another CUDA driver before this test; run it alone");
        }
        finally
        {
            Environment.SetEnvironmentVariable(NativeLibraries.DriverPathVariable, before);
        }
        return CudaContextHandle.Retain(0);
    }

    private static string? Build()
    {
        string? clang = FakeCuda.Clang();
        if (clang is null) return null;
        string dir = TestModels.TempDir("fakestream");
        string src = Path.Combine(dir, "driver.c"), lib = Path.Combine(dir, "libcuda.so.1");
        File.WriteAllText(src, $$"""
            #include <pthread.h>
            #include <stdlib.h>
            #include <string.h>
            #include <unistd.h>
            typedef struct ev { long recorded, done; } ev;
            typedef struct op { void* dst; const void* src; size_t n; ev* e; long seq; struct op* next; } op;
            static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
            static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
            static op *head, *tail;
            static int started;
            static void* stream(void* unused) {
                (void)unused;
                for (;;) {
                    pthread_mutex_lock(&mu);
                    while (!head) pthread_cond_wait(&cv, &mu);
                    op* o = head;
                    head = o->next;
                    if (!head) tail = NULL;
                    pthread_mutex_unlock(&mu);
                    if (!o->e) { usleep(300); memcpy(o->dst, o->src, o->n); }
                    pthread_mutex_lock(&mu);
                    if (o->e) o->e->done = o->seq;
                    pthread_cond_broadcast(&cv);
                    pthread_mutex_unlock(&mu);
                    free(o);
                }
                return NULL;
            }
            static void enqueue(op* o) {
                pthread_mutex_lock(&mu);
                if (!started) { pthread_t t; pthread_create(&t, NULL, stream, NULL); pthread_detach(t); started = 1; }
                if (tail) tail->next = o; else head = o;
                tail = o;
                pthread_cond_broadcast(&cv);
                pthread_mutex_unlock(&mu);
            }
            int cuDriverGetVersion(int* v) { *v = {{Magic}}; return 0; }
            int cuDevicePrimaryCtxRetain(void** c, int d) { (void)d; *c = (void*)1; return 0; }
            int cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return 0; }
            int cuCtxSetCurrent(void* c) { (void)c; return 0; }
            int cuMemAlloc_v2(void** p, size_t n) { *p = malloc(n); return *p ? 0 : 2; }
            int cuMemFree_v2(void* p) { free(p); return 0; }
            int cuMemAllocHost_v2(void** p, size_t n) { *p = malloc(n); return *p ? 0 : 2; }
            int cuMemFreeHost(void* p) { free(p); return 0; }
            int cuEventCreate(void** e, unsigned f) { (void)f; *e = calloc(1, sizeof(ev)); return 0; }
            int cuEventDestroy_v2(void* e) { free(e); return 0; }
            int cuMemcpyHtoDAsync_v2(void* dst, const void* src, size_t n, void* s) {
                (void)s;
                op* o = calloc(1, sizeof(op)); o->dst = dst; o->src = src; o->n = n;
                enqueue(o);
                return 0;
            }
            int cuEventRecord(void* e, void* s) {
                (void)s;
                ev* x = e;
                op* o = calloc(1, sizeof(op));
                pthread_mutex_lock(&mu);
                o->e = x; o->seq = ++x->recorded;
                pthread_mutex_unlock(&mu);
                enqueue(o);
                return 0;
            }
            int cuEventSynchronize(void* e) {
                ev* x = e;
                pthread_mutex_lock(&mu);
                long target = x->recorded;
                while (x->done < target) pthread_cond_wait(&cv, &mu);
                pthread_mutex_unlock(&mu);
                return 0;
            }
            int cuGetErrorName(int r, const char** s) { (void)r; *s = "FAKE_ERROR"; return 0; }
            int cuGetErrorString(int r, const char** s) { (void)r; *s = "fake error"; return 0; }
            """);
        FakeCuda.Run(clang, ["-shared", "-fPIC", "-O1", "-pthread", "-o", lib, src]);
        return lib;
    }
}
