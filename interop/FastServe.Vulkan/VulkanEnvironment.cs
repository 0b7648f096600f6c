using System.Runtime.CompilerServices;

[assembly: DisableRuntimeMarshalling]

namespace FastServe.Vulkan;

/// <summary>What <see cref="VulkanEnvironment.Check"/> found: the device the backend would use and its shader directory.</summary>
public sealed record VulkanSummary(VulkanFeatures Device, string ShaderDirectory);

/// <summary>
/// Finds out, without creating a logical device, whether a <see cref="VulkanBackend"/> could run here, so that
/// <c>serve --backend vulkan</c> fails in one line before loading a model. In order, throwing at the first that
/// fails: the shaders (<c>vulkan.no_shaders</c>, listing the places tried), the loader (<c>vulkan.no_loader</c>), an
/// instance and a device (<c>vulkan.no_device</c>), the device's baseline (<c>vulkan.unsupported_device</c>).
/// </summary>
public static class VulkanEnvironment
{
    /// <exception cref="VulkanException">vulkan.no_shaders, vulkan.no_loader, vulkan.no_device, vulkan.unsupported_device.</exception>
    public static VulkanSummary Check()
    {
        string dir = VulkanShaders.Directory();
        using var m = VulkanManager.Probe();
        return new VulkanSummary(m.Features, dir);
    }
}
