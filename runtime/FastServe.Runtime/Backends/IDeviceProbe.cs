namespace FastServe.Runtime.Backends;

/// <summary>A backend whose tensors live in a device's own memory (a GPU) measures that memory, the reference point
/// of a bandwidth-bound decode step, instead of the host's (<c>bench-model</c>).</summary>
public interface IDeviceProbe
{
    /// <summary>Device-to-device copy bandwidth in bytes per second (bytes read plus bytes written, as a decode step
    /// reads weights), measured now over a buffer much larger than the device's caches.</summary>
    double MeasureCopyBandwidth();
}
