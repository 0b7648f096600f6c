using System.Text;
using System.Text.Json;
using FastServe.Runtime;
using Spectre.Console;

namespace FastServe.Cli;

/// <summary>Terminal and JSON output shared by the commands.</summary>
internal static class Output
{
    /// <summary>True when progress bars make sense: a terminal on stderr-facing stdout and no --json.</summary>
    public static bool Interactive(bool json) => !json && !Console.IsOutputRedirected && !Console.IsErrorRedirected;

    public static int Fail(FastServeException e, bool json)
    {
        if (json)
        {
            WriteJson(w =>
            {
                w.WriteStartObject("error");
                w.WriteString("code", e.Code);
                w.WriteString("message", e.Message);
                if (e.Path is not null) w.WriteString("path", e.Path);
                w.WriteEndObject();
            });
        }
        Console.Error.WriteLine(e.ToString());
        return 1;
    }

    /// <summary>Writes one JSON object (indented) to stdout; <paramref name="body"/> writes its members.</summary>
    public static void WriteJson(Action<Utf8JsonWriter> body)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        Console.Out.WriteLine(Encoding.UTF8.GetString(ms.ToArray()));
    }

    /// <summary>Writes one JSON object on a single line to stdout (events a supervising program reads line by line).</summary>
    public static void WriteJsonLine(Action<Utf8JsonWriter> body)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        Console.Out.WriteLine(Encoding.UTF8.GetString(ms.ToArray()));
    }

    /// <summary>Runs <paramref name="work"/> with a progress bar on a terminal (Spectre.Console), or silently otherwise.
    /// The callback reports (done, total) in any unit.</summary>
    public static T WithProgress<T>(string label, bool json, Func<Action<long, long>, T> work)
    {
        if (!Interactive(json)) return work((_, _) => { });
        T result = default!;
        Err.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(label), maxValue: 1);
                result = work((done, total) =>
                {
                    if (total > 0) { task.MaxValue = total; task.Value = Math.Min(done, total); }
                });
                task.Value = task.MaxValue;
            });
        return result;
    }

    public static void WithProgress(string label, bool json, Action<Action<long, long>> work) =>
        WithProgress<int>(label, json, p => { work(p); return 0; });

    /// <summary>Diagnostics go to stderr so stdout carries only the command's result (text or JSON).</summary>
    public static readonly IAnsiConsole Err = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });

    public static void Info(bool json, string markup)
    {
        if (json) return;
        if (Console.IsErrorRedirected) Console.Error.WriteLine(Markup.Remove(markup));
        else Err.MarkupLine(markup);
    }

    public static string Bytes(long b) => b switch
    {
        >= 1L << 30 => $"{b / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{b / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{b / 1024.0:F1} KiB",
        _ => $"{b} B",
    };
}
