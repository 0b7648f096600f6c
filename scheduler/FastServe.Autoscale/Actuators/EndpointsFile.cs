using System.Text.Json;

namespace FastServe.Autoscale.Actuators;

/// <summary>
/// Writes the endpoints file a router's <c>file:PATH</c> source watches (docs/router.md):
/// <c>{"endpoints":[{"address":"host:port","weight":1}, ...]}</c>. Written to a temporary file beside it and renamed
/// over it, so a router polling the file never reads half of one.
/// </summary>
public static class EndpointsFile
{
    public static void Write(string path, IEnumerable<string> addresses)
    {
        string full = Path.GetFullPath(path);
        string tmp = Path.Combine(Path.GetDirectoryName(full) ?? ".", $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        using (var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("endpoints");
            foreach (var a in addresses)
            {
                w.WriteStartObject();
                w.WriteString("address", a);
                w.WriteNumber("weight", 1);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        File.Move(tmp, full, overwrite: true);
    }
}
