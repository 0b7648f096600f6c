using System.Net;
using System.Net.Sockets;
using System.Text;

namespace FastServe.Server.Engine;

/// <summary>
/// HAProxy agent-check responder: for every connection, writes one ASCII line (e.g. <c>up ready 75% maxconn:512</c>,
/// <c>drain</c>, <c>down #starting</c>) and closes. Whatever the agent sends is ignored. ../shared docs and
/// docs/server.md describe the words.
/// </summary>
internal sealed class AgentCheckServer : IDisposable
{
    private readonly TcpListener _listener;
    private readonly Func<string> _line;

    public AgentCheckServer(string host, int port, Func<string> line)
    {
        _line = line;
        _listener = new TcpListener(IPAddress.Parse(host), port);
        _listener.Start(64);
        _ = AcceptLoop();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    private async Task AcceptLoop()
    {
        while (true)
        {
            Socket s;
            try { s = await _listener.AcceptSocketAsync().ConfigureAwait(false); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException) { return; }
            _ = Answer(s);
        }
    }

    private async Task Answer(Socket s)
    {
        try
        {
            using (s)
            {
                await s.SendAsync(Encoding.ASCII.GetBytes(_line()), SocketFlags.None).ConfigureAwait(false);
                s.Shutdown(SocketShutdown.Send);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    public void Dispose() => _listener.Stop();
}
