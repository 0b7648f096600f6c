using FastServe.Runtime.Numerics;
using NUnit.Framework;

namespace FastServe.Tests;

public class Fp8Tests
{
    [Test]
    public void EveryCodeRoundTrips()
    {
        for (int c = 0; c < 256; c++)
        {
            float v = Fp8E4M3.Decode((byte)c);
            if (float.IsNaN(v)) { Assert.That(c & 0x7F, Is.EqualTo(0x7F)); continue; }
            byte back = Fp8E4M3.Encode(v);
            if (v == 0) Assert.That(back & 0x7F, Is.EqualTo(0));
            else Assert.That(back, Is.EqualTo((byte)c), $"code {c:X2} value {v}");
        }
    }
}
