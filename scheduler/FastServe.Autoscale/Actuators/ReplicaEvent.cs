namespace FastServe.Autoscale.Actuators;

/// <summary>
/// Something that happened to one replica, for the autoscaler's event log: <c>replica.starting</c>,
/// <c>replica.ready</c>, <c>replica.start_failed</c>, <c>replica.draining</c>, <c>replica.stopped</c>,
/// <c>replica.killed</c> (did not stop within the stop timeout), <c>replica.exited</c> (ended without being asked).
/// </summary>
/// <param name="Event">One of the names above.</param>
/// <param name="Replica">Which: <c>host:port</c> for <c>local</c>.</param>
/// <param name="Pid">Its process, where there is one.</param>
/// <param name="Detail">Timings, exit codes, the tail of its stderr.</param>
public readonly record struct ReplicaEvent(string Event, string Replica, int? Pid, string Detail);
