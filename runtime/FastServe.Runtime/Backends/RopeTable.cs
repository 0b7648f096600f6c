namespace FastServe.Runtime.Backends;

/// <summary>
/// Rotary embedding frequencies for one head size: invFreq[i] = theta^(-2i/headDim), i &lt; headDim/2,
/// optionally rescaled as Llama 3.1's <c>rope_scaling</c> of type <c>llama3</c> prescribes
/// (low-frequency bands divided by <c>factor</c>, high-frequency bands kept, a smooth blend between).
/// Angles are computed as float32 position · invFreq, as Hugging Face does, so results match it.
/// </summary>
public sealed class RopeTable
{
    public RopeTable(int headDim, double theta, RopeScaling? scaling = null)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException("head_dim must be a positive even number", nameof(headDim));
        HeadDim = headDim;
        var inv = new float[headDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            // Hugging Face: 1.0 / (base ** (arange(0, dim, 2, dtype=int64).float() / dim)), in float32.
            float exponent = (float)(2 * i) / headDim;
            inv[i] = 1.0f / MathF.Pow((float)theta, exponent);
        }
        if (scaling is { } s) Llama3Scale(inv, s);
        InvFreq = inv;
    }

    public int HeadDim { get; }

    /// <summary>headDim/2 inverse frequencies.</summary>
    public float[] InvFreq { get; }

    private static void Llama3Scale(float[] inv, RopeScaling s)
    {
        double lowFreqWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
        double highFreqWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
        for (int i = 0; i < inv.Length; i++)
        {
            double wavelen = 2 * Math.PI / inv[i];
            if (wavelen > lowFreqWavelen)
            {
                inv[i] = (float)(inv[i] / s.Factor);
            }
            else if (wavelen >= highFreqWavelen)
            {
                double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                inv[i] = (float)((1 - smooth) * inv[i] / s.Factor + smooth * inv[i]);
            }
        }
    }
}

/// <summary>Parameters of <c>rope_scaling</c> with <c>rope_type: "llama3"</c>.</summary>
public sealed record RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositionEmbeddings);
