#!/usr/bin/env python3
"""The C ABI of libfastserve_cuda.so for the Python GPU scripts, read from native/include/fastserve_cuda.h itself.

The header is the one description of the ABI: this module parses its FS_API functions, FS_CUDA_ABI_VERSION and enum
constants, so no ctypes table is written out by hand. load() opens a library, checks that it exports every function
of the header and that its fs_cuda_abi_version() equals the header's FS_CUDA_ABI_VERSION, and sets every function's
ctypes argtypes and restype; a library built from another checkout is refused with AbiError naming both versions.

C types map to ctypes as the C# bindings map them (interop/FastServe.Interop/FastServeCuda.cs): int, fs_status and
fs_dtype -> c_int; float -> c_float; size_t -> c_size_t; uint64_t -> c_uint64; fs_stream and every pointer ->
c_void_p (pass an int address or None); a const char* return -> c_char_p. A type outside this list is an error, so a
header change that needs a new mapping cannot be passed over in silence.

    python3 bench/gpu/fastserve_abi.py [--lib PATH] [--json]
        --json     print the parsed table (abi_version, constants, functions with ctypes names) as JSON
        --lib      check that library; exit 0 when it matches, 1 with the reason when it does not
The NUnit suite (tests/FastServe.Tests/Interop/PythonAbiTests.cs) checks this table against the header and the C#
bindings, and the refusal against stand-in libraries.
"""
import ctypes
import json
import os
import re
import sys

HEADER = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "native", "include",
                                       "fastserve_cuda.h"))

_SCALARS = {
    "int": ctypes.c_int, "fs_status": ctypes.c_int, "fs_dtype": ctypes.c_int, "float": ctypes.c_float,
    "size_t": ctypes.c_size_t, "uint64_t": ctypes.c_uint64,
}
_FUNCTION = re.compile(r"FS_API\s+((?:const\s+)?[A-Za-z_0-9]+\s*\**)\s*(fs_cuda_[a-z_0-9]+)\s*\(([^)]*)\)\s*;")
_VERSION = re.compile(r"#define\s+FS_CUDA_ABI_VERSION\s+(\d+)")
_ENUM_VALUE = re.compile(r"\b(FS_[A-Z0-9_]+)\s*=\s*(-?\d+)")


class AbiError(Exception):
    """The header cannot be read, or a library does not match it."""


class Abi:
    """What the header declares: abi_version, constants (enum values by name) and functions (name -> (restype,
    [argtypes]) as ctypes types), in the header's order."""

    def __init__(self, abi_version, constants, functions):
        self.abi_version = abi_version
        self.constants = constants
        self.functions = functions

    def table(self):
        """The functions with their ctypes type names, for --json and the tests."""
        name = lambda t: t.__name__
        return dict(abi_version=self.abi_version, constants=self.constants,
                    functions={f: dict(restype=name(r), argtypes=[name(a) for a in args])
                               for f, (r, args) in self.functions.items()})


def _ctype(decl, is_return):
    """The ctypes type of one C declaration ("const float* x", "fs_stream stream", "size_t" as a return type)."""
    decl = " ".join(decl.split())
    if not is_return:
        decl = re.sub(r"\s*\b[A-Za-z_][A-Za-z_0-9]*$", "", decl) if re.search(r"[\s*]", decl) else decl
    if "*" in decl:
        return ctypes.c_char_p if is_return and decl.replace(" ", "") == "constchar*" else ctypes.c_void_p
    if decl == "fs_stream":
        return ctypes.c_void_p
    if decl in _SCALARS:
        return _SCALARS[decl]
    raise AbiError(f"{HEADER}: C type '{decl}' has no ctypes mapping in {os.path.basename(__file__)}; add one")


def read_header(path=HEADER):
    """Parses the header at path into an Abi."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as e:
        raise AbiError(f"cannot read the ABI header {path}: {e.strerror}") from None
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    version = _VERSION.search(text)
    if not version:
        raise AbiError(f"{path}: no #define FS_CUDA_ABI_VERSION")
    functions = {}
    for m in _FUNCTION.finditer(text):
        params = " ".join(m.group(3).split())
        args = [] if params in ("", "void") else [_ctype(p.strip(), False) for p in params.split(",")]
        functions[m.group(2)] = (_ctype(m.group(1).strip(), True), args)
    if not functions:
        raise AbiError(f"{path}: no FS_API fs_cuda_* functions found")
    constants = {name: int(value) for name, value in _ENUM_VALUE.findall(text)}
    return Abi(int(version.group(1)), constants, functions)


def load(path, header=HEADER):
    """Opens the library at path, checks it against the header and types every function. Raises AbiError when the
    library is missing, lacks an export, or reports another ABI version."""
    abi = read_header(header)
    if not os.path.exists(path):
        raise AbiError(f"{path} not found; build it first (cmake -S . -B build/native && cmake --build build/native, "
                       f"or bench/gpu/run.sh)")
    try:
        lib = ctypes.CDLL(os.path.abspath(path))
    except OSError as e:
        raise AbiError(f"cannot load {path}: {e}") from None
    missing = [f for f in abi.functions if not hasattr(lib, f)]
    if missing:
        raise AbiError(f"{path} lacks {', '.join(missing)} of {header}: rebuild it from this checkout")
    for name, (restype, argtypes) in abi.functions.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    version = lib.fs_cuda_abi_version()
    if version != abi.abi_version:
        raise AbiError(f"{path} has ABI version {version}, but {header} (FS_CUDA_ABI_VERSION) is {abi.abi_version}: "
                       f"rebuild the library from this checkout")
    return lib


def constant(name, header=HEADER):
    """An enum value of the header by name (e.g. FS_F8E4M3)."""
    return read_header(header).constants[name]


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=None, help="a libfastserve_cuda.so to check against the header")
    ap.add_argument("--header", default=HEADER)
    ap.add_argument("--json", action="store_true", help="print the parsed table as JSON")
    args = ap.parse_args()
    try:
        abi = read_header(args.header)
        if args.json:
            print(json.dumps(abi.table(), indent=1))
        if args.lib:
            load(args.lib, args.header)
            print(f"fastserve_abi: {args.lib}: ABI version {abi.abi_version}, {len(abi.functions)} functions: ok")
    except AbiError as e:
        print(f"fastserve_abi: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
