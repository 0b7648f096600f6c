using System.Runtime.InteropServices;
using Silk.NET.Vulkan;

namespace FastServe.Vulkan;

/// <summary>What a physical device offers the backend, probed at device choice. Only the Vulkan 1.1 baseline and a
/// compute queue are required; the rest is reported (docs/vulkan.md) and picks faster paths where they exist.</summary>
/// <param name="Name">The driver's device name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".</param>
/// <param name="Type">Discrete, integrated, virtual GPU or CPU (lavapipe).</param>
/// <param name="ApiVersion">The device's Vulkan version, packed (VK_MAKE_API_VERSION).</param>
/// <param name="StorageBuffer8Bit">storageBuffer8BitAccess (Vulkan 1.2 / VK_KHR_8bit_storage).</param>
/// <param name="StorageBuffer16Bit">storageBuffer16BitAccess (Vulkan 1.1 / VK_KHR_16bit_storage).</param>
/// <param name="ShaderInt8">shaderInt8 (Vulkan 1.2 / VK_KHR_shader_float16_int8).</param>
/// <param name="ShaderFloat16">shaderFloat16 (Vulkan 1.2 / VK_KHR_shader_float16_int8).</param>
/// <param name="SubgroupSize">Threads per subgroup (32 on NVIDIA, 64 on AMD GCN, 8 on lavapipe with AVX2).</param>
/// <param name="SubgroupArithmetic">Subgroup add/max reductions in compute shaders.</param>
/// <param name="CooperativeMatrix">The VK_KHR_cooperative_matrix shape MatMul's tensor-core shader runs with, where the
/// device can run it (<see cref="CoopMatrixShape"/>); null otherwise, and <paramref name="CooperativeMatrixNote"/> says why.</param>
/// <param name="CooperativeMatrixNote">"no" (not offered), or what an offering device lacks for the shader.</param>
/// <param name="MaxStorageBufferRange">Largest storage-buffer binding, bytes: the largest tensor or weight.</param>
public sealed record VulkanFeatures(string Name, PhysicalDeviceType Type, uint ApiVersion, bool StorageBuffer8Bit, bool StorageBuffer16Bit,
    bool ShaderInt8, bool ShaderFloat16, uint SubgroupSize, bool SubgroupArithmetic, CoopMatrixShape? CooperativeMatrix,
    string CooperativeMatrixNote, ulong MaxStorageBufferRange)
{
    /// <summary>"1.3.255"-style version.</summary>
    public string Version => $"{ApiVersion >> 22}.{(ApiVersion >> 12) & 0x3FF}.{ApiVersion & 0xFFF}";

    /// <summary>One line for logs and check-backend's header.</summary>
    public override string ToString() =>
        $"{Name} ({Type}, Vulkan {Version}; 8-bit storage {YesNo(StorageBuffer8Bit)}, 16-bit storage {YesNo(StorageBuffer16Bit)}, " +
        $"int8 {YesNo(ShaderInt8)}, float16 {YesNo(ShaderFloat16)}, subgroup {SubgroupSize}{(SubgroupArithmetic ? " with arithmetic" : "")}, " +
        $"cooperative matrix {(CooperativeMatrix is { } c ? c.ToString() : CooperativeMatrixNote)})";

    private static string YesNo(bool b) => b ? "yes" : "no";
}

/// <summary>A cooperative-matrix shape (M × N × K) with F16 A and B, F32 accumulator and result, at subgroup scope, and
/// the subgroup size: what matmul_coopmat.comp multiplies with, in workgroups of 4 full subgroups of
/// <paramref name="Subgroup"/> threads (the size its pipeline requires).</summary>
public readonly record struct CoopMatrixShape(uint M, uint N, uint K, uint Subgroup = 32)
{
    /// <summary>Threads per workgroup: 4 subgroups (2 x 2 over the output block).</summary>
    public uint Threads => 4 * Subgroup;

    /// <summary>Shared memory the shader declares with this shape, bytes (its arrays, as sized there): the split
    /// activation block and the weight block, F16 with lines of 2K + 8; half the output block, F32 with lines of 4N + 4;
    /// one F32 scale per row.</summary>
    public uint SharedBytes
    {
        get
        {
            uint bm = 4 * M, bn = 4 * N, ld = 2 * K + 8;
            return 2 * bm * ld * 2 + bn * ld * 2 + bm / 2 * (bn + 4) * 4 + bm * 4;
        }
    }

    /// <summary>The subgroup size the shader asks for on a device whose compute pipelines can require any power of two
    /// in [<paramref name="min"/>, <paramref name="max"/>]: 32 (NVIDIA's, and Intel's and AMD's widest common one)
    /// where allowed, else the nearest end (8 on lavapipe with AVX2, 64 on AMD GCN).</summary>
    public static uint SubgroupFor(uint min, uint max) => Math.Clamp(32u, min, Math.Max(min, max));

    public override string ToString() => $"{M}x{N}x{K} f16 on subgroups of {Subgroup}";
}

/// <summary>
/// Kompute's manager: owns the Vulkan instance, the chosen physical device, the logical device and its compute queue,
/// and knows the device's memory types and limits. Device choice: <c>$FASTSERVE_VULKAN_DEVICE</c> (an index into the
/// instance's physical devices) when set; otherwise the first discrete GPU, then integrated, virtual, and last a CPU
/// implementation (lavapipe), among devices with Vulkan 1.1 and a compute queue. No optional feature is needed: the
/// shaders read 8- and 16-bit data as uint words, so they run on the baseline; the cooperative-matrix MatMul's
/// extension and features are enabled only on a device that can run it (<see cref="VulkanFeatures.CooperativeMatrix"/>).
/// </summary>
public sealed unsafe class VulkanManager : IDisposable
{
    public const string DeviceVariable = "FASTSERVE_VULKAN_DEVICE";
    private const uint Api11 = (1u << 22) | (1u << 12);

    private readonly PhysicalDeviceMemoryProperties _memory;
    // Buffers not yet disposed: freed before the device at Dispose (a buffer must not outlive its device).
    private readonly HashSet<VulkanBuffer> _live = new(ReferenceEqualityComparer.Instance);
    private bool _disposed;

    private VulkanManager(Vk vk, Instance instance, PhysicalDevice physical, VulkanFeatures features, uint queueFamily)
    {
        Vk = vk;
        Instance = instance;
        Physical = physical;
        Features = features;
        QueueFamily = queueFamily;
        PhysicalDeviceMemoryProperties mem;
        vk.GetPhysicalDeviceMemoryProperties(physical, &mem);
        _memory = mem;
        PhysicalDeviceProperties props;
        vk.GetPhysicalDeviceProperties(physical, &props);
        Limits = props.Limits;
    }

    public Vk Vk { get; }
    public Instance Instance { get; }
    public PhysicalDevice Physical { get; }
    public Device Device { get; private set; }
    public Queue Queue { get; private set; }
    public uint QueueFamily { get; }
    public VulkanFeatures Features { get; }
    public PhysicalDeviceLimits Limits { get; }

    /// <summary>Loads the loader, creates the instance and picks a device (<see cref="Probe"/>), then creates the
    /// logical device with one compute queue.</summary>
    /// <exception cref="VulkanException">vulkan.no_loader, vulkan.no_device, vulkan.unsupported_device,
    /// vulkan.out_of_memory, vulkan.error.</exception>
    public static VulkanManager Create()
    {
        var m = Probe();
        try
        {
            m.CreateDevice();
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Instance and device choice only, no logical device: what <see cref="VulkanEnvironment.Check"/> needs.</summary>
    internal static VulkanManager Probe()
    {
        var vk = VulkanLoader.Api();
        // The highest version the backend uses (1.3 where the cooperative-matrix path runs); a device below it still
        // works at its own version, and devices below 1.1 are refused at device choice.
        var app = new ApplicationInfo { SType = StructureType.ApplicationInfo, ApiVersion = Api13 };
        var ci = new InstanceCreateInfo { SType = StructureType.InstanceCreateInfo, PApplicationInfo = &app };
        Instance instance;
        var r = vk.CreateInstance(&ci, null, &instance);
        if (r != Result.Success)
        {
            string code = VulkanException.CodeOf(r) is "vulkan.out_of_memory" ? "vulkan.out_of_memory" : "vulkan.no_device";
            throw new VulkanException(code, $"vkCreateInstance failed: {r} (no Vulkan driver installed? mesa-vulkan-drivers provides lavapipe){IcdNote()}", "vkCreateInstance", r);
        }
        try
        {
            var (physical, features, family) = Choose(vk, instance);
            return new VulkanManager(vk, instance, physical, features, family);
        }
        catch
        {
            vk.DestroyInstance(instance, null);
            throw;
        }
    }

    private static (PhysicalDevice, VulkanFeatures, uint) Choose(Vk vk, Instance instance)
    {
        uint count = 0;
        VulkanException.Check(vk.EnumeratePhysicalDevices(instance, &count, null), "vkEnumeratePhysicalDevices");
        if (count == 0) throw new VulkanException("vulkan.no_device", $"the Vulkan loader sees no device{IcdNote()}");
        var devices = new PhysicalDevice[count];
        fixed (PhysicalDevice* p = devices) VulkanException.Check(vk.EnumeratePhysicalDevices(instance, &count, p), "vkEnumeratePhysicalDevices");

        var usable = new List<(int Index, PhysicalDevice Device, VulkanFeatures Features, uint Family)>();
        var refused = new List<string>();
        for (int i = 0; i < (int)count; i++)
        {
            var f = ProbeFeatures(vk, instance, devices[i]);
            if (f.ApiVersion < Api11)
            {
                refused.Add($"{i}: {f.Name} has Vulkan {f.Version}, below 1.1");
                continue;
            }
            int family = ComputeFamily(vk, devices[i]);
            if (family < 0)
            {
                refused.Add($"{i}: {f.Name} has no compute queue");
                continue;
            }
            usable.Add((i, devices[i], f, (uint)family));
        }

        if (Environment.GetEnvironmentVariable(DeviceVariable) is { Length: > 0 } v)
        {
            if (!int.TryParse(v, out int want) || want < 0 || want >= count)
                throw new VulkanException("vulkan.no_device", $"{DeviceVariable}={v} is not a device index (0..{count - 1})");
            foreach (var u in usable)
            {
                if (u.Index == want) return (u.Device, u.Features, u.Family);
            }
            throw new VulkanException("vulkan.unsupported_device", $"{DeviceVariable}={v}: {string.Join("; ", refused)}");
        }
        if (usable.Count == 0) throw new VulkanException("vulkan.unsupported_device", $"no Vulkan device has the baseline (Vulkan 1.1, a compute queue): {string.Join("; ", refused)}");
        foreach (var type in (PhysicalDeviceType[])[PhysicalDeviceType.DiscreteGpu, PhysicalDeviceType.IntegratedGpu, PhysicalDeviceType.VirtualGpu])
        {
            foreach (var u in usable)
            {
                if (u.Features.Type == type) return (u.Device, u.Features, u.Family);
            }
        }
        return (usable[0].Device, usable[0].Features, usable[0].Family);
    }

    private static int ComputeFamily(Vk vk, PhysicalDevice d)
    {
        uint n = 0;
        vk.GetPhysicalDeviceQueueFamilyProperties(d, &n, null);
        var families = new QueueFamilyProperties[n];
        fixed (QueueFamilyProperties* p = families) vk.GetPhysicalDeviceQueueFamilyProperties(d, &n, p);
        for (int i = 0; i < families.Length; i++)
        {
            if ((families[i].QueueFlags & QueueFlags.ComputeBit) != 0) return i;
        }
        return -1;
    }

    private static VulkanFeatures ProbeFeatures(Vk vk, Instance instance, PhysicalDevice d)
    {
        PhysicalDeviceProperties props;
        vk.GetPhysicalDeviceProperties(d, &props);
        string name = Marshal.PtrToStringUTF8((nint)props.DeviceName) ?? "?";
        if (props.ApiVersion < Api11)
            return new VulkanFeatures(name, props.DeviceType, props.ApiVersion, false, false, false, false, 0, false, null, "no", props.Limits.MaxStorageBufferRange);

        var extensions = Extensions(vk, d);
        bool has12 = props.ApiVersion >= ((1u << 22) | (2u << 12));
        var f16i8 = new PhysicalDeviceShaderFloat16Int8Features { SType = StructureType.PhysicalDeviceShaderFloat16Int8Features };
        var s8 = new PhysicalDevice8BitStorageFeatures { SType = StructureType.PhysicalDevice8BitStorageFeatures, PNext = &f16i8 };
        var s16 = new PhysicalDevice16BitStorageFeatures { SType = StructureType.PhysicalDevice16BitStorageFeatures };
        bool chain12 = has12 || (extensions.Contains("VK_KHR_8bit_storage") && extensions.Contains("VK_KHR_shader_float16_int8"));
        if (chain12) s16.PNext = &s8;
        var f2 = new PhysicalDeviceFeatures2 { SType = StructureType.PhysicalDeviceFeatures2, PNext = &s16 };
        vk.GetPhysicalDeviceFeatures2(d, &f2);

        var sub = new PhysicalDeviceSubgroupProperties { SType = StructureType.PhysicalDeviceSubgroupProperties };
        var p2 = new PhysicalDeviceProperties2 { SType = StructureType.PhysicalDeviceProperties2, PNext = &sub };
        vk.GetPhysicalDeviceProperties2(d, &p2);
        bool arith = (sub.SupportedStages & ShaderStageFlags.ComputeBit) != 0 && (sub.SupportedOperations & SubgroupFeatureFlags.ArithmeticBit) != 0;
        var (coop, note) = extensions.Contains(CoopMatrixExtension) ? ProbeCoopMatrix(vk, instance, d, props.ApiVersion, arith) : (null, "no");
        return new VulkanFeatures(name, props.DeviceType, props.ApiVersion,
            chain12 && s8.StorageBuffer8BitAccess, s16.StorageBuffer16BitAccess,
            chain12 && f16i8.ShaderInt8, chain12 && f16i8.ShaderFloat16,
            sub.SubgroupSize, arith, coop, note, props.Limits.MaxStorageBufferRange);
    }

    private const string CoopMatrixExtension = "VK_KHR_cooperative_matrix";
    private const uint Api13 = (1u << 22) | (3u << 12);

    // What matmul_coopmat.spv needs beyond the extension: Vulkan 1.3 (its SPIR-V 1.6; subgroup size control),
    // cooperativeMatrix, shaderFloat16 (F16 shared memory), vulkanMemoryModel (the extension's scopes), subgroup
    // arithmetic (its row maxima), compute pipelines with a required subgroup size in full subgroups, 4 subgroups per
    // workgroup, and an F16 x F16 + F32 -> F32 subgroup-scope shape whose tiles fit the device's shared memory.
    private static (CoopMatrixShape?, string) ProbeCoopMatrix(Vk vk, Instance instance, PhysicalDevice d, uint api, bool arith)
    {
        if (api < Api13) return (null, "offered, unused: needs Vulkan 1.3");
        if (!arith) return (null, "offered, unused: no subgroup arithmetic");
        var coop = new PhysicalDeviceCooperativeMatrixFeaturesKHR { SType = StructureType.PhysicalDeviceCooperativeMatrixFeaturesKhr };
        var v13 = new PhysicalDeviceVulkan13Features { SType = StructureType.PhysicalDeviceVulkan13Features, PNext = &coop };
        var v12 = new PhysicalDeviceVulkan12Features { SType = StructureType.PhysicalDeviceVulkan12Features, PNext = &v13 };
        var f2 = new PhysicalDeviceFeatures2 { SType = StructureType.PhysicalDeviceFeatures2, PNext = &v12 };
        vk.GetPhysicalDeviceFeatures2(d, &f2);
        var lacks = new List<string>();
        if (!coop.CooperativeMatrix) lacks.Add("cooperativeMatrix");
        if (!v12.ShaderFloat16) lacks.Add("shaderFloat16");
        if (!v12.VulkanMemoryModel) lacks.Add("vulkanMemoryModel");
        if (!v13.SubgroupSizeControl) lacks.Add("subgroupSizeControl");
        if (!v13.ComputeFullSubgroups) lacks.Add("computeFullSubgroups");
        var stages = new PhysicalDeviceCooperativeMatrixPropertiesKHR { SType = StructureType.PhysicalDeviceCooperativeMatrixPropertiesKhr };
        var size = new PhysicalDeviceSubgroupSizeControlProperties { SType = StructureType.PhysicalDeviceSubgroupSizeControlProperties, PNext = &stages };
        var p2 = new PhysicalDeviceProperties2 { SType = StructureType.PhysicalDeviceProperties2, PNext = &size };
        vk.GetPhysicalDeviceProperties2(d, &p2);
        if ((stages.CooperativeMatrixSupportedStages & ShaderStageFlags.ComputeBit) == 0) lacks.Add("cooperative matrices in compute shaders");
        if ((size.RequiredSubgroupSizeStages & ShaderStageFlags.ComputeBit) == 0) lacks.Add("a required subgroup size for compute");
        uint subgroup = CoopMatrixShape.SubgroupFor(size.MinSubgroupSize, size.MaxSubgroupSize);
        if (size.MaxComputeWorkgroupSubgroups < 4) lacks.Add("4 subgroups per workgroup");
        PhysicalDeviceProperties props;
        vk.GetPhysicalDeviceProperties(d, &props);
        if (props.Limits.MaxComputeWorkGroupInvocations < 4 * subgroup) lacks.Add($"workgroups of {4 * subgroup}");
        if (lacks.Count > 0) return (null, $"offered, unused: no {string.Join(", ", lacks)}");

        var get = (delegate* unmanaged<PhysicalDevice, uint*, CooperativeMatrixPropertiesKHR*, Result>)
            vk.GetInstanceProcAddr(instance, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR").Handle;
        if (get == null) return (null, "offered, unused: no vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR");
        uint n = 0;
        if (get(d, &n, null) != Result.Success || n == 0) return (null, "offered, unused: no shapes listed");
        var shapes = new CooperativeMatrixPropertiesKHR[n];
        for (int i = 0; i < shapes.Length; i++) shapes[i].SType = StructureType.CooperativeMatrixPropertiesKhr;
        fixed (CooperativeMatrixPropertiesKHR* p = shapes)
        {
            if (get(d, &n, p) is not (Result.Success or Result.Incomplete)) return (null, "offered, unused: the shape query failed");
        }
        var pick = PickCoopShape(shapes.AsSpan(0, (int)n), subgroup, props.Limits.MaxComputeSharedMemorySize);
        return pick is null ? (null, "offered, unused: no f16 x f16 + f32 subgroup shape whose tiles fit") : (pick, "");
    }

    /// <summary>The shape matmul_coopmat runs with among those a device lists: F16 A and B, F32 C and result, not
    /// saturating, subgroup scope, every dimension a multiple of 8 (16-byte aligned F16 fragment loads) and at most 32,
    /// tiles within <paramref name="maxShared"/> bytes of shared memory (<see cref="CoopMatrixShape.SharedBytes"/>);
    /// 16x16x16 where listed, else the first that fits. Null: none fits.</summary>
    internal static CoopMatrixShape? PickCoopShape(ReadOnlySpan<CooperativeMatrixPropertiesKHR> listed, uint subgroup, uint maxShared)
    {
        CoopMatrixShape? pick = null;
        foreach (var s in listed)
        {
            if (s.AType != ComponentTypeKHR.Float16Khr || s.BType != ComponentTypeKHR.Float16Khr || s.CType != ComponentTypeKHR.Float32Khr ||
                s.ResultType != ComponentTypeKHR.Float32Khr || s.SaturatingAccumulation || s.Scope != ScopeKHR.SubgroupKhr) continue;
            if (s.MSize % 8 != 0 || s.NSize % 8 != 0 || s.KSize % 8 != 0 || s.MSize > 32 || s.NSize > 32 || s.KSize > 32) continue;
            var shape = new CoopMatrixShape(s.MSize, s.NSize, s.KSize, subgroup);
            if (shape.SharedBytes > maxShared) continue;
            if (pick is null || shape == new CoopMatrixShape(16, 16, 16, subgroup)) pick = shape;
        }
        return pick;
    }

    private static HashSet<string> Extensions(Vk vk, PhysicalDevice d)
    {
        uint n = 0;
        vk.EnumerateDeviceExtensionProperties(d, (byte*)null, &n, null);
        var props = new ExtensionProperties[n];
        fixed (ExtensionProperties* p = props) vk.EnumerateDeviceExtensionProperties(d, (byte*)null, &n, p);
        var set = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < (int)n; i++)
        {
            fixed (byte* name = props[i].ExtensionName) set.Add(Marshal.PtrToStringUTF8((nint)name) ?? "");
        }
        return set;
    }

    private void CreateDevice()
    {
        float priority = 1f;
        var qci = new DeviceQueueCreateInfo
        {
            SType = StructureType.DeviceQueueCreateInfo, QueueFamilyIndex = QueueFamily, QueueCount = 1, PQueuePriorities = &priority,
        };
        var dci = new DeviceCreateInfo { SType = StructureType.DeviceCreateInfo, QueueCreateInfoCount = 1, PQueueCreateInfos = &qci };
        // The cooperative-matrix shader's features (ProbeCoopMatrix checked each), enabled only where it can run.
        var coop = new PhysicalDeviceCooperativeMatrixFeaturesKHR { SType = StructureType.PhysicalDeviceCooperativeMatrixFeaturesKhr, CooperativeMatrix = true };
        var v13 = new PhysicalDeviceVulkan13Features
        {
            SType = StructureType.PhysicalDeviceVulkan13Features, PNext = &coop, SubgroupSizeControl = true, ComputeFullSubgroups = true,
        };
        var v12 = new PhysicalDeviceVulkan12Features
        {
            SType = StructureType.PhysicalDeviceVulkan12Features, PNext = &v13, ShaderFloat16 = true, VulkanMemoryModel = true,
        };
        byte* ext = stackalloc byte[CoopMatrixExtension.Length + 1];
        System.Text.Encoding.ASCII.GetBytes(CoopMatrixExtension, new Span<byte>(ext, CoopMatrixExtension.Length));
        ext[CoopMatrixExtension.Length] = 0;
        if (Features.CooperativeMatrix is not null)
        {
            dci.PNext = &v12;
            dci.EnabledExtensionCount = 1;
            dci.PpEnabledExtensionNames = &ext;
        }
        Device device;
        VulkanException.Check(Vk.CreateDevice(Physical, &dci, null, &device), "vkCreateDevice");
        Device = device;
        Queue queue;
        Vk.GetDeviceQueue(device, QueueFamily, 0, &queue);
        Queue = queue;
    }

    /// <summary>A memory type allowed by <paramref name="typeBits"/> with every <paramref name="required"/> property,
    /// preferring one that also has <paramref name="preferred"/>; -1 when none.</summary>
    internal int MemoryType(uint typeBits, MemoryPropertyFlags required, MemoryPropertyFlags preferred)
    {
        int fallback = -1;
        for (int i = 0; i < (int)_memory.MemoryTypeCount; i++)
        {
            if ((typeBits & (1u << i)) == 0) continue;
            var flags = _memory.MemoryTypes[i].PropertyFlags;
            if ((flags & required) != required) continue;
            if ((flags & preferred) == preferred) return i;
            if (fallback < 0) fallback = i;
        }
        return fallback;
    }

    /// <summary>The property flags of memory type <paramref name="index"/>.</summary>
    internal MemoryPropertyFlags MemoryFlags(int index) => _memory.MemoryTypes[index].PropertyFlags;

    private static string IcdNote()
    {
        foreach (var v in (string[])["VK_DRIVER_FILES", "VK_ICD_FILENAMES"])
        {
            if (Environment.GetEnvironmentVariable(v) is { Length: > 0 } s) return $" ({v}={s})";
        }
        return "";
    }

    internal void Track(VulkanBuffer b) => _live.Add(b);

    internal void Untrack(VulkanBuffer b) => _live.Remove(b);

    /// <summary>Set once <see cref="Dispose"/> ran: objects disposed later have nothing left to free.</summary>
    public bool Disposed => _disposed;

    /// <summary>Waits for the device, frees every buffer still alive, then the device and the instance.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (Device.Handle != 0)
        {
            Vk.DeviceWaitIdle(Device);
            foreach (var b in _live) b.Destroy();
            _live.Clear();
            Vk.DestroyDevice(Device, null);
        }
        Vk.DestroyInstance(Instance, null);
    }
}
