namespace FastServe.Router;

/// <summary>
/// Picks the endpoint for a request among those eligible now (<see cref="Endpoint.IsEligible"/>), by one of the
/// <see cref="BalancePolicy"/> rules over their effective weights (<see cref="Endpoint.EffectiveWeight"/>) and load
/// scores (<see cref="Endpoint.Score"/>). Every random draw comes from the <see cref="Random"/> given, so a seeded
/// balancer is deterministic. Thread-safe (one pick at a time); allocates nothing per pick once its scratch arrays
/// fit the fleet.
/// </summary>
public sealed class Balancer
{
    private readonly Lock _lock = new();
    private readonly Random _random;
    // Scratch of the pick in progress (under _lock): the candidates and their effective weights.
    private Endpoint[] _cand = new Endpoint[16];
    private double[] _w = new double[16];

    /// <summary>A balancer applying <paramref name="policy"/>, drawing from <paramref name="random"/>.</summary>
    public Balancer(BalancePolicy policy, Random random)
    {
        ArgumentNullException.ThrowIfNull(random);
        Policy = policy;
        _random = random;
    }

    /// <summary>The rule it applies.</summary>
    public BalancePolicy Policy { get; }

    /// <summary>
    /// The endpoint for the next request, or null when none is eligible. Endpoints in <paramref name="avoid"/> (those a
    /// retried request already tried) are left out while any other is eligible. With <paramref name="leaving"/> the
    /// endpoints are ones that left the source and serve as a fallback: <see cref="Endpoint.CanServe"/> decides instead
    /// of <see cref="Endpoint.IsEligible"/>. Only endpoints in the pool of <paramref name="model"/> and
    /// <paramref name="version"/> are candidates (<see cref="Endpoint.Serves"/>; null: any), and with
    /// <paramref name="minMinor"/> only those whose HELLO_OK declared at least that protocol minor (a resume needs 1.3).
    /// </summary>
    public Endpoint? Pick(ReadOnlySpan<Endpoint> endpoints, long now, ReadOnlySpan<Endpoint?> avoid = default, bool leaving = false,
        string? model = null, string? version = null, ushort minMinor = 0)
    {
        lock (_lock)
        {
            int n = Collect(endpoints, now, avoid, leaving, model, version, minMinor);
            if (n == 0 && !avoid.IsEmpty) n = Collect(endpoints, now, default, leaving, model, version, minMinor);
            if (n == 0) return null;
            double total = 0;
            for (int i = 0; i < n; i++) total += _w[i];
            if (!(total > 0) || double.IsInfinity(total))
            {
                // Cannot happen with valid weights; equal weights keep every rule well defined anyway.
                for (int i = 0; i < n; i++) _w[i] = 1;
                total = n;
            }
            int k = Policy switch
            {
                BalancePolicy.RoundRobin => RoundRobin(n, total),
                BalancePolicy.Random => Draw(n, total, -1),
                BalancePolicy.LeastLoaded => LeastLoaded(n, now),
                _ => PowerOfTwo(n, total, now),
            };
            var pick = _cand[k];
            Array.Clear(_cand, 0, n);   // hold no references to endpoints that may leave
            return pick;
        }
    }

    private int Collect(ReadOnlySpan<Endpoint> endpoints, long now, ReadOnlySpan<Endpoint?> avoid, bool leaving, string? model, string? version, ushort minMinor)
    {
        if (_cand.Length < endpoints.Length)
        {
            _cand = new Endpoint[endpoints.Length];
            _w = new double[endpoints.Length];
        }
        int n = 0;
        foreach (var e in endpoints)
        {
            if (!e.Serves(model, version) || !(leaving ? e.CanServe(now) : e.IsEligible(now)) || Contains(avoid, e)) continue;
            if (minMinor > 0 && e.Server.Minor < minMinor) continue;
            _cand[n] = e;
            _w[n] = e.EffectiveWeight(now);
            n++;
        }
        return n;
    }

    private static bool Contains(ReadOnlySpan<Endpoint?> set, Endpoint e)
    {
        foreach (var x in set) if (ReferenceEquals(x, e)) return true;
        return false;
    }

    // Index drawn with probability weight / total among the candidates other than `skip`.
    private int Draw(int n, double total, int skip)
    {
        double r = _random.NextDouble() * total;
        int last = -1;
        for (int i = 0; i < n; i++)
        {
            if (i == skip) continue;
            last = i;
            r -= _w[i];
            if (r < 0) return i;
        }
        return last;   // rounding left r ≥ 0 after the last candidate
    }

    // Two distinct candidates, each drawn by weight (the second among the rest); the lower score wins.
    private int PowerOfTwo(int n, double total, long now)
    {
        if (n == 1) return 0;
        int a = Draw(n, total, -1);
        int b = Draw(n, total - _w[a], a);
        int c = Compare(_cand[a], _cand[a].Score(now), _cand[b], _cand[b].Score(now));
        if (c < 0) return a;
        if (c > 0) return b;
        return _random.Next(2) == 0 ? a : b;
    }

    /// <summary>
    /// Orders two endpoints by cost. When both have a measured speed (<see cref="Endpoint.TokenTimeUs"/>), the cost
    /// is (score + 1) × time per token: what the requests it holds, the new one included, take to run there, so a
    /// replica three times slower counts three times as much per request. Costs within 5 % of each other tie (speed
    /// estimates of equal replicas differ by noise, which must not break ties one way). Without both speeds, the
    /// scores decide exactly.
    /// </summary>
    internal static int Compare(Endpoint a, double scoreA, Endpoint b, double scoreB)
    {
        double ta = a.TokenTimeUs, tb = b.TokenTimeUs;
        if (ta > 0 && tb > 0)
        {
            double ca = (scoreA + 1) * ta, cb = (scoreB + 1) * tb;
            if (Math.Abs(ca - cb) <= 0.05 * Math.Max(ca, cb)) return 0;
            return ca < cb ? -1 : 1;
        }
        return scoreA.CompareTo(scoreB);
    }

    // Smooth weighted round-robin (as in nginx): every candidate gains its weight, the one with the most credit is
    // picked and pays the total. Over a cycle each gets picks in proportion to its weight, interleaved.
    private int RoundRobin(int n, double total)
    {
        int best = 0;
        for (int i = 0; i < n; i++)
        {
            _cand[i].RoundRobinCurrent += _w[i];
            if (_cand[i].RoundRobinCurrent > _cand[best].RoundRobinCurrent) best = i;
        }
        _cand[best].RoundRobinCurrent -= total;
        return best;
    }

    // The lowest score; among equal lowest ones, each with the same chance (reservoir sampling).
    private int LeastLoaded(int n, long now)
    {
        int best = 0, ties = 1;
        double bestScore = _cand[0].Score(now);
        for (int i = 1; i < n; i++)
        {
            double s = _cand[i].Score(now);
            int c = Compare(_cand[i], s, _cand[best], bestScore);
            if (c < 0) { best = i; bestScore = s; ties = 1; }
            else if (c == 0 && _random.Next(++ties) == 0) { best = i; bestScore = s; }
        }
        return best;
    }
}
