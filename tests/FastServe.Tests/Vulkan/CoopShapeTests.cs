using FastServe.Vulkan;
using NUnit.Framework;
using Silk.NET.Vulkan;

namespace FastServe.Tests.Vulkan;

/// <summary>Which VK_KHR_cooperative_matrix shape the backend's MatMul picks from a device's list
/// (<see cref="VulkanManager.PickCoopShape"/>): lists shaped like the ones NVIDIA, AMD and Intel drivers report, and
/// lists with nothing the shader can run.</summary>
public sealed class CoopShapeTests
{
    private const ComponentTypeKHR F16 = ComponentTypeKHR.Float16Khr, F32 = ComponentTypeKHR.Float32Khr;

    private static CooperativeMatrixPropertiesKHR Shape(uint m, uint n, uint k, ComponentTypeKHR ab = F16, ComponentTypeKHR c = F32,
        ScopeKHR scope = ScopeKHR.SubgroupKhr, bool saturating = false) => new()
    {
        SType = StructureType.CooperativeMatrixPropertiesKhr, MSize = m, NSize = n, KSize = k, AType = ab, BType = ab, CType = c,
        ResultType = c, Scope = scope, SaturatingAccumulation = saturating,
    };

    [Test]
    public void SixteenCubedIsPreferredWhereListed()
    {
        // NVIDIA lists F16 accumulators and int8 shapes before the F16 x F16 + F32 ones.
        CooperativeMatrixPropertiesKHR[] nvidia =
        [
            Shape(16, 8, 16, F16, F16), Shape(16, 8, 8), Shape(16, 16, 16, F16, F16),
            Shape(16, 8, 32, ComponentTypeKHR.Sint8Khr, ComponentTypeKHR.Sint32Khr), Shape(16, 16, 16),
        ];
        Assert.That(VulkanManager.PickCoopShape(nvidia), Is.EqualTo(new CoopMatrixShape(16, 16, 16)));
    }

    [Test]
    public void OtherwiseTheFirstThatFits()
    {
        CooperativeMatrixPropertiesKHR[] intel = [Shape(8, 8, 16, F16, F16), Shape(8, 16, 16), Shape(8, 8, 8)];
        Assert.That(VulkanManager.PickCoopShape(intel), Is.EqualTo(new CoopMatrixShape(8, 16, 16)));
    }

    [Test]
    public void NothingTheShaderCanRunIsNull()
    {
        CooperativeMatrixPropertiesKHR[] none =
        [
            Shape(16, 16, 16, F16, F16),                       // F16 accumulator
            Shape(16, 16, 16, scope: ScopeKHR.WorkgroupKhr),   // not subgroup scope
            Shape(16, 16, 16, saturating: true),
            Shape(64, 16, 16),                                  // beyond the shader's tiles
            Shape(12, 16, 16),                                  // not a multiple of 8
            Shape(16, 16, 16, ComponentTypeKHR.Float32Khr),     // F32 inputs
        ];
        Assert.That(VulkanManager.PickCoopShape(none), Is.Null);
        Assert.That(VulkanManager.PickCoopShape([]), Is.Null);
    }
}
