/*
 * fastserve.h: the C ABI of libfastserve.so, FastServe's continuous-batching engine embedded in a process
 * (docs/embed.md). One header, C99 and C++; link with -lfastserve (dist/libfastserve.so, built by ./build.sh).
 *
 * Conventions, for every function below:
 * - Each returns an fs_status (0 = FS_OK), except fs_abi_version, fs_last_error and fs_status_name. On failure
 *   fs_last_error() describes it ("code: message", the stable codes of docs/errors.md where one applies) and the
 *   outputs are zeroed where the function says so. No exception, abort or exit ever crosses the boundary: null
 *   pointers, freed or forged handles, handles of the wrong kind and structs of the wrong size get a status.
 * - Handles (fs_model, fs_engine, fs_request) are opaque 64-bit values, never pointers to dereference: a freed or
 *   made-up handle is recognised (FS_E_INVALID_HANDLE). Each is freed exactly once by its own _free function.
 * - Every options or result struct starts with `size`: set it to sizeof(the struct) (the _default functions do),
 *   else FS_E_STRUCT_SIZE. Structs of a later ABI minor version only ever grow at the end.
 * - Strings are UTF-8. Text with a length is not NUL-terminated; `const char*` without one is.
 * - Units: milliseconds (_ms), bytes (_bytes), tokens (_tokens); counts are totals since the engine started.
 * - Threads: every function may be called from any thread, concurrently, on the same or different objects, except
 *   where noted (one consumer per request for fs_request_next). Engines share nothing but a model's read-only
 *   weights and tokenizer: no lock is held across engines or models (except the tokenizer's word cache, locked for a
 *   lookup per word while fs_submit_text or fs_tokenize encodes text), and submitting threads never wait for a decode
 *   step.
 */
#ifndef FASTSERVE_H
#define FASTSERVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version: major in the high 16 bits (a change breaks callers), minor in the low 16 (additions only). A caller
 * checks (fs_abi_version() >> 16) == (FS_ABI_VERSION >> 16) before anything else. */
#define FS_ABI_VERSION ((1u << 16) | 1u)
uint32_t fs_abi_version(void);

/* ---- status codes ------------------------------------------------------------------------------------------- */

typedef enum fs_status {
    FS_OK = 0,
    FS_E_INVALID_ARGUMENT = 1, /* a NULL pointer where one is required, a value out of range, text that is not UTF-8,
                                  or request parameters the request rules refuse (sampling.invalid, ...) */
    FS_E_INVALID_HANDLE = 2,   /* 0, freed, forged, or another kind's handle */
    FS_E_STRUCT_SIZE = 3,      /* a struct's `size` is not sizeof() of this library's version of it */
    FS_E_BUFFER_TOO_SMALL = 4, /* fs_tokenize/fs_detokenize: the count needed was written; call again with more room */
    FS_E_TIMEOUT = 5,          /* fs_request_next: no event within timeout_ms */
    FS_E_ENDED = 6,            /* fs_request_next: the request's final event was already delivered */
    FS_E_CANCELLED = 7,        /* fs_model_load: the progress callback asked to stop; nothing was loaded */
    FS_E_MODEL = 8,            /* the model directory is missing or invalid (config, checkpoint, tokenizer) */
    FS_E_BACKEND = 9,          /* the backend is unknown or cannot run here (no GPU, driver or kernel library) */
    FS_E_STATE = 10,           /* not allowed now: fs_request_next on a callback request, fs_engine_free inside a
                                  callback */
    FS_E_LIMIT = 11,           /* too many live handles of one kind (over a million per calling thread); free
                                  finished requests */
    FS_E_OUT_OF_MEMORY = 12,
    FS_E_INTERNAL = 13         /* a bug; fs_last_error() says where. The process and other objects stay usable. */
} fs_status;

/* The message of the last failing fs_* call on the calling thread: "code: message", NUL-terminated, never NULL (""
 * before any failure). Owned by the library; valid until the next failing call on this thread. A successful call
 * leaves it unchanged. */
const char* fs_last_error(void);

/* A static lowercase name for a status ("ok", "invalid_handle", ...; "unknown" for other values). */
const char* fs_status_name(int status);

/* ---- handles ------------------------------------------------------------------------------------------------- */

typedef struct fs_model_t* fs_model;     /* a loaded model: weights and tokenizer */
typedef struct fs_engine_t* fs_engine;   /* a running engine on a model: scheduler thread, compute threads, KV cache */
typedef struct fs_request_t* fs_request; /* one submitted request and its events */

/* ---- models -------------------------------------------------------------------------------------------------- */

typedef enum fs_quantize {
    FS_QUANTIZE_NONE = 0,             /* weights as stored */
    FS_QUANTIZE_FP8_PER_CHANNEL = 1,  /* quantize projections to FP8 E4M3 at load, one scale per output row */
    FS_QUANTIZE_FP8_PER_TENSOR = 2    /* ... one scale per matrix */
} fs_quantize;

/* Load progress: `done` of `total` weight matrices bound (units are matrices, not bytes). Called on the thread that
 * called fs_model_load, several times. Return 0 to go on, nonzero to cancel: fs_model_load then frees what it had
 * loaded and returns FS_E_CANCELLED. It must not call fs_model_load recursively. */
typedef int (*fs_progress_fn)(uint64_t done, uint64_t total, void* user);

typedef struct fs_model_options {
    uint32_t size;           /* sizeof(fs_model_options) */
    int32_t quantize;        /* fs_quantize; default FS_QUANTIZE_NONE */
    fs_progress_fn progress; /* may be NULL (default) */
    void* progress_user;     /* passed to progress as is */
} fs_model_options;

/* Writes the defaults (size set). FS_E_INVALID_ARGUMENT if options is NULL. */
int fs_model_options_default(fs_model_options* options);

/* Loads the model directory `dir` (Hugging Face layout: config.json, *.safetensors, tokenizer files; NUL-terminated
 * path). options may be NULL (defaults). On success *model is a new handle; on failure *model = NULL and the status is
 * FS_E_MODEL (bad directory), FS_E_CANCELLED, FS_E_INVALID_ARGUMENT or FS_E_OUT_OF_MEMORY. Blocks while loading. */
int fs_model_load(const char* dir, const fs_model_options* options, fs_model* model);

/* Drops the caller's handle. Engines created on the model keep it alive until the last of them is freed, so freeing
 * a model with engines running is defined and harmless. */
int fs_model_free(fs_model model);

/* Text (UTF-8, `length` bytes) to token ids. add_bos: prepend the model's BOS id, if it has one. *n_ids is always set
 * to the number of ids; when it exceeds `capacity`, nothing is written and FS_E_BUFFER_TOO_SMALL is returned. */
int fs_tokenize(fs_model model, const char* text, size_t length, int add_bos, int32_t* ids, size_t capacity,
                size_t* n_ids);

/* Token ids to text: UTF-8 plus a NUL into `text`. *n_bytes is always set to the text's length without the NUL; when
 * n_bytes + 1 > capacity nothing is written and FS_E_BUFFER_TOO_SMALL is returned. An id outside the vocabulary:
 * FS_E_INVALID_ARGUMENT. */
int fs_detokenize(fs_model model, const int32_t* ids, size_t n_ids, char* text, size_t capacity, size_t* n_bytes);

/* ---- engines ------------------------------------------------------------------------------------------------- */

typedef enum fs_kv_dtype { FS_KV_DEFAULT = 0, FS_KV_F32 = 1, FS_KV_BF16 = 2 } fs_kv_dtype;

/* The options of `fastserve serve` (docs/engine.md, docs/server.md); defaults in brackets. */
typedef struct fs_engine_options {
    uint32_t size;                /* sizeof(fs_engine_options) */
    int32_t max_seqs;             /* most sequences running at once [64] */
    int32_t max_batched_tokens;   /* token budget of one step: decode rows + prefill chunk rows [512] */
    int32_t context_length;       /* tokens per sequence; 0 = the model's, capped at 8192 [0] */
    int64_t kv_memory_bytes;      /* KV cache budget in bytes, at least 1 MiB [1 GiB] */
    const char* backend;          /* "cpu" (SIMD), "reference" (scalar), "cuda" (NVIDIA GPU: needs the driver and
                                     libfastserve_cuda.so, looked for next to this library, then as docs/cuda.md says;
                                     where either is missing fs_engine_create returns FS_E_BACKEND and fs_last_error
                                     says which, "cuda.no_driver: ..."), "vulkan" (any Vulkan 1.1 device, lavapipe
                                     included: needs libvulkan.so.1 and the shaders, vulkan/ next to this library or
                                     $FASTSERVE_VULKAN_SHADERS, docs/vulkan.md; else FS_E_BACKEND, "vulkan.no_device:
                                     ..."); NULL = "cpu" [NULL] */
    int32_t threads;              /* compute threads of the backend; 0 = all cores [0] */
    int32_t overlap;              /* 1: prepare step N+1 while step N runs [1] */
    int32_t prefix_caching;       /* 1: share KV blocks between requests with equal prefixes [1] */
    int32_t max_waiting_requests; /* requests queued for admission before new ones end FS_REQUEST_OVERLOADED [4096] */
    int32_t queue_target_ms;      /* queue wait allowed while the queue stands (CoDel target) [50] */
    int32_t queue_interval_ms;    /* CoDel interval; 0 = no queue budget, only the bound above [500] */
    int32_t default_deadline_ms;  /* deadline for requests without one; 0 = none [0] */
    int32_t kv_dtype;             /* fs_kv_dtype [FS_KV_DEFAULT: f32 on cpu] */
} fs_engine_options;

/* Writes the defaults (size set). */
int fs_engine_options_default(fs_engine_options* options);

/* Creates and starts an engine on `model` (options may be NULL: defaults). It takes its own reference on the model.
 * Starts one scheduler thread and the backend's compute threads, and allocates the KV cache. On failure *engine = NULL:
 * FS_E_INVALID_ARGUMENT (an option out of range; fs_last_error names it), FS_E_BACKEND, FS_E_INVALID_HANDLE,
 * FS_E_OUT_OF_MEMORY. Several engines may run in one process, on one model or several. */
int fs_engine_create(fs_model model, const fs_engine_options* options, fs_engine* engine);

/* Stops the engine: every request still queued or running ends with FS_REQUEST_CANCELLED, and its final event is
 * delivered (to its callback, or queued for fs_request_next) before this returns. Then frees the KV cache, threads and
 * the engine's model reference. Request handles stay valid (their events readable) until fs_request_free. Blocks for
 * at most about one decode step. Calling it from inside an event callback (any engine's) returns FS_E_STATE. */
int fs_engine_free(fs_engine engine);

typedef struct fs_engine_stats {
    uint32_t size;                /* set to sizeof(fs_engine_stats) before the call */
    int32_t running_requests;     /* gauges, now */
    int32_t waiting_requests;
    int32_t kv_blocks_total;
    int32_t kv_blocks_used;
    int32_t kv_blocks_free;
    int64_t submitted;            /* totals since the engine started */
    int64_t finished;
    int64_t cancelled;
    int64_t deadline_exceeded;
    int64_t overloaded;
    int64_t invalid;
    int64_t failed;
    int64_t preemptions;
    int64_t steps;
    int64_t tokens_generated;
    double prefix_hit_rate;       /* 0..1 */
    double device_busy_seconds;
} fs_engine_stats;

/* A snapshot of the engine's gauges and totals into *stats (whose size must be set). */
int fs_engine_stats_get(fs_engine engine, fs_engine_stats* stats);

/* ---- requests ------------------------------------------------------------------------------------------------ */

typedef enum fs_priority {
    FS_PRIORITY_INTERACTIVE = 0, /* admitted first, preempted last */
    FS_PRIORITY_BATCH = 1        /* fills spare capacity */
} fs_priority;

typedef enum fs_event_kind {
    FS_EVENT_TOKEN = 1, /* one generated token and the text it released */
    FS_EVENT_FINAL = 2  /* the request's end: exactly one per request, always the last */
} fs_event_kind;

/* fs_event.status of a FINAL event (the engine's RequestStatus, docs/engine.md). */
typedef enum fs_request_status {
    FS_REQUEST_FINISHED = 0,          /* ran to its end; see finish_reason */
    FS_REQUEST_CANCELLED = 1,         /* fs_request_cancel, fs_request_free, or fs_engine_free */
    FS_REQUEST_DEADLINE_EXCEEDED = 2, /* deadline_ms passed; the tokens so far were delivered */
    FS_REQUEST_OVERLOADED = 3,        /* refused at admission (queue full or over its budget); retry_after_ms says when */
    FS_REQUEST_INVALID = 4,           /* refused at admission: prompt empty, too long, or an id outside the vocabulary */
    FS_REQUEST_FAILED = 5             /* the engine failed running it (a device fault or a bug) */
} fs_request_status;

typedef enum fs_finish_reason {
    FS_FINISH_NONE = 0,         /* the status is not FS_REQUEST_FINISHED */
    FS_FINISH_EOS = 1,          /* the model ended the text */
    FS_FINISH_LENGTH = 2,       /* max_tokens generated */
    FS_FINISH_STOP = 3,         /* a stop string appeared (it and what follows are not in the text) */
    FS_FINISH_CONTEXT_FULL = 4, /* the context length was reached */
    FS_FINISH_CANCELLED = 5
} fs_finish_reason;

/* One event of a request. Pointers in it (text, error_code, error_message) belong to the library: with
 * fs_request_next they stay valid until the next fs_request_next or fs_request_free of the same request; in a
 * callback, until the callback returns. Copy what you keep. */
typedef struct fs_event {
    uint32_t size;                /* fs_request_next: set to sizeof(fs_event) before the call (a caller built against
                                     ABI 1.0 passes its 96-byte struct and gets that prefix filled) */
    int32_t kind;                 /* fs_event_kind */
    int32_t token_id;             /* TOKEN: the id; FINAL: -1 */
    int32_t status;               /* FINAL: fs_request_status; TOKEN: 0 */
    const char* text;             /* UTF-8 released by this event, NUL-terminated, possibly empty (never NULL). TOKEN:
                                     the text this token completes (partial characters and what may be the start of a
                                     stop string are held back; an EOS token releases none). FINAL: the held-back rest.
                                     The concatenation over all events is the request's output text. */
    size_t text_length;           /* bytes in text, without the NUL */
    const char* error_code;       /* FINAL with an error ("prompt.too_long", "engine.queue_full", ...), else NULL */
    const char* error_message;    /* with error_code, else NULL */
    double ttft_ms;               /* FINAL: submission to first token; -1 if none */
    double latency_ms;            /* FINAL: submission to the end */
    double retry_after_ms;        /* FINAL, FS_REQUEST_OVERLOADED: when retrying is sensible; else -1 */
    int32_t finish_reason;        /* FINAL: fs_finish_reason */
    int32_t prompt_tokens;        /* FINAL: the counts */
    int32_t cached_prompt_tokens; /* FINAL: prompt tokens served from the prefix cache */
    int32_t completion_tokens;    /* FINAL: tokens generated (= TOKEN events delivered) */
    int32_t preemptions;          /* FINAL: times the request was preempted and recomputed */
    int32_t token_index;          /* TOKEN: 0, 1, 2... ; FINAL: -1 */
    /* ABI 1.1: when the engine handed this event to the request, before detokenizing (CLOCK_MONOTONIC, nanoseconds:
     * compare with clock_gettime(CLOCK_MONOTONIC) where the event arrives to see what delivery adds). */
    int64_t emitted_ns;
} fs_event;

/* Event callback. Called on the engine's scheduler thread (for a request refused at admission: on the submitting
 * thread, before fs_submit_* returns), one call at a time per request, in order. It runs inside the engine's loop,
 * so it must be quick and never block: copy the text and return (hand work to your own thread). It may call
 * fs_request_cancel, fs_submit_*, fs_request_free (of any request, its own included: no callback of a freed request
 * runs after fs_request_free returns), fs_engine_stats_get, fs_tokenize, fs_detokenize; it must not call
 * fs_engine_free (FS_E_STATE) or fs_request_next, and must not unwind (C++ exceptions, longjmp) out of the call. */
typedef void (*fs_event_fn)(const fs_event* event, void* user);

typedef struct fs_request_options {
    uint32_t size;             /* sizeof(fs_request_options) */
    int32_t max_tokens;        /* most tokens to generate, 1..65536 [64] */
    float temperature;         /* 0 = greedy [0] */
    float top_p;               /* nucleus mass, (0, 1] [1] */
    int32_t top_k;             /* 0 = no limit [0] */
    int32_t priority;          /* fs_priority [FS_PRIORITY_INTERACTIVE] */
    uint64_t seed;             /* with has_seed: same seed, model and prompt give the same tokens, batched or not */
    int32_t has_seed;          /* 0 = a random seed per request [0] */
    int32_t deadline_ms;       /* end to end, from submission; 0 = none (the engine's default_deadline_ms) [0] */
    int32_t ignore_eos;        /* 1: keep generating past EOS [0] */
    int32_t add_bos;           /* fs_submit_text: prepend BOS if the model has one [1] */
    const char* const* stop;   /* stop strings (NUL-terminated), at most 8 of at most 256 bytes, or NULL [NULL]; read during submit only */
    size_t n_stop;             /* [0] */
    fs_event_fn on_event;      /* NULL: pull events with fs_request_next [NULL] */
    void* user;                /* passed to on_event as is [NULL] */
} fs_request_options;

/* Writes the defaults (size set). */
int fs_request_options_default(fs_request_options* options);

/* Submits a request with a UTF-8 text prompt (tokenized with the model's tokenizer, BOS per add_bos) or with token
 * ids (copied; the caller may reuse its array at once). options may be NULL (defaults: greedy, 64 tokens, pull).
 * On FS_OK *request is a new handle that gets exactly one FS_EVENT_FINAL, whatever happens, even when the engine
 * refuses it at admission (status OVERLOADED or INVALID: the final is then ready at once). Parameters the request rules
 * refuse (temperature, top_p, top_k, max_tokens, stops, priority, deadline) fail the call itself:
 * FS_E_INVALID_ARGUMENT, *request = NULL. Never blocks on the engine. */
int fs_submit_text(fs_engine engine, const char* text, size_t length, const fs_request_options* options,
                   fs_request* request);
int fs_submit_tokens(fs_engine engine, const int32_t* ids, size_t n_ids, const fs_request_options* options,
                     fs_request* request);

/* Pull API: the next event of a request without a callback, into *event (event->size must be set), waiting up to
 * timeout_ms (0 = do not wait, -1 = no limit). FS_OK: an event (TOKEN events, then one FINAL); FS_E_TIMEOUT: none yet;
 * FS_E_ENDED: the FINAL was already returned; FS_E_STATE: the request has a callback; FS_E_INVALID_HANDLE: freed,
 * also when freed by another thread during the wait (which wakes it). One thread at a time per request (calls on one
 * request are serialised; two consumers would split its events). Undelivered events are kept in memory bounded by the
 * request's max_tokens. */
int fs_request_next(fs_request request, int32_t timeout_ms, fs_event* event);

/* Cancels the request: it stops at the engine's next iteration (within one step, during prefill too) and its FINAL
 * comes with FS_REQUEST_CANCELLED, unless it had already ended. Any thread, any number of times, a no-op once ended. */
int fs_request_cancel(fs_request request);

/* Frees the handle. A request still running is cancelled and its remaining events are dropped (no callback of it runs
 * after this returns; a thread waiting in fs_request_next gets FS_E_INVALID_HANDLE). Every request must be freed,
 * finished or not, including after its engine was freed. */
int fs_request_free(fs_request request);

#ifdef __cplusplus
}
#endif

#endif /* FASTSERVE_H */
