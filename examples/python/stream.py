#!/usr/bin/env python3
"""stream.py: one grammar correction through libfastserve with ctypes (docs/embed.md), pull API.

    python3 examples/python/stream.py [--lib dist/libfastserve.so] models/gec-tiny "She was refreshingly free into shyness."

Prints the corrected text as it streams, then a summary line on stderr; exit status 0 when the request finished.
The structs mirror native/include/fastserve.h field for field."""
import argparse
import ctypes as C
import os
import sys

FS_ABI_VERSION = (1 << 16) | 0
FS_OK, FS_EVENT_FINAL, FS_REQUEST_FINISHED = 0, 2, 0


class EngineOptions(C.Structure):
    _fields_ = [("size", C.c_uint32), ("max_seqs", C.c_int32), ("max_batched_tokens", C.c_int32),
                ("context_length", C.c_int32), ("kv_memory_bytes", C.c_int64), ("backend", C.c_char_p),
                ("threads", C.c_int32), ("overlap", C.c_int32), ("prefix_caching", C.c_int32),
                ("max_waiting_requests", C.c_int32), ("queue_target_ms", C.c_int32), ("queue_interval_ms", C.c_int32),
                ("default_deadline_ms", C.c_int32), ("kv_dtype", C.c_int32)]


class RequestOptions(C.Structure):
    _fields_ = [("size", C.c_uint32), ("max_tokens", C.c_int32), ("temperature", C.c_float), ("top_p", C.c_float),
                ("top_k", C.c_int32), ("priority", C.c_int32), ("seed", C.c_uint64), ("has_seed", C.c_int32),
                ("deadline_ms", C.c_int32), ("ignore_eos", C.c_int32), ("add_bos", C.c_int32),
                ("stop", C.POINTER(C.c_char_p)), ("n_stop", C.c_size_t), ("on_event", C.c_void_p), ("user", C.c_void_p)]


class Event(C.Structure):
    _fields_ = [("size", C.c_uint32), ("kind", C.c_int32), ("token_id", C.c_int32), ("status", C.c_int32),
                ("text", C.POINTER(C.c_char)), ("text_length", C.c_size_t), ("error_code", C.c_char_p),
                ("error_message", C.c_char_p), ("ttft_ms", C.c_double), ("latency_ms", C.c_double),
                ("retry_after_ms", C.c_double), ("finish_reason", C.c_int32), ("prompt_tokens", C.c_int32),
                ("cached_prompt_tokens", C.c_int32), ("completion_tokens", C.c_int32), ("preemptions", C.c_int32),
                ("token_index", C.c_int32), ("emitted_ns", C.c_int64)]  # emitted_ns: ABI 1.1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.path.join(os.path.dirname(__file__), "..", "..", "dist", "libfastserve.so"))
    ap.add_argument("model")
    ap.add_argument("sentence")
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()

    lib = C.CDLL(a.lib)
    lib.fs_abi_version.restype = C.c_uint32
    lib.fs_last_error.restype = C.c_char_p
    h = C.c_void_p  # handles are opaque 64-bit values
    lib.fs_model_load.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(h)]
    lib.fs_engine_create.argtypes = [h, C.POINTER(EngineOptions), C.POINTER(h)]
    lib.fs_engine_options_default.argtypes = [C.POINTER(EngineOptions)]
    lib.fs_request_options_default.argtypes = [C.POINTER(RequestOptions)]
    lib.fs_submit_text.argtypes = [h, C.c_char_p, C.c_size_t, C.POINTER(RequestOptions), C.POINTER(h)]
    lib.fs_request_next.argtypes = [h, C.c_int32, C.POINTER(Event)]
    for f in ("fs_request_free", "fs_engine_free", "fs_model_free"):
        getattr(lib, f).argtypes = [h]

    if lib.fs_abi_version() >> 16 != FS_ABI_VERSION >> 16:
        sys.exit(f"stream.py: libfastserve ABI {lib.fs_abi_version() >> 16}, expected {FS_ABI_VERSION >> 16}")

    def check(status, what):
        if status != FS_OK:
            sys.exit(f"stream.py: {what}: {lib.fs_last_error().decode()}")

    model, engine, req = h(), h(), h()
    check(lib.fs_model_load(a.model.encode(), None, C.byref(model)), "load")
    eo = EngineOptions()
    lib.fs_engine_options_default(C.byref(eo))
    eo.kv_memory_bytes = 64 << 20
    check(lib.fs_engine_create(model, C.byref(eo), C.byref(engine)), "engine")
    ro = RequestOptions()
    lib.fs_request_options_default(C.byref(ro))
    ro.max_tokens = a.max_tokens
    prompt = f"Correct: {a.sentence}\nFixed:".encode()
    check(lib.fs_submit_text(engine, prompt, len(prompt), C.byref(ro), C.byref(req)), "submit")
    ev = Event(size=C.sizeof(Event))
    out = sys.stdout.buffer
    while True:
        check(lib.fs_request_next(req, -1, C.byref(ev)), "next")
        out.write(C.string_at(ev.text, ev.text_length))
        out.flush()
        if ev.kind == FS_EVENT_FINAL:
            break
    print(f"\nstream.py: status {ev.status} finish {ev.finish_reason}, {ev.prompt_tokens} prompt tokens, "
          f"{ev.completion_tokens} generated", file=sys.stderr)
    lib.fs_request_free(req)
    lib.fs_engine_free(engine)
    lib.fs_model_free(model)
    return 0 if ev.status == FS_REQUEST_FINISHED else 1


if __name__ == "__main__":
    sys.exit(main())
