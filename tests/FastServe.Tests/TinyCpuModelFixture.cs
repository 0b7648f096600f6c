using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Model;
using NUnit.Framework;

namespace FastServe.Tests;

/// <summary>Base of the fixtures that run the tiny test model on the CPU backend: both are made once per fixture and
/// disposed after it. Static, so the fixtures' static helpers can reach them; fixtures do not run in parallel.</summary>
public abstract class TinyCpuModelFixture
{
    protected static LoadedModel Model { get; private set; } = null!;
    protected static CpuBackend Cpu { get; private set; } = null!;

    [OneTimeSetUp]
    public void LoadTinyModel()
    {
        Model = LoadedModel.Load(TestModels.Tiny);
        Cpu = new CpuBackend(2);
    }

    [OneTimeTearDown]
    public void UnloadTinyModel()
    {
        Cpu.Dispose();
        Model.Dispose();
    }
}
