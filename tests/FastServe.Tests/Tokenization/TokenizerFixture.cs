using System.Diagnostics;
using System.Text;
using FastServe.Runtime.Tokenization;
using Microsoft.ML.Tokenizers;
using NUnit.Framework;

namespace FastServe.Tests.Tokenization;

/// <summary>Writes the default tokenizer once for all tokenizer tests and removes the temp dirs afterwards.</summary>
[SetUpFixture]
public sealed class TokenizerFixture
{
    private static string? s_root;
    private static string? s_defaultDir;
    private static TextTokenizer? s_default;
    private static TiktokenTokenizer? s_cl100k;

    /// <summary>Multilingual texts every byte-level path must reproduce exactly.</summary>
    public static readonly string[] Texts =
    [
        "Hello, world! This is a test of the tokenizer.",
        "Grüße aus München: Äpfel, Öl und Übermut — schön, daß du da bist.",
        "我们今天去公园散步，天气很好。",
        "日本語のテキスト：カタカナとひらがな、漢字も。",
        "مرحبا بالعالم، كيف حالك اليوم؟",
        "Привет, мир! Как дела?",
        "नमस्ते दुनिया",
        "Emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 🇩🇪 done",
        "def square(x):\n    return x ** 2  # comment\n\n\tprint(square(12345))\n",
        "tabs\tand   runs of    spaces\n\n\n  and newlines\r\n\r\n end",
        "12345 1234567 3.14159 -42 1e10 0x1F",
        "it's I'M we'll they'd YOU'RE",
        "    leading and trailing    ",
        "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    ];

    public static string Root => s_root ?? throw new InvalidOperationException("fixture not set up");
    public static string DefaultDir => s_defaultDir ?? throw new InvalidOperationException("fixture not set up");
    public static TextTokenizer Default => s_default ?? throw new InvalidOperationException("fixture not set up");
    public static TiktokenTokenizer Cl100k => s_cl100k ??= TiktokenTokenizer.CreateForEncoding("cl100k_base");
    public static double WriteSeconds { get; private set; }
    public static double LoadSeconds { get; private set; }

    [OneTimeSetUp]
    public void WriteDefault()
    {
        s_root = Path.Combine(Path.GetTempPath(), "fastserve-tok-" + Guid.NewGuid().ToString("N"));
        s_defaultDir = Path.Combine(s_root, "default");
        var sw = Stopwatch.StartNew();
        DefaultTokenizer.Write(s_defaultDir);
        WriteSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();
        s_default = TextTokenizer.Load(s_defaultDir);
        LoadSeconds = sw.Elapsed.TotalSeconds;
        TestContext.Progress.WriteLine($"default tokenizer: Write {WriteSeconds:F2} s, Load {LoadSeconds:F2} s");
    }

    [OneTimeTearDown]
    public void Cleanup()
    {
        if (s_root is not null && Directory.Exists(s_root)) Directory.Delete(s_root, recursive: true);
    }

    /// <summary>A new empty directory under the fixture's temp root.</summary>
    public static string NewDir(string name)
    {
        string dir = Path.Combine(Root, name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>cl100k_base's ranks as a tiktoken rank file ("base64 rank" lines).</summary>
    public static void WriteCl100kRankFile(string path)
    {
        TiktokenRanks ranks = TiktokenLoader.LoadCl100k();
        var sb = new StringBuilder(ranks.Count * 12);
        for (int r = 0; r < ranks.Tokens.Length; r++)
        {
            if (ranks.Tokens[r] is byte[] t) sb.Append(Convert.ToBase64String(t)).Append(' ').Append(r).Append('\n');
        }
        File.WriteAllText(path, sb.ToString());
    }
}
