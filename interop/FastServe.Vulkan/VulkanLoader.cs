using System.Runtime.InteropServices;
using Silk.NET.Core.Contexts;
using Silk.NET.Vulkan;

namespace FastServe.Vulkan;

/// <summary>
/// Binds Silk.NET's <see cref="Vk"/> to the system's Vulkan loader, <c>libvulkan.so.1</c> (then <c>libvulkan.so</c>), by
/// <see cref="NativeLibrary"/>. <see cref="Vk.GetApi()"/> is not used: its default path resolver walks assembly
/// locations and the deps.json through reflection, which NativeAOT warns about (IL3000/IL3002) and which has nothing
/// to find in a single-file executable anyway. Every Vulkan function is taken from the loader's exports (the loader
/// exports all core 1.0–1.3 entry points and dispatches them to the driver); no extension functions are called.
/// Loaded once per process.
/// </summary>
internal static class VulkanLoader
{
    private static readonly Lock Gate = new();
    private static Vk? _vk;
    private static string? _failure;

    /// <summary>The bound API.</summary>
    /// <exception cref="VulkanException"><c>vulkan.no_loader</c>, naming every file tried.</exception>
    public static Vk Api()
    {
        lock (Gate)
        {
            if (_vk is not null) return _vk;
            if (_failure is not null) throw NoLoader(_failure);
            var tried = new List<string>();
            foreach (var name in (string[])["libvulkan.so.1", "libvulkan.so"])
            {
                if (NativeLibrary.TryLoad(name, out nint lib))
                {
                    _vk = new Vk(new LamdaNativeContext(f => NativeLibrary.TryGetExport(lib, f, out nint p) ? p : 0));
                    return _vk;
                }
                tried.Add(name);
            }
            _failure = string.Join(", ", tried);
            throw NoLoader(_failure);
        }
    }

    private static VulkanException NoLoader(string tried) =>
        new("vulkan.no_loader", $"no Vulkan loader: could not load {tried} (install libvulkan1 and a driver, e.g. mesa-vulkan-drivers)");
}
