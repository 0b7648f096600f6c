return FastServe.Cli.CliApp.Run(args);
