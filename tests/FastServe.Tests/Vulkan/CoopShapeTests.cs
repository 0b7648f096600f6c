using FastServe.Vulkan;
using NUnit.Framework;
using Silk.NET.Vulkan;

namespace FastServe.Tests.Vulkan;

/// <summary>Which VK_KHR_cooperative_matrix shape the backend's MatMul picks from a device's list
/// (<see cref="VulkanManager.PickCoopShape"/>): lists shaped like the ones NVIDIA, AMD and Intel drivers report, and
/// lists with nothing the shader can run.</summary>
public sealed class CoopShapeTests
{
    private const uint NvidiaShared = 49152, LavapipeShared = 32768;
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
        Assert.That(VulkanManager.PickCoopShape(nvidia, 32, NvidiaShared), Is.EqualTo(new CoopMatrixShape(16, 16, 16, 32)));
    }

    [Test]
    public void OtherwiseTheFirstThatFits()
    {
        CooperativeMatrixPropertiesKHR[] intel = [Shape(8, 8, 16, F16, F16), Shape(8, 16, 16), Shape(8, 8, 8)];
        Assert.That(VulkanManager.PickCoopShape(intel, 32, NvidiaShared), Is.EqualTo(new CoopMatrixShape(8, 16, 16, 32)));
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
        Assert.That(VulkanManager.PickCoopShape(none, 32, NvidiaShared), Is.Null);
        Assert.That(VulkanManager.PickCoopShape([], 32, NvidiaShared), Is.Null);
    }

    [Test]
    public void TilesBeyondSharedMemoryAreSkipped()
    {
        // 32x32x32 needs 2·128·72·2 + 128·72·2 + 64·132·4 + 128·4 bytes, beyond 48 KiB; 16x16x16 needs 24,320.
        Assert.That(new CoopMatrixShape(32, 32, 32).SharedBytes, Is.EqualTo(89_600u));
        Assert.That(new CoopMatrixShape(16, 16, 16).SharedBytes, Is.EqualTo(24_320u));
        CooperativeMatrixPropertiesKHR[] big = [Shape(32, 32, 32), Shape(16, 16, 16)];
        Assert.That(VulkanManager.PickCoopShape(big, 8, LavapipeShared), Is.EqualTo(new CoopMatrixShape(16, 16, 16, 8)));
        Assert.That(VulkanManager.PickCoopShape([Shape(32, 32, 32)], 32, NvidiaShared), Is.Null);
        Assert.That(VulkanManager.PickCoopShape([Shape(16, 16, 16)], 32, 24_319), Is.Null);
    }

    [Test]
    public void SubgroupSizeIsThirtyTwoWhereAllowedElseTheNearestEnd()
    {
        Assert.That(CoopMatrixShape.SubgroupFor(32, 32), Is.EqualTo(32u));  // NVIDIA
        Assert.That(CoopMatrixShape.SubgroupFor(8, 32), Is.EqualTo(32u));   // Intel
        Assert.That(CoopMatrixShape.SubgroupFor(32, 64), Is.EqualTo(32u));  // AMD RDNA
        Assert.That(CoopMatrixShape.SubgroupFor(64, 64), Is.EqualTo(64u));  // AMD GCN
        Assert.That(CoopMatrixShape.SubgroupFor(8, 8), Is.EqualTo(8u));     // lavapipe, 256-bit
        Assert.That(CoopMatrixShape.SubgroupFor(4, 16), Is.EqualTo(16u));
        Assert.That(new CoopMatrixShape(16, 16, 16, 8).Threads, Is.EqualTo(32u));
    }
}
