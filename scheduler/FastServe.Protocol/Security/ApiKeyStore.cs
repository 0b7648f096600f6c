using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;

namespace FastServe.Protocol.Security;

/// <summary>A configuration problem with a stable code (docs/errors.md) and a message that never quotes a key.</summary>
public readonly record struct SecurityError(string Code, string Message);

/// <summary>
/// What one key name has done since the process started (the label of the per-key metrics): connections whose HELLO
/// it authenticated and requests they sent. Counted lock-free; read at scrape time.
/// </summary>
public sealed class KeyUsage(string name)
{
    internal long ConnectionsField, RequestsField;

    /// <summary>The key's name (from the keys file or the environment).</summary>
    public string Name { get; } = name;
    /// <summary>Connections authenticated with a key of this name.</summary>
    public long Connections => Volatile.Read(ref ConnectionsField);
    /// <summary>REQUEST frames received on those connections.</summary>
    public long Requests => Volatile.Read(ref RequestsField);

    /// <summary>Counts one request (the session's hot path: one interlocked add).</summary>
    public void CountRequest() => Interlocked.Increment(ref RequestsField);
}

/// <summary>
/// The API keys a listener accepts (docs/security.md): named keys from a file (<c>--api-keys-file</c>, one
/// <c>name key</c> per line, <c>#</c> comments) and/or the environment variable <see cref="EnvVar"/>
/// (<c>name:key,name:key</c>). The file is polled once a second (modification time and size) and re-read when it
/// changes; a file that no longer parses leaves the previous set in force (one log line, <see cref="ReloadFailures"/>).
/// </summary>
/// <remarks>
/// <para>
/// Only SHA-256 digests of the keys are kept. <see cref="TryAuthenticate(ReadOnlySpan{byte}, out string)"/> hashes the
/// presented key and compares the digest with every stored one in constant time, with no early exit, so neither the
/// time taken nor which comparison matched depends on how much of a key was right or on which key it was.
/// </para>
/// <para>
/// Rules: names match <c>[A-Za-z0-9._-]{1,64}</c>; keys are 16 to 256 printable ASCII characters without spaces or
/// commas; two entries may share a name (rotation: old and new key side by side) but not a key; at least one key.
/// Nothing here ever logs or returns key material: messages name the file, the line number and the rule broken.
/// </para>
/// <para>Threads: the key set is an immutable array swapped whole by the poll timer; any thread may authenticate.</para>
/// </remarks>
public sealed class ApiKeyStore : IDisposable
{
    /// <summary>The environment variable with keys: <c>name:key,name:key</c>.</summary>
    public const string EnvVar = "FASTSERVE_API_KEYS";
    /// <summary>Shortest key accepted.</summary>
    public const int MinKeyLength = 16;
    /// <summary>Longest key accepted (also what a HELLO may carry).</summary>
    public const int MaxKeyLength = 256;
    /// <summary>Largest keys file read.</summary>
    public const int MaxFileBytes = 1 << 20;

    private readonly record struct Entry(string Name, byte[] Hash);

    private readonly PolledFile? _file;
    private readonly Entry[] _fixed;                 // from the environment (and extra keys): never reloaded
    private readonly Action<string> _log;
    private readonly Timer? _timer;
    private readonly ConcurrentDictionary<string, KeyUsage> _usage = new(StringComparer.Ordinal);
    private volatile Entry[] _keys;
    private long _reloads, _reloadFailures, _refusedMissing, _refusedInvalid;

    private ApiKeyStore(PolledFile? file, Entry[] fixedKeys, Entry[] fileKeys, Action<string> log)
    {
        _file = file;
        _fixed = fixedKeys;
        _log = log;
        _keys = [.. fixedKeys, .. fileKeys];
        if (file is not null) _timer = new Timer(static s => ((ApiKeyStore)s!).Poll(), this, 1000, 1000);
    }

    /// <summary>
    /// The keys from <paramref name="file"/> and/or <paramref name="env"/> (the value of <see cref="EnvVar"/>), plus
    /// <paramref name="extra"/> (keys a process adds for itself, like a supervisor's readiness probe). Null with no
    /// error when neither source is configured (no keys: nothing to enforce).
    /// </summary>
    /// <param name="log">Receives one line per reload outcome; never key material.</param>
    /// <param name="error">Why the keys cannot be used: <c>config.api_keys_missing</c> (the file cannot be read),
    /// <c>config.api_keys_invalid</c> (a line or an entry breaks a rule), <c>config.api_keys_empty</c>.</param>
    public static ApiKeyStore? Create(string? file, string? env, Action<string> log, out SecurityError? error,
        IReadOnlyList<(string Name, string Key)>? extra = null)
    {
        error = null;
        bool hasEnv = !string.IsNullOrWhiteSpace(env);
        if (file is null && !hasEnv) return null;
        var fixedPairs = new List<(string, string)>();
        if (hasEnv && !TryParseEnv(env!, fixedPairs, out var envError))
        {
            error = new SecurityError("config.api_keys_invalid", $"{EnvVar}: {envError}");
            return null;
        }
        if (extra is not null) fixedPairs.AddRange(extra);
        List<(string, string)> filePairs = [];
        PolledFile? polled = null;
        if (file is not null)
        {
            polled = new PolledFile(file);
            polled.Changed();
            if (!TryReadFile(file, out string? text, out var why))
            {
                error = new SecurityError("config.api_keys_missing", $"{file}: {why}");
                return null;
            }
            if (!TryParse(text!, filePairs, out var parseError))
            {
                error = new SecurityError("config.api_keys_invalid", $"{file}: {parseError}");
                return null;
            }
        }
        if (fixedPairs.Count + filePairs.Count == 0)
        {
            error = new SecurityError("config.api_keys_empty", file is not null ? $"{file}: the file holds no key" : $"{EnvVar} holds no key");
            return null;
        }
        Entry[] fixedKeys = Hash(fixedPairs), fileKeys = Hash(filePairs);
        if (FindDuplicate([.. fixedKeys, .. fileKeys]) is { } dup)
        {
            error = new SecurityError("config.api_keys_invalid", $"the keys named '{dup.Item1}' and '{dup.Item2}' are the same key");
            return null;
        }
        return new ApiKeyStore(polled, fixedKeys, fileKeys, log);
    }

    /// <summary>Always true: a store exists only when keys are configured, and configured keys are always enforced
    /// (on loopback too). The HTTP front door's <c>KeysRequired</c> hook.</summary>
    public bool Required => true;

    /// <summary>Keys in force now.</summary>
    public int Count => _keys.Length;

    /// <summary>Times the file was re-read and its keys put in force.</summary>
    public long Reloads => Volatile.Read(ref _reloads);

    /// <summary>Times a changed file was refused (the previous keys stayed).</summary>
    public long ReloadFailures => Volatile.Read(ref _reloadFailures);

    /// <summary>Connections refused for carrying no key.</summary>
    public long RefusedMissing => Volatile.Read(ref _refusedMissing);

    /// <summary>Connections refused for a key that is not in force.</summary>
    public long RefusedInvalid => Volatile.Read(ref _refusedInvalid);

    /// <summary>Per key name: connections and requests (a name appears once a connection used it).</summary>
    public IEnumerable<KeyUsage> Usage => _usage.Values;

    /// <summary>Counts a refusal (the listener that refused calls it): <paramref name="missing"/> for no key at all.</summary>
    public void CountRefusal(bool missing) => Interlocked.Increment(ref missing ? ref _refusedMissing : ref _refusedInvalid);

    /// <summary>
    /// Whether <paramref name="key"/> (UTF-8 bytes as presented) is a key in force; if so, its name. Constant time in
    /// the number of keys: every stored digest is compared, whichever matches.
    /// </summary>
    public bool TryAuthenticate(ReadOnlySpan<byte> key, out string name)
    {
        name = "";
        if (key.IsEmpty || key.Length > MaxKeyLength) return false;
        Span<byte> digest = stackalloc byte[32];
        SHA256.HashData(key, digest);
        var keys = _keys;
        int match = -1;
        for (int i = 0; i < keys.Length; i++)
        {
            bool eq = CryptographicOperations.FixedTimeEquals(digest, keys[i].Hash);
            match = eq ? i : match;
        }
        if (match < 0) return false;
        name = keys[match].Name;
        return true;
    }

    /// <summary><see cref="TryAuthenticate(ReadOnlySpan{byte}, out string)"/> for a key held as a string (an HTTP
    /// bearer token).</summary>
    public bool TryAuthenticate(string key, out string name)
    {
        name = "";
        if (string.IsNullOrEmpty(key) || key.Length > MaxKeyLength) return false;
        Span<byte> utf8 = stackalloc byte[MaxKeyLength * 3];
        int n = Encoding.UTF8.GetBytes(key, utf8);
        return TryAuthenticate(utf8[..n], out name);
    }

    /// <summary>The usage counters of <paramref name="name"/> (created on first use).</summary>
    public KeyUsage UsageOf(string name) => _usage.GetOrAdd(name, static n => new KeyUsage(n));

    /// <summary>Counts an authenticated connection and returns its name's counters (for its requests).</summary>
    public KeyUsage CountConnection(string name)
    {
        var u = UsageOf(name);
        Interlocked.Increment(ref u.ConnectionsField);
        return u;
    }

    /// <summary>Re-reads the file if it changed (the timer calls this every second; tests may call it directly).</summary>
    public void Poll()
    {
        var f = _file;
        if (f is null) return;
        lock (f)
        {
            if (!f.Changed()) return;
            string? error = null;
            List<(string, string)> pairs = [];
            if (!TryReadFile(f.Path, out string? text, out var why)) error = why;
            else if (!TryParse(text!, pairs, out var parseError)) error = parseError;
            else if (_fixed.Length + pairs.Count == 0) error = "the file holds no key";
            Entry[] fresh = error is null ? [.. _fixed, .. Hash(pairs)] : [];
            if (error is null && FindDuplicate(fresh) is { } dup) error = $"the keys named '{dup.Item1}' and '{dup.Item2}' are the same key";
            if (error is not null)
            {
                Interlocked.Increment(ref _reloadFailures);
                _log($"api keys file {f.Path}: {error}; keeping the previous {_keys.Length} key(s)");
                return;
            }
            _keys = fresh;
            Interlocked.Increment(ref _reloads);
            _log($"api keys file {f.Path}: reloaded, {_keys.Length} key(s) in force");
        }
    }

    /// <summary>
    /// Parses a keys file's text into <paramref name="into"/>: one <c>name key</c> per line (blanks or tabs between),
    /// blank lines and lines starting with <c>#</c> skipped. False with <paramref name="error"/> (line number and rule,
    /// never the key) at the first bad line.
    /// </summary>
    public static bool TryParse(string text, List<(string Name, string Key)> into, out string error)
    {
        error = "";
        int lineNo = 0;
        foreach (var raw in text.Split('\n'))
        {
            lineNo++;
            var line = raw.AsSpan().Trim();
            if (line.IsEmpty || line[0] == '#') continue;
            int sep = line.IndexOfAny(' ', '\t');
            if (sep < 0) { error = $"line {lineNo}: expected 'name key'"; return false; }
            var name = line[..sep];
            var key = line[(sep + 1)..].TrimStart();
            if (key.IndexOfAny(' ', '\t') >= 0) { error = $"line {lineNo}: expected 'name key' (a key has no spaces)"; return false; }
            if (CheckEntry(name, key) is { } why) { error = $"line {lineNo}: {why}"; return false; }
            into.Add((name.ToString(), key.ToString()));
        }
        return true;
    }

    /// <summary>Parses <see cref="EnvVar"/>'s value (<c>name:key,name:key</c>) into <paramref name="into"/>.</summary>
    public static bool TryParseEnv(string value, List<(string Name, string Key)> into, out string error)
    {
        error = "";
        int index = 0;
        foreach (var raw in value.Split(','))
        {
            index++;
            var item = raw.AsSpan().Trim();
            if (item.IsEmpty) continue;
            int sep = item.IndexOf(':');
            if (sep < 0) { error = $"entry {index}: expected 'name:key'"; return false; }
            if (CheckEntry(item[..sep], item[(sep + 1)..]) is { } why) { error = $"entry {index}: {why}"; return false; }
            into.Add((item[..sep].ToString(), item[(sep + 1)..].ToString()));
        }
        return true;
    }

    /// <summary>Null when <paramref name="name"/> and <paramref name="key"/> follow the rules, else which rule is broken.</summary>
    public static string? CheckEntry(ReadOnlySpan<char> name, ReadOnlySpan<char> key)
    {
        if (!IsValidName(name)) return "a key name has 1 to 64 letters, digits, '.', '_' or '-'";
        if (key.Length < MinKeyLength || key.Length > MaxKeyLength) return $"a key has {MinKeyLength} to {MaxKeyLength} characters";
        foreach (char c in key)
            if (c < 0x21 || c > 0x7E || c == ',') return "a key has only printable ASCII characters, without spaces or commas";
        return null;
    }

    /// <summary>True for a valid key name: <c>[A-Za-z0-9._-]{1,64}</c>.</summary>
    public static bool IsValidName(ReadOnlySpan<char> name)
    {
        if (name.Length is 0 or > 64) return false;
        foreach (char c in name)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-')) return false;
        return true;
    }

    private static bool TryReadFile(string path, out string? text, out string why)
    {
        text = null;
        why = "";
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists) { why = "the file does not exist"; return false; }
            if (info.Length > MaxFileBytes) { why = $"the file is over {MaxFileBytes} bytes"; return false; }
            text = File.ReadAllText(path, Encoding.UTF8);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            why = $"cannot read the file: {e.GetType().Name}";
            return false;
        }
    }

    // Two entries with the same key (found by digest, so no key is held here): the name would be ambiguous.
    private static (string, string)? FindDuplicate(Entry[] keys)
    {
        var seen = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var e in keys)
        {
            string digest = Convert.ToHexString(e.Hash);
            if (seen.TryGetValue(digest, out var other)) return (other, e.Name);
            seen[digest] = e.Name;
        }
        return null;
    }

    private static Entry[] Hash(List<(string Name, string Key)> pairs) =>
        [.. pairs.Select(p => new Entry(p.Name, SHA256.HashData(Encoding.ASCII.GetBytes(p.Key))))];

    /// <summary>Stops watching the file.</summary>
    public void Dispose() => _timer?.Dispose();
}
