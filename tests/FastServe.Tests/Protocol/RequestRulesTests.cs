using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Protocol;

/// <summary>The one set of request rules: each limit accepts its edge and refuses one step past it, with the
/// documented code, field and wire status. The client, worker and engine tests reuse <see cref="BrokenParams"/> to
/// show each of them refuses the same values with the same code.</summary>
public class RequestRulesTests
{
    /// <summary>Wire request fields that break exactly one rule, with the code every layer must answer.</summary>
    public static IEnumerable<TestCaseData> BrokenParams()
    {
        var ok = RequestParams.Default;
        yield return Case("max_tokens 0", ok with { MaxTokens = 0 }, RequestRules.SamplingInvalid);
        yield return Case("max_tokens over the limit", ok with { MaxTokens = RequestRules.MaxTokensLimit + 1 }, RequestRules.SamplingInvalid);
        yield return Case("temperature NaN", ok with { Temperature = float.NaN }, RequestRules.SamplingInvalid);
        yield return Case("temperature negative", ok with { Temperature = -0.5f }, RequestRules.SamplingInvalid);
        yield return Case("temperature over 100", ok with { Temperature = 100.5f }, RequestRules.SamplingInvalid);
        yield return Case("top_p 0", ok with { TopP = 0 }, RequestRules.SamplingInvalid);
        yield return Case("top_p over 1", ok with { TopP = 1.01f }, RequestRules.SamplingInvalid);
        yield return Case("top_p infinite", ok with { TopP = float.PositiveInfinity }, RequestRules.SamplingInvalid);
        yield return Case("top_k negative", ok with { TopK = -1 }, RequestRules.SamplingInvalid);
        yield return Case("deadline over 24 h", ok with { DeadlineMs = (uint)RequestRules.MaxDeadlineMs + 1 }, RequestRules.InvalidDeadline);
    }

    private static TestCaseData Case(string name, RequestParams p, string code) => new TestCaseData(p, code).SetArgDisplayNames(name);

    [TestCaseSource(nameof(BrokenParams))]
    public void EachBrokenFieldHasItsCode(RequestParams p, string code)
    {
        var v = Check(p);
        Assert.That(v, Is.Not.Null);
        Assert.That(v!.Value.Code, Is.EqualTo(code));
        Assert.That(v.Value.Status, Is.EqualTo(WireStatus.BadRequest));
    }

    [Test]
    public void EdgesAreAllowed()
    {
        var ok = RequestParams.Default;
        Assert.Multiple(() =>
        {
            Assert.That(Check(ok), Is.Null);
            Assert.That(Check(ok with { MaxTokens = 1 }), Is.Null);
            Assert.That(Check(ok with { MaxTokens = RequestRules.MaxTokensLimit }), Is.Null);
            Assert.That(Check(ok with { Temperature = 0 }), Is.Null);
            Assert.That(Check(ok with { Temperature = 100 }), Is.Null);
            Assert.That(Check(ok with { TopP = float.Epsilon }), Is.Null);
            Assert.That(Check(ok with { TopK = 0 }), Is.Null);
            Assert.That(Check(ok with { Priority = 1 }), Is.Null);
            Assert.That(Check(ok with { DeadlineMs = 1 }), Is.Null);
            Assert.That(Check(ok with { DeadlineMs = (uint)RequestRules.MaxDeadlineMs }), Is.Null);
            Assert.That(RequestRules.CheckSampling(1, 0, 1, 0, RequestRules.MaxLogprobs), Is.Null);
        });
    }

    [Test]
    public void FieldsAreNamedInOrder()
    {
        // Several broken fields: the first in the documented order is reported.
        Assert.That(RequestRules.CheckSampling(0, float.NaN, 0, -1)!.Value.Field, Is.EqualTo("max_tokens"));
        Assert.That(RequestRules.CheckSampling(1, float.NaN, 0, -1)!.Value.Field, Is.EqualTo("temperature"));
        Assert.That(RequestRules.CheckSampling(1, 1, 0, -1)!.Value.Field, Is.EqualTo("top_p"));
        Assert.That(RequestRules.CheckSampling(1, 1, 1, -1)!.Value.Field, Is.EqualTo("top_k"));
        Assert.That(RequestRules.CheckSampling(1, 1, 1, 0, RequestRules.MaxLogprobs + 1)!.Value.Field, Is.EqualTo("logprobs"));
        Assert.That(RequestRules.CheckSampling(1, 1, 1, 0, -1)!.Value.Field, Is.EqualTo("logprobs"));
    }

    [Test]
    public void PriorityAndDeadline()
    {
        Assert.That(RequestRules.CheckPriority(2)!.Value.Code, Is.EqualTo(RequestRules.InvalidPriority));
        Assert.That(RequestRules.CheckPriority(-1)!.Value.Code, Is.EqualTo(RequestRules.InvalidPriority));
        Assert.That(RequestRules.CheckDeadline(TimeSpan.Zero)!.Value.Code, Is.EqualTo(RequestRules.InvalidDeadline));
        Assert.That(RequestRules.CheckDeadline(TimeSpan.FromMilliseconds(-1))!.Value.Code, Is.EqualTo(RequestRules.InvalidDeadline));
        Assert.That(RequestRules.CheckDeadline(TimeSpan.FromHours(24)), Is.Null);
        Assert.That(RequestRules.CheckDeadline(TimeSpan.FromHours(24) + TimeSpan.FromMilliseconds(1))!.Value.Code, Is.EqualTo(RequestRules.InvalidDeadline));
    }

    [Test]
    public void StopsAreCountedAndMeasuredInUtf8Bytes()
    {
        Assert.That(RequestRules.CheckStops(null, out int none), Is.Null);
        Assert.That(none, Is.Zero);
        var eight = Enumerable.Range(0, RequestRules.MaxStops).Select(i => $"s{i}").ToArray();
        Assert.That(RequestRules.CheckStops(eight, out int bytes), Is.Null);
        Assert.That(bytes, Is.EqualTo(eight.Sum(s => s.Length)));
        Assert.That(RequestRules.CheckStops([.. eight, "x"], out _)!.Value.Code, Is.EqualTo(RequestRules.TooManyStops));
        Assert.That(RequestRules.CheckStops([""], out _)!.Value.Code, Is.EqualTo(RequestRules.BadStop));
        Assert.That(RequestRules.CheckStops([new string('é', 128)], out int two), Is.Null, "256 bytes in 128 characters");
        Assert.That(two, Is.EqualTo(256));
        Assert.That(RequestRules.CheckStops([new string('é', 129)], out _)!.Value.Code, Is.EqualTo(RequestRules.BadStop), "258 bytes in 129 characters");
    }

    [Test]
    public void PromptLengthAndTokens()
    {
        Assert.That(RequestRules.CheckPromptLength(0, 16)!.Value.Code, Is.EqualTo(RequestRules.PromptEmpty));
        Assert.That(RequestRules.CheckPromptLength(15, 16), Is.Null);
        var tooLong = RequestRules.CheckPromptLength(16, 16)!.Value;
        Assert.That((tooLong.Code, tooLong.Status), Is.EqualTo((RequestRules.PromptTooLong, WireStatus.TooLarge)));
        Assert.That(RequestRules.CheckPromptTokens([0, 99], 100), Is.Null);
        Assert.That(RequestRules.CheckPromptTokens([0, 100], 100)!.Value.Code, Is.EqualTo(RequestRules.PromptInvalidToken));
        Assert.That(RequestRules.CheckPromptTokens([-1], 100)!.Value.Message, Does.Contain("prompt token 0 is -1"));
    }

    /// <summary>The rules a wire REQUEST's fields are held to, as the worker and the client apply them.</summary>
    internal static RuleViolation? Check(RequestParams p) =>
        RequestRules.CheckSampling(p.MaxTokens, p.Temperature, p.TopP, p.TopK)
        ?? RequestRules.CheckPriority(p.Priority)
        ?? (p.DeadlineMs != 0 ? RequestRules.CheckDeadline(TimeSpan.FromMilliseconds(p.DeadlineMs)) : null);
}
