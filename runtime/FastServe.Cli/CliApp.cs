namespace FastServe.Cli;

internal static class CliApp
{
    public static int Run(string[] args)
    {
        Console.WriteLine("fastserve");
        return 0;
    }
}
