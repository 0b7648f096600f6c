using Silk.NET.Vulkan;

namespace FastServe.Vulkan;

/// <summary>
/// Kompute's algorithm: one compute shader ready to dispatch — its shader module, a descriptor set layout of
/// <see cref="Bindings"/> storage buffers (bindings 0..n-1), a pipeline layout with <see cref="PushBytes"/> of push
/// constants, and the compute pipeline with specialization constant 0 set to <see cref="Variant"/> (the shaders' DTYPE,
/// ADD or BF16 switch), constants 1.. to the shader's further constants where it has any (the cooperative-matrix shape),
/// and a required subgroup size where the shader relies on one. Made once per (shader, variant) and kept for the
/// backend's lifetime.
/// </summary>
public sealed unsafe class VulkanAlgorithm : IDisposable
{
    private static int _nextId;
    private readonly VulkanManager _m;
    private bool _disposed;

    private VulkanAlgorithm(VulkanManager m, string name, int variant, int bindings, uint pushBytes, ShaderModule module,
        DescriptorSetLayout setLayout, PipelineLayout layout, Pipeline pipeline)
    {
        _m = m;
        Name = name;
        Variant = variant;
        Bindings = bindings;
        PushBytes = pushBytes;
        Module = module;
        SetLayout = setLayout;
        Layout = layout;
        Pipeline = pipeline;
        Id = Interlocked.Increment(ref _nextId);
    }

    public int Id { get; }
    public string Name { get; }
    public int Variant { get; }
    public int Bindings { get; }
    public uint PushBytes { get; }
    public ShaderModule Module { get; }
    public DescriptorSetLayout SetLayout { get; }
    public PipelineLayout Layout { get; }
    public Pipeline Pipeline { get; }

    /// <summary>Builds the pipeline of <paramref name="spirv"/> (entry point "main").</summary>
    /// <param name="constants">Specialization constants 1, 2, ... (32-bit each), after the variant's constant 0.</param>
    /// <param name="subgroupSize">Non-zero: the pipeline runs full subgroups of exactly this size (the device must
    /// offer it for compute and have subgroupSizeControl and computeFullSubgroups enabled).</param>
    /// <exception cref="VulkanException">vulkan.* for a failing create call (vulkan.error for a module the driver rejects).</exception>
    public static VulkanAlgorithm Create(VulkanManager m, string name, byte[] spirv, int variant, int bindings, uint pushBytes,
        ReadOnlySpan<uint> constants = default, uint subgroupSize = 0)
    {
        var vk = m.Vk;
        var device = m.Device;
        ShaderModule module = default;
        DescriptorSetLayout setLayout = default;
        PipelineLayout layout = default;
        try
        {
            fixed (byte* code = spirv)
            {
                var smci = new ShaderModuleCreateInfo { SType = StructureType.ShaderModuleCreateInfo, CodeSize = (nuint)spirv.Length, PCode = (uint*)code };
                VulkanException.Check(vk.CreateShaderModule(device, &smci, null, &module), $"vkCreateShaderModule({name})");
            }
            var slots = stackalloc DescriptorSetLayoutBinding[bindings];
            for (int i = 0; i < bindings; i++)
            {
                slots[i] = new DescriptorSetLayoutBinding
                {
                    Binding = (uint)i, DescriptorType = DescriptorType.StorageBuffer, DescriptorCount = 1, StageFlags = ShaderStageFlags.ComputeBit,
                };
            }
            var dslci = new DescriptorSetLayoutCreateInfo { SType = StructureType.DescriptorSetLayoutCreateInfo, BindingCount = (uint)bindings, PBindings = slots };
            VulkanException.Check(vk.CreateDescriptorSetLayout(device, &dslci, null, &setLayout), "vkCreateDescriptorSetLayout");
            var range = new PushConstantRange { StageFlags = ShaderStageFlags.ComputeBit, Offset = 0, Size = pushBytes };
            var plci = new PipelineLayoutCreateInfo
            {
                SType = StructureType.PipelineLayoutCreateInfo, SetLayoutCount = 1, PSetLayouts = &setLayout,
                PushConstantRangeCount = pushBytes > 0 ? 1u : 0u, PPushConstantRanges = &range,
            };
            VulkanException.Check(vk.CreatePipelineLayout(device, &plci, null, &layout), "vkCreatePipelineLayout");

            int count = 1 + constants.Length;
            var values = stackalloc uint[count];
            var entries = stackalloc SpecializationMapEntry[count];
            for (int i = 0; i < count; i++)
            {
                values[i] = i == 0 ? (uint)variant : constants[i - 1];
                entries[i] = new SpecializationMapEntry { ConstantID = (uint)i, Offset = (uint)(4 * i), Size = 4 };
            }
            var spec = new SpecializationInfo { MapEntryCount = (uint)count, PMapEntries = entries, DataSize = (nuint)(4 * count), PData = values };
            byte* main = stackalloc byte[] { (byte)'m', (byte)'a', (byte)'i', (byte)'n', 0 };
            var required = new PipelineShaderStageRequiredSubgroupSizeCreateInfo
            {
                SType = StructureType.PipelineShaderStageRequiredSubgroupSizeCreateInfo, RequiredSubgroupSize = subgroupSize,
            };
            var stage = new PipelineShaderStageCreateInfo
            {
                SType = StructureType.PipelineShaderStageCreateInfo, Stage = ShaderStageFlags.ComputeBit, Module = module, PName = main,
                PSpecializationInfo = &spec,
            };
            if (subgroupSize != 0)
            {
                stage.PNext = &required;
                stage.Flags = PipelineShaderStageCreateFlags.RequireFullSubgroupsBit;
            }
            var cpci = new ComputePipelineCreateInfo { SType = StructureType.ComputePipelineCreateInfo, Stage = stage, Layout = layout };
            Pipeline pipeline;
            VulkanException.Check(vk.CreateComputePipelines(device, default, 1, &cpci, null, &pipeline), $"vkCreateComputePipelines({name})");
            return new VulkanAlgorithm(m, name, variant, bindings, pushBytes, module, setLayout, layout, pipeline);
        }
        catch
        {
            if (layout.Handle != 0) vk.DestroyPipelineLayout(device, layout, null);
            if (setLayout.Handle != 0) vk.DestroyDescriptorSetLayout(device, setLayout, null);
            if (module.Handle != 0) vk.DestroyShaderModule(device, module, null);
            throw;
        }
    }

    public void Dispose()
    {
        if (_disposed || _m.Disposed) return;
        _disposed = true;
        var vk = _m.Vk;
        vk.DestroyPipeline(_m.Device, Pipeline, null);
        vk.DestroyPipelineLayout(_m.Device, Layout, null);
        vk.DestroyDescriptorSetLayout(_m.Device, SetLayout, null);
        vk.DestroyShaderModule(_m.Device, Module, null);
    }
}
