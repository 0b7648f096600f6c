using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;
using FastServe.Tests.Backends;
using NUnit.Framework;

namespace FastServe.Tests.Engine;

/// <summary>
/// How the executor drives a backend that records steps (<see cref="IStepRecorder"/>, the cuda backend's CUDA graphs),
/// checked on the CPU backend behind a recorder that keeps the contract: ops issued between BeginStep and the
/// readback are the recording, a replay whose ops differ from the recording is refused at its readback. Only decode
/// steps are recorded, each graph size (a batch padded with dummy sequences, or the exact size) once after a warm-up
/// run, replays carry the rest, a refused replay or capture falls back without changing a token, and --eager turns
/// it all off.
/// </summary>
[NonParallelizable]
public class EngineStepGraphTests : TinyCpuModelFixture
{
    private static List<(int[] Prompt, SamplingParams Sampling)> Requests(int n, bool sampled)
    {
        var r = new Random(21);
        return [.. Enumerable.Range(0, n).Select(i => (
            (int[])[.. Enumerable.Range(0, 2 + r.Next(20)).Select(_ => r.Next(1000, 90000))],
            new SamplingParams { MaxTokens = 12 + (i % 3) * 4, IgnoreEos = true, Temperature = sampled ? 0.8f : 0, TopP = 0.95f, Seed = sampled ? (ulong)i : null }))];
    }

    private static async Task<(RequestResult[] Results, ModelStepExecutor Executor)> Run(IBackend backend, List<(int[] Prompt, SamplingParams Sampling)> requests, bool graphs = true, bool pad = true)
    {
        var ex = new ModelStepExecutor(Model.Config, Model.Weights, backend, new ModelExecutorOptions { ContextLength = 256, KvBlocks = 128, StepGraphs = graphs, PadGraphBatches = pad });
        var engine = new InferenceEngine(ex, new EngineOptions { MaxBatchedTokens = 64, MaxSeqs = 16 });
        engine.Start();
        var handles = requests.Select(q => engine.Submit(new EngineRequest { Prompt = q.Prompt, Sampling = q.Sampling })).ToList();
        var results = await Task.WhenAll(handles.Select(h => h.Completion));
        engine.Dispose();
        ex.Dispose();
        foreach (var q in results) Assert.That(q.Status, Is.EqualTo(RequestStatus.Finished), $"{q.ErrorCode} {q.Message}");
        return (results, ex);
    }

    [TestCase(false, false)]
    [TestCase(true, false)]
    [TestCase(false, true)]
    [TestCase(true, true)]
    public async Task DecodeStepsAreRecordedOnceAndReplayedWithoutChangingATokenAsync(bool sampled, bool pad)
    {
        var requests = Requests(12, sampled);
        var (expected, _) = await Run(new GraphRecorder(Cpu), requests, graphs: false);
        var recorder = new GraphRecorder(Cpu);
        var (results, ex) = await Run(recorder, requests, pad: pad);
        for (int i = 0; i < requests.Count; i++) Assert.That(results[i].OutputTokens, Is.EqualTo(expected[i].OutputTokens), $"request {i}");

        Assert.That(recorder.MinAttentionBlocks, Is.EqualTo(256 / 16), "the table stride is fixed to the context's blocks");
        Assert.That(recorder.Captured, Is.Not.Empty);
        Assert.That(recorder.Captured, Has.All.Matches<(int Tokens, int Samples)>(c => c.Tokens == c.Samples), "only decode steps are recorded");
        Assert.That(recorder.Captured.Select(c => c.Samples), Is.Unique, "one recording per batch size");
        Assert.That(ex.GraphCaptures, Is.EqualTo(recorder.Captured.Count));
        Assert.That(ex.GraphReplays, Is.EqualTo(recorder.Replays).And.GreaterThan(ex.GraphCaptures), "replays carry most decode steps");
        Assert.That(ex.GraphFallbacks, Is.Zero);
        Assert.That(ex.KvSpec.NumBlocks, Is.EqualTo(128), "the scheduler sees the blocks it was given");
        if (pad)
        {
            Assert.That(recorder.Captured.Select(c => c.Samples), Is.SubsetOf(new[] { 1, 2, 4, 8, 16 }), "decode batches are padded to graph sizes");
            Assert.That(ex.GraphPadRows, Is.GreaterThan(0));
            Assert.That(recorder.MaxBlock, Is.EqualTo(128), "dummy sequences write only the block past the scheduler's");
        }
        else
        {
            Assert.That(ex.GraphPadRows, Is.Zero);
            Assert.That(recorder.MaxBlock, Is.LessThan(128));
        }
        TestContext.Out.WriteLine($"captures {ex.GraphCaptures} at {string.Join(",", recorder.Captured.Select(c => c.Samples).Order())}, replays {ex.GraphReplays}, pad rows {ex.GraphPadRows}, op-by-op decode steps {recorder.EagerDecodeSteps}");
    }

    [Test]
    public void GraphSizesAreOneTwoFourThenMultiplesOfEight()
    {
        int[] n = [1, 2, 3, 4, 5, 8, 9, 16, 17, 100, 250, 255, 256];
        int[] b = [1, 2, 4, 4, 8, 8, 16, 16, 24, 104, 256, 256, 256];
        Assert.That(n.Select(x => ModelStepExecutor.GraphBatchSize(x, 256)), Is.EqualTo(b));
        Assert.That(Enumerable.Range(1, 256).Select(x => ModelStepExecutor.GraphBatchSize(x, 256)).Distinct().Count(), Is.EqualTo(35));
        Assert.That(new[] { 16, 17, 19, 20 }.Select(x => ModelStepExecutor.GraphBatchSize(x, 20)), Is.EqualTo(new[] { 16, 20, 20, 20 }), "the largest batch is a size of its own");
        Assert.That(ModelStepExecutor.GraphBatchSize(5, 256, pad: false), Is.EqualTo(5));
    }

    [Test]
    public async Task RefusedReplaysAndCapturesFallBackAndStopBeingTried()
    {
        var requests = Requests(12, sampled: true);
        var (expected, _) = await Run(new GraphRecorder(Cpu), requests, graphs: false);
        var recorder = new GraphRecorder(Cpu) { RefuseReplays = true, RefuseEveryOtherCapture = true };
        var (results, ex) = await Run(recorder, requests);
        for (int i = 0; i < requests.Count; i++) Assert.That(results[i].OutputTokens, Is.EqualTo(expected[i].OutputTokens), $"request {i}");
        Assert.That(ex.GraphReplays, Is.Zero);
        Assert.That(ex.GraphFallbacks, Is.GreaterThan(0));
        int sizes = recorder.CaptureAttempts.Distinct().Count();
        Assert.That(recorder.CaptureAttempts.GroupBy(n => n).Select(g => g.Count()), Has.All.LessThanOrEqualTo(4), "a size refused again and again is no longer captured");
        Assert.That(sizes, Is.GreaterThan(0));
    }

    [Test]
    public async Task EagerRecordsNothing()
    {
        var recorder = new GraphRecorder(Cpu);
        var (_, ex) = await Run(recorder, Requests(6, sampled: false), graphs: false);
        Assert.That(recorder.CaptureAttempts, Is.Empty);
        Assert.That(ex.GraphCaptures + ex.GraphReplays, Is.Zero);
        Assert.That(recorder.MinAttentionBlocks, Is.Zero);
    }

    /// <summary>The CPU backend with the step-recording contract of a graph backend: ops always run (the CPU has no
    /// graphs), while the op sequence of a recorded or replayed step, up to its readback, is recorded and compared
    /// like a CUDA graph's signature; a replay that differs, or a refusal asked for, is refused at the readback, which
    /// then returns no tokens, as a device backend that ran nothing would. The policy (which step of a size records,
    /// which replays, when a size is given up) is the one every recorder shares, <see cref="StepRecordings{T}"/>.</summary>
    private sealed class GraphRecorder(IBackend inner) : ForwardingBackend(inner), IStepRecorder
    {
        private enum Mode { Normal, Capturing, Replaying }
        private readonly StepRecordings<Graph> _steps = new();
        private StepRecordings<Graph>.Plan _plan;
        private Mode _mode;
        private bool _inStep, _refused;
        private HashCode _sig;
        private Graph? _replaying, _captured;
        private int _tokens;

        public bool RefuseReplays, RefuseEveryOtherCapture;
        public readonly List<(int Tokens, int Samples)> Captured = [];
        public readonly List<int> CaptureAttempts = [];
        public int Replays, EagerDecodeSteps, MaxBlock = -1;

        public int MinAttentionBlocks { get; private set; }
        public override string Name => "cpu-graphs";
        public override bool SamplesOnDevice => true;

        public void StartStepRecording(int maxBlocksPerSequence)
        {
            _steps.Clear();
            MinAttentionBlocks = maxBlocksPerSequence;
        }

        public void StopStepRecording() => _steps.Clear();

        public bool BeginStep(int key)
        {
            if (_inStep) throw new InvalidOperationException("nested step");
            if (!_steps.Begin(key, out _plan, out var recording)) return false;
            _inStep = true;
            _refused = false;
            _captured = null;
            _replaying = recording;
            _mode = _plan switch { StepRecordings<Graph>.Plan.Record => Mode.Capturing, StepRecordings<Graph>.Plan.Replay => Mode.Replaying, _ => Mode.Normal };
            _sig = new HashCode();
            return true;
        }

        public StepOutcome EndStep()
        {
            if (!_inStep) throw new InvalidOperationException("no step");
            bool refused = _refused || _mode != Mode.Normal; // a step whose readback never came ran nothing
            _inStep = false;
            _refused = false;
            _mode = Mode.Normal;
            _replaying = null;
            var captured = _captured;
            _captured = null;
            return _steps.End(_plan, refused, captured);
        }

        public override void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens)
        {
            Sign("sample", logits.Rows);
            switch (_mode)
            {
                case Mode.Capturing:
                    CaptureAttempts.Add(rows.Length);
                    if (RefuseEveryOtherCapture && CaptureAttempts.Count % 2 == 1) _refused = true; // "the staging buffer would have to grow during a capture"
                    else
                    {
                        _captured = new Graph(_sig.ToHashCode());
                        Captured.Add((_tokens, rows.Length));
                    }
                    break;
                case Mode.Replaying:
                    if (RefuseReplays || _replaying!.Signature != _sig.ToHashCode()) _refused = true; // "the replayed step differs from the captured one"
                    else Replays++;
                    break;
                default:
                    if (_tokens == rows.Length) EagerDecodeSteps++;
                    break;
            }
            _mode = Mode.Normal;
            if (_refused) return;
            CounterSampler.SampleOnHost(Inner, logits, rows, tokens);
        }

        public override void CopyToHost(BackendTensor src, Span<float> dst)
        {
            if (_mode != Mode.Normal) throw new InvalidOperationException("this recorder ends steps at Sample only");
            Inner.CopyToHost(src, dst);
        }

        private void Sign(string op, int rows, int extra = 0)
        {
            if (_mode != Mode.Normal) _sig.Add((op, rows, extra));
        }

        public override void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst) { _tokens = tokens.Length; Sign("embedding", tokens.Length); Inner.Embedding(table, tokens, dst); }
        public override void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst) { Sign("rmsnorm", x.Rows); Inner.RmsNorm(x, gamma, eps, dst); }
        public override void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst) { Sign("addrmsnorm", x.Rows); Inner.AddRmsNorm(residual, x, gamma, eps, dst); }
        public override void Add(BackendTensor acc, BackendTensor x) { Sign("add", x.Rows); Inner.Add(acc, x); }
        public override void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst) { Sign("matmul", x.Rows, w.Rows); Inner.MatMul(x, w, dst); }
        public override void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope) { Sign("rope", x.Rows, heads); Inner.Rope(x, heads, positions, rope); }
        public override void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst) { Sign("silu", gate.Rows); Inner.SiluGate(gate, up, dst); }
        public override void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch)
        {
            Sign("kvstore", k.Rows, layer);
            for (int s = 0; s < batch.SequenceCount; s++) MaxBlock = Math.Max(MaxBlock, batch.BlockTable(s)[(batch.StartPos(s) + batch.RowCount(s) - 1) / cache.Spec.BlockSize]);
            Inner.KvStore(cache, layer, k, v, batch);
        }
        public override void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst) { Sign("attention", q.Rows, batch.SequenceCount); Inner.Attention(q, cache, layer, batch, dst); }
        public override void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst) { Sign("gather", rows.Length); Inner.GatherRows(src, rows, dst); }
        public override void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst) { Sign("upload", rows); Inner.CopyFromHost(data, rows, dst); }

        private sealed class Graph(int signature) : IDisposable
        {
            public int Signature { get; } = signature;
            public void Dispose() { }
        }
    }
}
