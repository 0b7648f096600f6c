using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Protocol;

/// <summary>The resume fields of a REQUEST (protocol 1.3, flag bit 7): layout, bounds on hostile input, and the rule
/// that checks their values against the request.</summary>
[TestFixture]
public sealed class ResumeFieldsTests
{
    private static byte[] Payload(RequestParams p, int[]? resumeIds, uint? textBytes, IReadOnlyList<string>? stops = null)
    {
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.Request(w, 7, p, "fix this"u8, default, stops, resumeIds ?? [], textBytes);
        return w.WrittenSpan[Wire.HeaderSize..].ToArray();
    }

    [Test]
    public void ResumeFieldsFollowTheStopsAndTheRoutingFields()
    {
        var p = RequestParams.Default with { Model = "gec", RouteKey = "k" };
        var payload = Payload(p, [5, 6, 4095], 11, ["\n"]);
        Assert.That(RequestView.TryParse(payload, out var v), Is.EqualTo(RequestParseError.None));
        Assert.That(v.IsResume, Is.True);
        Assert.That((v.Flags & RequestFlags.Resume) == RequestFlags.Resume && (byte)RequestFlags.Resume == 0x80, Is.True);
        var resumed = new int[v.ResumeCount];
        for (int i = 0; i < resumed.Length; i++) resumed[i] = v.ResumeId(i);
        Assert.That(resumed, Is.EqualTo(new[] { 5, 6, 4095 }));
        Assert.That(v.ResumeTextBytes, Is.EqualTo(11u));
        Assert.That(Encoding.UTF8.GetString(v.Model), Is.EqualTo("gec"));
        Assert.That(Encoding.UTF8.GetString(v.GetStop(0)), Is.EqualTo("\n"));
        // The last 4 + 3 × 4 + 4 bytes are the resume fields, after the routing fields.
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(payload.AsSpan(payload.Length - 20)), Is.EqualTo(3u));

        // No ids is a valid resume (the client had only text held back... or nothing yet).
        Assert.That(RequestView.TryParse(Payload(RequestParams.Default, [], 0), out var empty), Is.EqualTo(RequestParseError.None));
        Assert.That(empty.IsResume && empty.ResumeCount == 0, Is.True);
        // Without the flag there are no resume fields.
        Assert.That(RequestView.TryParse(Payload(RequestParams.Default, null, null), out var plain), Is.EqualTo(RequestParseError.None));
        Assert.That(plain.IsResume || plain.ResumeCount != 0, Is.False);
    }

    [Test]
    public void HostileResumeFieldsAreRefusedWithAStableCode()
    {
        var good = Payload(RequestParams.Default, [1, 2], 3);
        // Cut anywhere inside the fields: missing count, missing ids, missing text bytes.
        foreach (int cut in new[] { 1, 4, 8, 12, 15 })
            Assert.That(RequestView.TryParse(good.AsSpan(0, good.Length - cut), out _), Is.EqualTo(RequestParseError.BadResume), $"cut {cut}");
        // A count over any request's max_tokens is refused before it is trusted as a length.
        var huge = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(huge.AsSpan(good.Length - 16), uint.MaxValue);
        Assert.That(RequestView.TryParse(huge, out _), Is.EqualTo(RequestParseError.BadResume));
        BinaryPrimitives.WriteUInt32LittleEndian(huge.AsSpan(good.Length - 16), RequestRules.MaxTokensLimit + 1);
        Assert.That(RequestView.TryParse(huge, out _), Is.EqualTo(RequestParseError.BadResume));
        // Bytes after the fields.
        Assert.That(RequestView.TryParse([.. good, 0], out _), Is.EqualTo(RequestParseError.TrailingBytes));
        Assert.That(RequestView.DetailCode(RequestParseError.BadResume), Is.EqualTo("request.bad_resume"));
    }

    [Test]
    public void TheResumeRuleBoundsTheIdsByMaxTokensAndTheContext()
    {
        Assert.That(RequestRules.CheckResume(10, 10, 5, 64), Is.Null, "as many ids as max_tokens: the generation had ended");
        Assert.That(RequestRules.CheckResume(59, 64, 6, 64), Is.Null, "one past the context: it had ended context_full");
        Assert.That(RequestRules.CheckResume(11, 10, 5, 64)?.Code, Is.EqualTo("request.bad_resume"));
        Assert.That(RequestRules.CheckResume(60, 64, 6, 64)?.Code, Is.EqualTo("request.bad_resume"));
        Assert.That(RequestRules.BadResumeText(9, 4).Code, Is.EqualTo("request.bad_resume"));
    }
}
