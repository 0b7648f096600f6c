using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>
/// One parallel operation: <see cref="ComputePool.Run"/> calls <see cref="Execute"/> once for every item
/// 0..count-1, on any of the pool's threads, in no particular order. Implementations are long-lived objects whose
/// fields the dispatcher fills before each run, so dispatching allocates nothing.
/// </summary>
public abstract class ComputeJob
{
    /// <summary>Runs one item. <paramref name="worker"/> is the executing thread's index in 0..Threads-1
    /// (0 is the dispatching thread), stable for the call, so per-thread scratch can be indexed by it.</summary>
    public abstract void Execute(int item, int worker);
}

/// <summary>
/// A persistent fork-join pool: Threads-1 dedicated worker threads plus the calling thread. Work items are
/// handed out by an atomic counter (dynamic scheduling, so uneven items balance). Between runs workers spin
/// for <c>spinMicroseconds</c> (back-to-back ops of a forward pass then start in well under a microsecond) and
/// then block on a monitor, so an idle pool costs no CPU. <see cref="Run"/> allocates nothing.
/// Not reentrant: one dispatching thread at a time (the backend's owner), and a job must not call
/// <see cref="Run"/> itself.
/// </summary>
public sealed class ComputePool : IDisposable
{
    private readonly Thread[] _workers;
    private readonly object _gate = new();
    private readonly long _spinTicks;

    // Written by the dispatcher before the generation bump (which publishes them); read by workers after.
    private ComputeJob? _job;
    private int _count;

    private int _next;          // next item to take; Interlocked by everyone during a run
    private int _pending;       // workers yet to finish the current generation; Interlocked
    private long _generation;   // bumped (Interlocked) by the dispatcher to start a run
    private int _sleepers;      // workers blocked or about to block on _gate; Interlocked
    private volatile bool _stopping;
    private ExceptionDispatchInfo? _failure; // first exception of a run; set with CompareExchange

    /// <param name="threads">Total threads including the caller; 1 runs everything inline.</param>
    /// <param name="spinMicroseconds">How long an idle worker polls before blocking.</param>
    public ComputePool(int threads, int spinMicroseconds = 100)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        Threads = threads;
        _spinTicks = Math.Max(0, spinMicroseconds) * Stopwatch.Frequency / 1_000_000;
        _workers = new Thread[threads - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            int index = i + 1;
            _workers[i] = new Thread(() => WorkerLoop(index)) { IsBackground = true, Name = $"fastserve-cpu-{index}" };
            _workers[i].Start();
        }
    }

    /// <summary>Threads taking part in a run, the caller included.</summary>
    public int Threads { get; }

    /// <summary>Runs items 0..<paramref name="count"/>-1 of <paramref name="job"/> and returns when all are done.
    /// An exception thrown by an item is rethrown here (the first one; remaining items still run).</summary>
    public void Run(ComputeJob job, int count)
    {
        ArgumentNullException.ThrowIfNull(job);
        if (count <= 0) return;
        if (count == 1 || _workers.Length == 0)
        {
            for (int i = 0; i < count; i++) job.Execute(i, 0);
            return;
        }
        ObjectDisposedException.ThrowIf(_stopping, this);

        _job = job;
        _count = count;
        _next = 0;
        _pending = _workers.Length;
        Interlocked.Increment(ref _generation);
        if (Volatile.Read(ref _sleepers) != 0)
        {
            lock (_gate) Monitor.PulseAll(_gate);
        }

        Drain(job, count, 0);

        var spin = new SpinWait();
        while (Volatile.Read(ref _pending) != 0) spin.SpinOnce(sleep1Threshold: -1);
        _job = null;

        var failure = Interlocked.Exchange(ref _failure, null);
        failure?.Throw();
    }

    private void Drain(ComputeJob job, int count, int worker)
    {
        int i;
        while ((i = Interlocked.Increment(ref _next) - 1) < count)
        {
            try
            {
                job.Execute(i, worker);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _failure, ExceptionDispatchInfo.Capture(e), null);
            }
        }
    }

    private void WorkerLoop(int index)
    {
        long seen = 0;
        while (true)
        {
            WaitForGeneration(seen);
            seen = Volatile.Read(ref _generation);
            if (_stopping) return;
            Drain(_job!, _count, index);
            Interlocked.Decrement(ref _pending);
        }
    }

    private void WaitForGeneration(long seen)
    {
        if (Volatile.Read(ref _generation) != seen) return;
        long start = Stopwatch.GetTimestamp();
        int polls = 0;
        while (Volatile.Read(ref _generation) == seen)
        {
            Thread.SpinWait(8);
            if ((++polls & 63) == 0 && Stopwatch.GetTimestamp() - start > _spinTicks) break;
        }
        if (Volatile.Read(ref _generation) != seen) return;

        lock (_gate)
        {
            // The Interlocked increment is a full fence: either the dispatcher sees _sleepers != 0 after its
            // generation bump and pulses, or this re-check sees the new generation.
            Interlocked.Increment(ref _sleepers);
            while (Volatile.Read(ref _generation) == seen && !_stopping) Monitor.Wait(_gate);
            Interlocked.Decrement(ref _sleepers);
        }
    }

    /// <summary>Stops and joins the workers. Safe to call twice.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        Interlocked.Increment(ref _generation);
        lock (_gate) Monitor.PulseAll(_gate);
        foreach (var t in _workers) t.Join();
    }
}
