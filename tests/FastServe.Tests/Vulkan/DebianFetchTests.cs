using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using NUnit.Framework;

namespace FastServe.Tests.Vulkan;

/// <summary>
/// tools/debian-fetch.sh against a mirror made here and served on loopback (python3's http.server): two suites read
/// as one index, the newest version of a package winning whichever suite holds it; an InRelease past its Valid-Until
/// refused when nothing verified is cached, and the cached set reused when one is. The mirror is unsigned, so the
/// harness runs with FASTSERVE_DEBIAN_UNSIGNED=1 (what it tests is after the signature check).
/// </summary>
[NonParallelizable]
public sealed class DebianFetchTests
{
    private string _dir = "";
    private Process? _server;
    private string _mirror = "";

    [SetUp]
    public void StartMirror()
    {
        _dir = TestModels.TempDir("debfetch");
        Directory.CreateDirectory(Path.Combine(_dir, "mirror"));
        var psi = new ProcessStartInfo("python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", Path.Combine(_dir, "mirror"), "0" })
            psi.ArgumentList.Add(a);
        _server = Process.Start(psi)!;
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        string? line = _server.StandardOutput.ReadLine();
        var m = System.Text.RegularExpressions.Regex.Match(line ?? "", @"port (\d+)");
        Assert.That(m.Success, Is.True, $"python3 http.server said: {line}");
        _mirror = $"http://127.0.0.1:{m.Groups[1].Value}";
        _server.StandardError.ReadToEndAsync();
    }

    [TearDown]
    public void StopMirror()
    {
        if (_server is { HasExited: false }) _server.Kill(true);
        _server?.Dispose();
    }

    // One package "pkg" of VERSION in SUITE's pool and index, and SUITE's InRelease naming the index's SHA256.
    private void Suite(string suite, string version, DateTime validUntil)
    {
        string mirror = Path.Combine(_dir, "mirror");
        string pool = $"pool/main/p/pkg/pkg_{version}_all.deb";
        Directory.CreateDirectory(Path.Combine(mirror, Path.GetDirectoryName(pool)!));
        byte[] deb = Encoding.ASCII.GetBytes($"not really a deb: pkg {version}\n");
        File.WriteAllBytes(Path.Combine(mirror, pool), deb);
        string index = $"Package: pkg\nVersion: {version}\nArchitecture: all\nFilename: {pool}\nSize: {deb.Length}\n" +
                       $"SHA256: {Convert.ToHexStringLower(SHA256.HashData(deb))}\n\n";
        string dists = Path.Combine(mirror, "dists", suite, "main", "binary-amd64");
        Directory.CreateDirectory(dists);
        // Packages.xz: xz from the system (the harness decompresses with it too).
        File.WriteAllText(Path.Combine(dists, "Packages"), index);
        using (var xz = Process.Start(new ProcessStartInfo("xz", ["-kf", Path.Combine(dists, "Packages")]))!) xz.WaitForExit();
        byte[] packed = File.ReadAllBytes(Path.Combine(dists, "Packages.xz"));
        string release = $"Codename: {suite}\nDate: {DateTime.UtcNow:R}\nValid-Until: {validUntil:R}\nSHA256:\n" +
                         $" {Convert.ToHexStringLower(SHA256.HashData(packed))} {packed.Length} main/binary-amd64/Packages.xz\n";
        string signed = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + release +
                        "-----BEGIN PGP SIGNATURE-----\n\nnot a signature\n-----END PGP SIGNATURE-----\n";
        File.WriteAllText(Path.Combine(mirror, "dists", suite, "InRelease"), signed);
    }

    // Sources debian-fetch.sh, wants pkg (newest across the suites), "unpacks" it by copying; prints what it did.
    private (int Code, string Out, string Err) Fetch(string suites, string cache)
    {
        string harness = Path.Combine(_dir, "harness.sh");
        File.WriteAllText(harness, $$"""
            set -uo pipefail
            deb_name=harness
            . "{{Path.Combine(TestModels.RepoRoot, "tools", "debian-fetch.sh")}}"
            deb_init "$1" "$2" main/binary-amd64/Packages.xz
            pick() { deb_closure pkg; }
            unpack() { local pkg; for pkg in "${!deb_file[@]}"; do cp "${deb_file[$pkg]}" "$1/"; done; }
            deb_fetch "$deb_dir/root" 1 pick unpack
            echo "offline=$deb_offline"
            cat "$deb_dir"/root/*.deb
            """);
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { harness, cache, suites }) psi.ArgumentList.Add(a);
        psi.Environment["FASTSERVE_DEBIAN_MIRROR"] = _mirror;
        psi.Environment["FASTSERVE_DEBIAN_UNSIGNED"] = "1";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(1))) { p.Kill(true); Assert.Fail("debian-fetch harness timed out"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Test]
    public void TwoSuitesAreOneIndexAndTheNewestVersionWins()
    {
        Suite("stable-backports", "2.0-1~bpo", DateTime.UtcNow.AddDays(7));
        Suite("stable", "1.0-1", DateTime.UtcNow.AddDays(7));
        var r = Fetch("stable-backports stable", Path.Combine(_dir, "cache"));
        Assert.That(r.Code, Is.Zero, r.Err + r.Out);
        Assert.That(r.Out, Does.Contain("offline=0").And.Contain("pkg 2.0-1~bpo").And.Not.Contain("pkg 1.0-1"), r.Err);

        Suite("stable", "3.0-1", DateTime.UtcNow.AddDays(7)); // a point release overtakes the backport
        r = Fetch("stable-backports stable", Path.Combine(_dir, "cache"));
        Assert.That(r.Code, Is.Zero, r.Err + r.Out);
        Assert.That(r.Out, Does.Contain("pkg 3.0-1").And.Not.Contain("pkg 2.0"), r.Err);
    }

    [Test]
    public void AnExpiredIndexIsRefusedUnlessAVerifiedSetIsCached()
    {
        Suite("stable-backports", "2.0-1~bpo", DateTime.UtcNow.AddDays(-1));
        Suite("stable", "1.0-1", DateTime.UtcNow.AddDays(7));
        var r = Fetch("stable-backports stable", Path.Combine(_dir, "empty"));
        Assert.That(r.Code, Is.EqualTo(5), r.Err + r.Out); // signature
        Assert.That(r.Out.Trim(), Does.StartWith("harness: FAIL (signature): stable-backports's InRelease expired").And.Contain("no verified set is cached"));

        Suite("stable-backports", "2.0-1~bpo", DateTime.UtcNow.AddDays(7));
        string cache = Path.Combine(_dir, "cache");
        Assert.That(Fetch("stable-backports stable", cache).Code, Is.Zero);
        Suite("stable-backports", "2.1-1~bpo", DateTime.UtcNow.AddDays(-1)); // a newer package in an expired (replayable) index
        r = Fetch("stable-backports stable", cache);
        Assert.That(r.Code, Is.Zero, r.Err + r.Out);
        Assert.That(r.Out, Does.Contain("offline=1").And.Contain("pkg 2.0-1~bpo").And.Not.Contain("2.1"), "the verified set, nothing from the expired index");
        Assert.That(r.Err, Does.Contain("InRelease expired").And.Contain("reusing the toolkit verified on"));
    }
}
