using FastServe.Runtime;
using Silk.NET.Vulkan;

namespace FastServe.Vulkan;

/// <summary>
/// A Vulkan failure with a stable <see cref="FastServeException.Code"/> (docs/vulkan.md, docs/errors.md):
/// <c>vulkan.no_loader</c> (libvulkan.so.1 missing), <c>vulkan.no_device</c> (no usable physical device, or no
/// driver: VK_ERROR_INCOMPATIBLE_DRIVER, VK_ERROR_INITIALIZATION_FAILED at instance creation),
/// <c>vulkan.no_shaders</c> (no directory with the SPIR-V files), <c>vulkan.unsupported_device</c> (a device without the
/// baseline: Vulkan 1.1 and a compute queue), <c>vulkan.device_lost</c>, <c>vulkan.out_of_memory</c> (device or host
/// memory exhausted) and <c>vulkan.error</c> (any other VkResult). <see cref="Call"/> is the Vulkan function that
/// failed and <see cref="Result"/> its VkResult (0 for failures that are not a VkResult).
/// </summary>
public sealed class VulkanException : FastServeException
{
    public VulkanException(string code, string message, string call = "", Result result = Result.Success)
        : base(code, message, "vulkan")
    {
        Call = call;
        Result = result;
    }

    /// <summary>The Vulkan function that failed, or "".</summary>
    public string Call { get; }

    /// <summary>The VkResult it returned.</summary>
    public Result Result { get; }

    /// <summary>Maps a failing VkResult to its stable code.</summary>
    internal static string CodeOf(Result r) => r switch
    {
        Result.ErrorDeviceLost => "vulkan.device_lost",
        Result.ErrorOutOfDeviceMemory or Result.ErrorOutOfHostMemory or Result.ErrorOutOfPoolMemory
            or Result.ErrorFragmentedPool or Result.ErrorFragmentation => "vulkan.out_of_memory",
        Result.ErrorIncompatibleDriver or Result.ErrorInitializationFailed => "vulkan.no_device",
        _ => "vulkan.error",
    };

    /// <summary>The exception for <paramref name="call"/> returning <paramref name="r"/>.</summary>
    internal static VulkanException From(string call, Result r) => new(CodeOf(r), $"{call} failed: {r}", call, r);

    /// <summary>Throws unless <paramref name="r"/> is Success.</summary>
    internal static void Check(Result r, string call)
    {
        if (r != Result.Success) throw From(call, r);
    }
}
