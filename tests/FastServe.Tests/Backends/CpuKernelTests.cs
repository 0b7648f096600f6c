using System.Runtime.Intrinsics;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Numerics;
using NUnit.Framework;

namespace FastServe.Tests.Backends;

/// <summary>The narrow-format decode tricks, the ComputePool and the machine probe.</summary>
[TestFixture]
public unsafe class CpuKernelTests
{
    [Test]
    public void Fp8Decode_EveryFiniteCode_IsExactOnEveryIsa()
    {
        byte* codes = stackalloc byte[256 + 64];
        for (int i = 0; i < 256; i++) codes[i] = (byte)i;
        float* out512 = stackalloc float[256], out256 = stackalloc float[256], out128 = stackalloc float[256];
        for (int i = 0; i < 256; i += 16)
        {
            if (CpuIsaInfo.IsSupported(CpuIsa.Avx512)) Simd512.LoadFp8(codes + i).Store(out512 + i);
        }
        for (int i = 0; i < 256; i += 8)
        {
            if (CpuIsaInfo.IsSupported(CpuIsa.Avx2)) Simd256.LoadFp8(codes + i).Store(out256 + i);
        }
        for (int i = 0; i < 256; i += 4) Simd128.LoadFp8(codes + i).Store(out128 + i);
        for (int c = 0; c < 256; c++)
        {
            if ((c & 0x7F) == 0x7F) continue; // NaN codes never occur in weights
            double expected = Fp8E4M3.Decode((byte)c);
            Assert.That((double)ScalarDecode.Fp8((byte)c) * ScalarDecode.Fp8Post, Is.EqualTo(expected), $"scalar code {c:X2}");
            Assert.That((double)out128[c] * ScalarDecode.Fp8Post, Is.EqualTo(expected), $"portable code {c:X2}");
            if (CpuIsaInfo.IsSupported(CpuIsa.Avx2)) Assert.That(out256[c], Is.EqualTo(out128[c]), $"avx2 code {c:X2}");
            if (CpuIsaInfo.IsSupported(CpuIsa.Avx512)) Assert.That(out512[c], Is.EqualTo(out128[c]), $"avx512 code {c:X2}");
        }
    }

    [Test]
    public void F16AndBf16Decode_EveryFiniteValue_IsExact()
    {
        var halves = new ushort[65536];
        for (int i = 0; i < halves.Length; i++) halves[i] = (ushort)i;
        var o512 = new float[16];
        var o256 = new float[8];
        var o128 = new float[4];
        fixed (ushort* h = halves)
        fixed (float* p512 = o512, p256 = o256, p128 = o128)
        {
            for (int i = 0; i < 65536; i += 16)
            {
                bool v512 = CpuIsaInfo.IsSupported(CpuIsa.Avx512);
                if (v512)
                {
                    Simd512.LoadF16(h + i).Store(p512);
                }
                for (int j = 0; j < 16; j++)
                {
                    ushort bits = (ushort)(i + j);
                    float f16 = HalfFloats.F16ToF32(bits);
                    float bf16 = HalfFloats.BF16ToF32(bits);
                    if (float.IsFinite(f16))
                    {
                        Assert.That(ScalarDecode.F16(bits) * (double)ScalarDecode.F16Post, Is.EqualTo((double)f16), $"f16 {bits:X4}");
                        if (v512) Assert.That(p512[j], Is.EqualTo(ScalarDecode.F16(bits)), $"avx512 f16 {bits:X4}");
                    }
                    if (!float.IsNaN(bf16)) Assert.That(ScalarDecode.Bf16(bits), Is.EqualTo(bf16), $"bf16 {bits:X4}");
                }
                if (v512)
                {
                    Simd512.LoadBf16(h + i).Store(p512);
                    for (int j = 0; j < 16; j++) Assert.That(BitConverter.SingleToInt32Bits(p512[j]), Is.EqualTo(BitConverter.SingleToInt32Bits(ScalarDecode.Bf16((ushort)(i + j)))));
                }
                for (int j = 0; j < 16; j += 8)
                {
                    if (!CpuIsaInfo.IsSupported(CpuIsa.Avx2)) break;
                    Simd256.LoadF16(h + i + j).Store(p256);
                    for (int t = 0; t < 8; t++) if (float.IsFinite(HalfFloats.F16ToF32((ushort)(i + j + t)))) Assert.That(p256[t], Is.EqualTo(ScalarDecode.F16((ushort)(i + j + t))));
                    Simd256.LoadBf16(h + i + j).Store(p256);
                    for (int t = 0; t < 8; t++) Assert.That(BitConverter.SingleToInt32Bits(p256[t]), Is.EqualTo(BitConverter.SingleToInt32Bits(ScalarDecode.Bf16((ushort)(i + j + t)))));
                }
                for (int j = 0; j < 16; j += 4)
                {
                    Simd128.LoadF16(h + i + j).Store(p128);
                    for (int t = 0; t < 4; t++) if (float.IsFinite(HalfFloats.F16ToF32((ushort)(i + j + t)))) Assert.That(p128[t], Is.EqualTo(ScalarDecode.F16((ushort)(i + j + t))));
                    Simd128.LoadBf16(h + i + j).Store(p128);
                    for (int t = 0; t < 4; t++) Assert.That(BitConverter.SingleToInt32Bits(p128[t]), Is.EqualTo(BitConverter.SingleToInt32Bits(ScalarDecode.Bf16((ushort)(i + j + t)))));
                }
            }
        }
    }

    [Test]
    public void VectorExp_IsAccurateOverSoftmaxAndSiluRange()
    {
        // Softmax feeds exp(s - max) <= 0; SiLU feeds exp(-z). Check relative error against double exp.
        float* buf = stackalloc float[16];
        double worst = 0;
        for (int i = 0; i < 20000; i++)
        {
            float x = -87f + i * (100f / 20000);
            for (int j = 0; j < 16; j++) buf[j] = x + j * 1e-4f;
            Vector128<float> r = Simd128.Exp(Vector128.Load(buf));
            for (int j = 0; j < 4; j++) worst = Math.Max(worst, Math.Abs(r.GetElement(j) / Math.Exp(buf[j]) - 1));
            if (CpuIsaInfo.IsSupported(CpuIsa.Avx512))
            {
                Vector512<float> r5 = Simd512.Exp(Vector512.Load(buf));
                for (int j = 0; j < 16; j++) worst = Math.Max(worst, Math.Abs(r5.GetElement(j) / Math.Exp(buf[j]) - 1));
            }
            if (CpuIsaInfo.IsSupported(CpuIsa.Avx2))
            {
                Vector256<float> r2 = Simd256.Exp(Vector256.Load(buf));
                for (int j = 0; j < 8; j++) worst = Math.Max(worst, Math.Abs(r2.GetElement(j) / Math.Exp(buf[j]) - 1));
            }
        }
        Assert.That(worst, Is.LessThan(1e-6), "worst relative error of vector exp");
    }

    private sealed class CountingJob : ComputeJob
    {
        public int[] Hits = new int[1];
        public int[] Workers = new int[1];
        public int ThrowAt = -1;

        public override void Execute(int item, int worker)
        {
            Interlocked.Increment(ref Hits[item]);
            Workers[item] = worker;
            if (item == ThrowAt) throw new InvalidOperationException("boom");
            Thread.SpinWait(50);
        }
    }

    [Test]
    public void ComputePool_RunsEveryItemExactlyOnce_AcrossThreads_AndAfterSleeping()
    {
        using var pool = new ComputePool(3, spinMicroseconds: 50);
        var job = new CountingJob { Hits = new int[1000], Workers = new int[1000] };
        // Workers seen over all rounds: on two busy cores one thread may take a whole round by itself.
        var seen = new HashSet<int>();
        for (int round = 0; round < 200; round++)
        {
            if (round == 100) Thread.Sleep(20); // workers fall back to blocking; the next run must wake them
            Array.Clear(job.Hits);
            int count = 1 + round * 7 % 1000;
            pool.Run(job, count);
            for (int i = 0; i < count; i++) Assert.That(job.Hits[i], Is.EqualTo(1), $"round {round} item {i}");
            for (int i = count; i < 1000; i++) Assert.That(job.Hits[i], Is.EqualTo(0));
            for (int i = 0; i < count; i++) seen.Add(job.Workers[i]);
        }
        Assert.That(seen.Count, Is.GreaterThan(1), "items ran on more than one thread");
        Assert.That(seen.All(w => w is >= 0 and < 3), Is.True);
    }

    [Test]
    public void ComputePool_RethrowsItemException_AndStaysUsable()
    {
        using var pool = new ComputePool(2);
        var job = new CountingJob { Hits = new int[64], Workers = new int[64], ThrowAt = 17 };
        var e = Assert.Throws<InvalidOperationException>(() => pool.Run(job, 64));
        Assert.That(e!.Message, Is.EqualTo("boom"));
        Assert.That(job.Hits.Sum(), Is.EqualTo(64), "the other items still ran");
        job.ThrowAt = -1;
        Array.Clear(job.Hits);
        pool.Run(job, 64);
        Assert.That(job.Hits.All(h => h == 1), Is.True);
    }

    [Test]
    public void ComputePool_DispatchAllocatesNothing()
    {
        using var pool = new ComputePool(2);
        var job = new CountingJob { Hits = new int[16], Workers = new int[16] };
        for (int i = 0; i < 100; i++) pool.Run(job, 16);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++) pool.Run(job, 16);
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.EqualTo(0));
    }

    [Test]
    public void MachineProbe_ReportsPlausibleFigures()
    {
        double copy = MachineProbe.MeasureCopyBandwidth(1, 64L << 20, 0.05);
        double fma = MachineProbe.MeasureFmaPeak(1, 0.05);
        TestContext.Out.WriteLine($"copy {copy / 1e9:F1} GB/s, fma {fma / 1e9:F1} GFLOP/s (1 thread, short run)");
        Assert.That(copy, Is.InRange(1e8, 1e12));
        Assert.That(fma, Is.InRange(1e8, 1e13));
    }
}
