namespace FastServe.Tests;

/// <summary>A kubeconfig naming one cluster at <c>http://127.0.0.1:PORT</c> (a test's fake API server) and one user
/// with a bearer token, its only context current.</summary>
internal static class KubeConfigFile
{
    public static string Write(string path, int port, string user, string token)
    {
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: fake
              cluster:
                server: http://127.0.0.1:{port}
            users:
            - name: {user}
              user:
                token: {token}
            contexts:
            - name: fake
              context:
                cluster: fake
                user: {user}
            current-context: fake
            """);
        return path;
    }
}
