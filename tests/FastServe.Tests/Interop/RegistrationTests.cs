using FastServe.Interop;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>Backends registered from above the runtime, and the stable codes CUDA results map to.</summary>
public class RegistrationTests
{
    [Test]
    public void RegisteredBackendIsCreatedAndCheckedByName()
    {
        int created = 0, checkedCount = 0;
        BackendFactory.Register("test-registered", new BackendFactory.Registration(
            threads => { created++; return new Runtime.Backends.Reference.ReferenceBackend(); },
            () => { checkedCount++; throw new FastServeException("test.missing", "not here"); }));
        Assert.That(BackendFactory.Names, Does.Contain("test-registered"));
        Assert.That(BackendFactory.Names.Take(2), Is.EqualTo(new[] { "cpu", "reference" }));
        using (var b = BackendFactory.Create("test-registered")) Assert.That(b.Name, Is.EqualTo("reference"));
        Assert.That(created, Is.EqualTo(1));
        var e = Assert.Throws<FastServeException>(() => BackendFactory.Check("test-registered"))!;
        Assert.That(e.Code, Is.EqualTo("test.missing"));
        Assert.That(checkedCount, Is.EqualTo(1));
        Assert.DoesNotThrow(() => BackendFactory.Check("cpu"));
        var unknown = Assert.Throws<FastServeException>(() => BackendFactory.Create("nope"))!;
        Assert.That(unknown.Code, Is.EqualTo("args.unknown_backend"));
        Assert.That(unknown.Message, Does.Contain("test-registered"));
        Assert.That(Assert.Throws<FastServeException>(() => BackendFactory.Check("nope"))!.Code, Is.EqualTo("args.unknown_backend"));
        Assert.Throws<ArgumentException>(() => BackendFactory.Register("cpu", new BackendFactory.Registration(_ => null!)));
    }

    [Test]
    public void CudaRegistersUnderItsName()
    {
        CudaBackend.Register();
        Assert.That(BackendFactory.Names, Does.Contain("cuda"));
    }

    [TestCase(2, "cuda.out_of_memory")]
    [TestCase(100, "cuda.no_device")]
    [TestCase(35, "cuda.no_driver")]
    [TestCase(34, "cuda.no_driver")]
    [TestCase(700, "cuda.error")] // CUDA_ERROR_ILLEGAL_ADDRESS
    [TestCase(719, "cuda.error")] // CUDA_ERROR_LAUNCH_FAILED
    public void DriverResultsMapToStableCodes(int result, string code) => Assert.That(CudaException.DriverCode(result), Is.EqualTo(code));

    [TestCase(1, "cuda.invalid_argument")]
    [TestCase(2, "cuda.no_device")]
    [TestCase(3, "cuda.out_of_memory")]
    [TestCase(4, "cuda.unsupported_device")]
    [TestCase(5, "cuda.error")]
    public void KernelStatusesMapToStableCodes(int status, string code) => Assert.That(CudaException.KernelCode(status), Is.EqualTo(code));

    [Test]
    public void CudaExceptionIsAFastServeExceptionWithTheCallAndName()
    {
        var e = new CudaException("cuda.error", "cuGraphLaunch", 700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered");
        Assert.That(e, Is.InstanceOf<FastServeException>());
        Assert.That(e.ToString(), Is.EqualTo("error[cuda.error]: cuda: cuGraphLaunch failed: CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered)"));
        Assert.That((e.Call, e.Result, e.ErrorName), Is.EqualTo(("cuGraphLaunch", 700, "CUDA_ERROR_ILLEGAL_ADDRESS")));
    }
}
