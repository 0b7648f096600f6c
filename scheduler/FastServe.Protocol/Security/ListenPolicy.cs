using System.Net;

namespace FastServe.Protocol.Security;

/// <summary>
/// The rule every listener (binary protocol and HTTP, replica and router) applies before it binds (docs/security.md):
/// a listener on a loopback address may run without keys; one that other hosts can reach must have keys, unless the
/// operator said <c>--insecure</c>. Configured keys are enforced wherever the listener binds.
/// </summary>
public static class ListenPolicy
{
    /// <summary>
    /// Null when a listener on <paramref name="bind"/> may start; else the refusal, code <c>config.keys_required</c>.
    /// <paramref name="flag"/> names the listener's address flag in the message (<c>--host</c>, <c>--http-listen</c>).
    /// </summary>
    public static SecurityError? Check(IPAddress bind, bool hasKeys, bool insecure, string flag = "--host")
    {
        ArgumentNullException.ThrowIfNull(bind);
        if (hasKeys || insecure || IPAddress.IsLoopback(bind)) return null;
        return new SecurityError("config.keys_required",
            $"{flag} {bind} is not a loopback address: configure API keys (--api-keys-file or {ApiKeyStore.EnvVar}), or pass --insecure to serve without them");
    }
}
