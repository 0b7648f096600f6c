using System.Buffers;
using FastServe.Protocol;
using FastServe.Server.Engine;
using FastServe.Server.Ipc;
using NUnit.Framework;

namespace FastServe.Tests.Server;

/// <summary>
/// The workers' own counters (API keys, HTTP answers) on their way to the replica's /metrics: the IPC message round
/// trips and refuses malformed input, and the engine's sums never go down when a worker process is replaced.
/// </summary>
[TestFixture]
public sealed class WorkerCountersTests
{
    private static byte[] Payload(IReadOnlyList<CounterValue> values)
    {
        var w = new ArrayBufferWriter<byte>();
        WorkerCounters.Write(w, values);
        Assert.That(FrameReader.TryRead(w.WrittenSpan, 1 << 20, out var h, out var p, out int used), Is.EqualTo(ReadResult.Frame));
        Assert.That((h.Type, used), Is.EqualTo(((FrameType)IpcType.Counters, w.WrittenCount)));
        return p.ToArray();
    }

    [Test]
    public void RoundTripsAndRefusesMalformedMessages()
    {
        var values = new List<CounterValue>
        {
            new(CounterKind.KeyRequests, "alice", "", 7),
            new(CounterKind.HttpRequests, "completions", "200", 3),
            new(CounterKind.AuthRefused, new string('é', 300), "", 1),   // a label over 256 bytes is cut on a character
        };
        var p = Payload(values);
        var back = new List<CounterValue>();
        Assert.That(WorkerCounters.TryRead(p, back), Is.True);
        Assert.That(back.Take(2), Is.EqualTo(values.Take(2)));
        Assert.That(back[2].A, Is.EqualTo(new string('é', 128)));
        for (int cut = 0; cut < p.Length; cut++) Assert.That(WorkerCounters.TryRead(p[..cut], new List<CounterValue>()), Is.False, $"cut at {cut}");
        Assert.That(WorkerCounters.TryRead([.. p, 0], new List<CounterValue>()), Is.False, "trailing byte");
        var badKind = (byte[])p.Clone();
        badKind[2] = 99;
        Assert.That(WorkerCounters.TryRead(badKind, new List<CounterValue>()), Is.False, "unknown kind");
    }

    [Test]
    public void SumsOverWorkersAndKeepWhatAReplacedProcessCounted()
    {
        var c = new ReplicaCounters();
        c.Update(0, 100, [new(CounterKind.KeyRequests, "alice", "", 5), new(CounterKind.KeyReloads, "", "", 2)]);
        c.Update(1, 101, [new(CounterKind.KeyRequests, "alice", "", 3), new(CounterKind.KeyReloads, "", "", 2)]);
        var t = c.Totals();
        Assert.That((t[(CounterKind.KeyRequests, "alice", "")], t[(CounterKind.KeyReloads, "", "")]), Is.EqualTo((8L, 2L)), "requests add up; every worker reloads the same file");

        // Worker 0 restarts: its new process counts from zero, the old one's 5 stay in the total.
        c.Update(0, 200, [new(CounterKind.KeyRequests, "alice", "", 1), new(CounterKind.KeyReloads, "", "", 0)]);
        t = c.Totals();
        Assert.That(t[(CounterKind.KeyRequests, "alice", "")], Is.EqualTo(5L + 3 + 1));
        Assert.That(t[(CounterKind.KeyReloads, "", "")], Is.EqualTo(2L));
    }
}
