namespace FastServe.Autoscale.Simulation;

/// <summary>
/// A fluid, time-stepped fleet simulator (docs/autoscale.md, "The fleet simulator"). Each step of
/// <see cref="StepSeconds"/>: replicas whose start-up ended become ready, the trace's rate is spread over the ready
/// replicas (<see cref="ReplicaModel.Step"/>), and every policy interval the policy gets an observation built from
/// the model and the fleet starts or drains the difference. Replicas are counts plus a sorted list of start-up end
/// times, so a step costs O(1) in the fleet size (plus the replicas that become ready in it).
/// </summary>
public sealed class FleetSimulator(LoadTrace trace, ReplicaModel model, int seed, double stepSeconds = 1)
{
    private static readonly TimeSpan ReversalWindow = TimeSpan.FromMinutes(5);

    public double StepSeconds => stepSeconds;

    /// <summary>Steps of one run (for progress).</summary>
    public long Steps => (long)Math.Ceiling(trace.DurationSeconds / stepSeconds);

    /// <summary>Runs <paramref name="policy"/> over the whole trace. The fleet starts with the count the policy asks for
    /// when shown a fleet sized for the first second at full capacity, all ready (a fleet already running).
    /// <paramref name="progress"/> gets (steps done, steps) now and then; <paramref name="timeline"/>, when given,
    /// records the run over time.</summary>
    public FleetRunResult Run(IScalePolicy policy, Action<long, long>? progress = null, FleetTimeline? timeline = null)
    {
        model.Validate();
        var rng = new Random(seed);
        var starting = new List<double>(); // start-up end times, ascending
        var draining = new Queue<(double End, int Count)>();
        int drainingCount = 0;

        double rate0 = trace.Rate(0);
        int guess = Math.Max(1, (int)Math.Ceiling(rate0 / model.Capacity));
        var first = model.Step(rate0, guess);
        int ready = Math.Max(0, policy.Decide(new FleetObservation(TimeSpan.Zero, guess, 0, first.Concurrency, first.Refused, first.MeanLatency)));

        double offered = 0, within = 0, over = 0, rejected = 0, replicaSeconds = 0, refusedSinceTick = 0;
        int events = 0, reversals = 0, maxReplicas = ready, lastDirection = 0, stepsSinceTick = 0;
        TimeSpan lastEventAt = TimeSpan.MinValue;
        double interval = policy.Interval.TotalSeconds, nextTick = interval;
        long steps = Steps;
        for (long i = 0; i < steps; i++)
        {
            if ((i & 0xFFF) == 0) progress?.Invoke(i, steps);
            double t = i * stepSeconds;
            int becameReady = 0;
            while (becameReady < starting.Count && starting[becameReady] <= t) becameReady++;
            if (becameReady > 0) { starting.RemoveRange(0, becameReady); ready += becameReady; }
            while (draining.Count > 0 && draining.Peek().End <= t) drainingCount -= draining.Dequeue().Count;

            double rate = trace.Rate(t);
            var s = model.Step(rate, ready);
            offered += rate * stepSeconds;
            within += s.Served * (1 - s.OverSloFraction) * stepSeconds;
            over += s.Served * s.OverSloFraction * stepSeconds;
            rejected += s.Refused * stepSeconds;
            replicaSeconds += (ready + starting.Count + drainingCount) * stepSeconds;
            refusedSinceTick += s.Refused;
            stepsSinceTick++;
            timeline?.Add(t, rate, ready, ready + starting.Count + drainingCount, s, model);

            double now = t + stepSeconds;
            if (now + 1e-9 < nextTick) continue;
            nextTick += interval;
            var at = TimeSpan.FromSeconds(now);
            var o = new FleetObservation(at, ready, starting.Count, s.Concurrency, refusedSinceTick / stepsSinceTick, s.MeanLatency);
            refusedSinceTick = 0;
            stepsSinceTick = 0;
            int current = ready + starting.Count;
            int delta = Math.Max(0, policy.Decide(o)) - current;
            if (delta == 0) continue;
            int direction = Math.Sign(delta);
            events++;
            if (lastDirection != 0 && direction != lastDirection && at - lastEventAt <= ReversalWindow) reversals++;
            lastDirection = direction;
            lastEventAt = at;
            if (delta > 0)
            {
                for (int k = 0; k < delta; k++)
                {
                    double end = now + model.SampleStartDelay(rng);
                    int pos = starting.BinarySearch(end);
                    starting.Insert(pos < 0 ? ~pos : pos, end);
                }
                maxReplicas = Math.Max(maxReplicas, ready + starting.Count);
            }
            else
            {
                // Those still starting go first (latest to be ready first): they cost nothing to stop. Ready ones
                // drain: no new requests, the ones in flight finish within a latency.
                int remove = -delta, fromStarting = Math.Min(remove, starting.Count);
                starting.RemoveRange(starting.Count - fromStarting, fromStarting);
                int fromReady = remove - fromStarting;
                if (fromReady > 0)
                {
                    ready -= fromReady;
                    drainingCount += fromReady;
                    draining.Enqueue((now + s.MeanLatency, fromReady));
                }
            }
        }
        progress?.Invoke(steps, steps);
        timeline?.Finish();
        return new FleetRunResult(policy.Name, offered, within, over, rejected, replicaSeconds / 3600, events, reversals, maxReplicas);
    }
}
