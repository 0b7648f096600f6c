using System.CommandLine;
using FastServe.Client;
using FastServe.Runtime;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve admin COMMAND...</c>: sends one ADMIN command to a router (docs/router.md, "Admin commands") —
/// traffic splits, shadows, tiers, burst modes, status — and prints its JSON answer.
/// </summary>
internal static class AdminCommand
{
    public static Command Create()
    {
        var host = ClientCommand.HostOption();
        var port = new Option<int>("--port") { Description = "Router TCP port", DefaultValueFactory = _ => 7800 };
        var tokenFile = new Option<string?>("--admin-token-file") { Description = "File holding the router's admin token (or set FASTSERVE_ADMIN_TOKEN)" };
        var words = new Argument<string[]>("command") { Description = "The command: status | split MODEL V=W,V=W[;sticky] | split MODEL off | shadow MODEL VERSION PERCENT | shadow MODEL off | tier NAME CHEAP[@V] STRONG[@V] THRESHOLD | tier NAME off | mode normal|surge|emergency|auto", Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("admin", "Change a router's traffic rules at run time (splits, shadows, tiers, burst mode) or read them (status).");
        foreach (Option o in new Option[] { host, port, tokenFile }) cmd.Add(o);
        cmd.Add(words);
        var security = new ClientSecurityOptions();
        security.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            var (apiKey, tls) = security.Read(r);
            string? token = Environment.GetEnvironmentVariable("FASTSERVE_ADMIN_TOKEN");
            if (r.GetValue(tokenFile) is { } tf)
            {
                if (!File.Exists(tf)) throw new FastServeException("args.admin_token_file_missing", "the admin token file does not exist", tf);
                token = File.ReadAllText(tf).Trim();
            }
            if (string.IsNullOrEmpty(token))
                throw new FastServeException("args.admin_token_missing", "give the router's admin token with --admin-token-file or FASTSERVE_ADMIN_TOKEN", "--admin-token-file");
            string h = r.GetValue(host)!;
            int p = ClientCommand.ParsePort(r.GetValue(port));
            await using var client = await ClientCommand.Connect(h, p, new FastServeClientOptions { ClientName = "fastserve-admin", ApiKey = apiKey, Tls = tls }, ct);
            string answer;
            try
            {
                answer = await client.AdminAsync(token, string.Join(' ', r.GetValue(words)!), ct);
            }
            catch (FastServeClientException e)
            {
                throw new FastServeException(e.Code, e.Message, $"{h}:{p}");
            }
            Console.Out.WriteLine(answer);
            return 0;
        });
        return cmd;
    }
}
