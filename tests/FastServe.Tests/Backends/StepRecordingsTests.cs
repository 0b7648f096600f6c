using FastServe.Runtime.Backends;
using NUnit.Framework;

namespace FastServe.Tests.Backends;

/// <summary>The policy every step recorder shares: a key runs op by op, then is recorded, then replays; a refusal
/// drops the recording and counts; a key refused <see cref="StepRecordings{T}.MaxRefusals"/> times is given up.</summary>
public class StepRecordingsTests
{
    private sealed class Rec : IDisposable
    {
        public bool Disposed;
        public void Dispose() => Disposed = true;
    }

    private static StepOutcome Step(StepRecordings<Rec> r, int key, bool refuse = false, Rec? made = null)
    {
        Assert.That(r.Begin(key, out var plan, out _), Is.True);
        return r.End(plan, refuse, plan == StepRecordings<Rec>.Plan.Record ? made ?? new Rec() : null);
    }

    [Test]
    public void RunThenRecordThenReplayPerKey()
    {
        var r = new StepRecordings<Rec>();
        Assert.That(Step(r, 4), Is.EqualTo(StepOutcome.Ran));
        Assert.That(Step(r, 8), Is.EqualTo(StepOutcome.Ran), "keys are independent");
        var rec = new Rec();
        Assert.That(Step(r, 4, made: rec), Is.EqualTo(StepOutcome.Recorded));
        Assert.That(r.Begin(4, out var plan, out var replayed), Is.True);
        Assert.That(plan, Is.EqualTo(StepRecordings<Rec>.Plan.Replay));
        Assert.That(replayed, Is.SameAs(rec));
        Assert.That(r.End(plan, false, null), Is.EqualTo(StepOutcome.Replayed));
        r.Clear();
        Assert.That(rec.Disposed, Is.True, "Clear disposes the recordings");
        Assert.That(Step(r, 4), Is.EqualTo(StepOutcome.Ran), "and forgets the keys");
    }

    [Test]
    public void RefusalsDropTheRecordingAndAKeyIsGivenUpAfterThree()
    {
        var r = new StepRecordings<Rec>();
        Step(r, 2);
        var rec = new Rec();
        Assert.That(Step(r, 2, made: rec), Is.EqualTo(StepOutcome.Recorded));
        Assert.That(Step(r, 2, refuse: true), Is.EqualTo(StepOutcome.Refused), "a refused replay");
        Assert.That(rec.Disposed, Is.True);
        var refusedRecording = new Rec();
        Assert.That(Step(r, 2, refuse: true, made: refusedRecording), Is.EqualTo(StepOutcome.Refused), "the op-by-op rerun warmed up: the next step records, and is refused");
        Assert.That(refusedRecording.Disposed, Is.True);
        Assert.That(Step(r, 2, refuse: true), Is.EqualTo(StepOutcome.Refused));
        Assert.That(r.Begin(2, out _, out _), Is.False, $"{StepRecordings<Rec>.MaxRefusals} refusals give the key up");
        Assert.That(Step(r, 3), Is.EqualTo(StepOutcome.Ran), "other keys go on");
    }

    [Test]
    public void StepsDoNotNest()
    {
        var r = new StepRecordings<Rec>();
        Assert.That(r.Begin(1, out _, out _), Is.True);
        Assert.Throws<InvalidOperationException>(() => r.Begin(1, out _, out _));
    }
}
