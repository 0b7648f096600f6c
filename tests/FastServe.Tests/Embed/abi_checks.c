/* abi_checks.c: what libfastserve promises to a C caller that gets things wrong, or stops things midway
 * (docs/embed.md). Compiled and run by EmbedLibraryTests against dist/libfastserve.so:
 *   abi_checks MODEL_DIR
 * Prints "ok: N checks" and exits 0, or one line per broken promise and exits 1. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <fastserve.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int checks, failures;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        checks++;                                                                           \
        if (!(cond)) {                                                                      \
            failures++;                                                                     \
            fprintf(stderr, "FAILED line %d: %s: ", __LINE__, #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                   \
            fprintf(stderr, " (last error: %s)\n", fs_last_error());                        \
        }                                                                                   \
    } while (0)

#define STATUS(call, want) \
    do { int st_ = (call); CHECK(st_ == (want), "%s returned %s, expected %s", #call, fs_status_name(st_), fs_status_name(want)); } while (0)

static const char* PROMPT = "Correct: She was refreshingly free into shyness.\nFixed:";

static int calls_before_cancel;
static int cancel_after_two(uint64_t done, uint64_t total, void* user) {
    (void)total;
    int* calls = user;
    ++*calls;
    return done >= 2; /* stop on the second matrix */
}

static int progress_total_seen;
static int count_progress(uint64_t done, uint64_t total, void* user) {
    (void)user;
    if (done == total) progress_total_seen = 1;
    return 0;
}

/* Callback mode: counts events per request; the user pointer is a struct of counters. */
typedef struct {
    atomic_int tokens, finals, after_final, status;
    atomic_int free_inside;   /* 1: free the request from inside its final callback */
    fs_request self;
    atomic_int engine_free_status;
    fs_engine engine;
} cb_state;

static void on_event(const fs_event* ev, void* user) {
    cb_state* s = user;
    if (atomic_load(&s->finals) > 0) atomic_fetch_add(&s->after_final, 1);
    if (ev->kind == FS_EVENT_TOKEN) { atomic_fetch_add(&s->tokens, 1); return; }
    atomic_store(&s->status, ev->status);
    if (s->engine) atomic_store(&s->engine_free_status, fs_engine_free(s->engine));
    if (atomic_load(&s->free_inside)) fs_request_free(s->self);
    atomic_fetch_add(&s->finals, 1);
}

static void wait_finals(cb_state* s, int n) {
    for (int i = 0; i < 3000 && atomic_load(&s->finals) < n; i++) sleep_ms(1);
}

static int drain(fs_request req, fs_event* ev, int* tokens) {
    *tokens = 0;
    for (;;) {
        int st = fs_request_next(req, 30000, ev);
        if (st != FS_OK) return st;
        if (ev->kind == FS_EVENT_FINAL) return FS_OK;
        ++*tokens;
    }
}

typedef struct { fs_request req; int status; } waiter_arg;
static void* wait_forever(void* p) {
    waiter_arg* w = p;
    fs_event ev;
    ev.size = sizeof ev;
    int st;
    do st = fs_request_next(w->req, -1, &ev); while (st == FS_OK && ev.kind == FS_EVENT_TOKEN);
    w->status = st;
    return NULL;
}

/* Cancel storm: STORM threads cancel (and, with free_mine, free their share of) the same requests at once. */
#define STORM 8
#define STORM_REQUESTS 64
typedef struct { fs_request* reqs; int index; int free_mine; atomic_int bad; } storm_arg;
static void* storm(void* p) {
    storm_arg* a = p;
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < STORM_REQUESTS; i++) {
            int st = fs_request_cancel(a->reqs[i]);
            if (st != FS_OK && st != FS_E_INVALID_HANDLE) atomic_fetch_add(&a->bad, 1);
        }
    if (a->free_mine)
        for (int i = a->index; i < STORM_REQUESTS; i += STORM)
            if (fs_request_free(a->reqs[i]) != FS_OK) atomic_fetch_add(&a->bad, 1);
    return NULL;
}

static void run_storm(fs_engine engine, const fs_request_options* lo, int free_mine) {
    fs_request reqs[STORM_REQUESTS];
    for (int i = 0; i < STORM_REQUESTS; i++) STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), lo, &reqs[i]), FS_OK);
    storm_arg args[STORM];
    pthread_t th[STORM];
    for (int k = 0; k < STORM; k++) {
        args[k].reqs = reqs;
        args[k].index = k;
        args[k].free_mine = free_mine;
        atomic_init(&args[k].bad, 0);
        pthread_create(&th[k], NULL, storm, &args[k]);
    }
    int bad = 0;
    for (int k = 0; k < STORM; k++) { pthread_join(th[k], NULL); bad += atomic_load(&args[k].bad); }
    CHECK(bad == 0, "%d unexpected statuses in the storm", bad);
    if (free_mine) {
        for (int i = 0; i < STORM_REQUESTS; i++) STATUS(fs_request_free(reqs[i]), FS_E_INVALID_HANDLE);
        return;
    }
    int finals_ok = 0;
    for (int i = 0; i < STORM_REQUESTS; i++) {
        fs_event ev;
        ev.size = sizeof ev;
        int tokens;
        if (drain(reqs[i], &ev, &tokens) == FS_OK && ev.completion_tokens == tokens &&
            fs_request_next(reqs[i], 0, &ev) == FS_E_ENDED && (ev.status == FS_REQUEST_CANCELLED || ev.status == FS_REQUEST_FINISHED))
            finals_ok++;
        fs_request_free(reqs[i]);
    }
    CHECK(finals_ok == STORM_REQUESTS, "%d of %d requests ended with one final after the storm", finals_ok, STORM_REQUESTS);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The greedy ids of PROMPT-like text on one engine (up to cap), or -1. */
static int greedy_ids(fs_engine engine, const char* text, int32_t* out, int cap) {
    fs_request_options ro;
    fs_request_options_default(&ro);
    ro.max_tokens = cap;
    fs_request req;
    if (fs_submit_text(engine, text, strlen(text), &ro, &req) != FS_OK) return -1;
    fs_event ev;
    ev.size = sizeof ev;
    int n = 0;
    while (fs_request_next(req, 60000, &ev) == FS_OK && ev.kind == FS_EVENT_TOKEN) out[n++] = ev.token_id;
    int ok = ev.kind == FS_EVENT_FINAL && ev.status == FS_REQUEST_FINISHED;
    fs_request_free(req);
    return ok ? n : -1;
}

/* Cancel during prefill: a prompt of about 200 tokens on an engine whose steps take 8 prompt tokens each (about 25
 * prefill steps, on the scalar backend). Once two steps have run, cancel; the final must come with no token generated,
 * within two engine steps of the cancel (the step running then and, with overlap, the one already prepared). A run
 * whose prefill ended before the cancel landed (a descheduled checker) is tried again, up to five times. */
static void prefill_cancel(fs_model model, const fs_engine_options* base) {
    char prompt[4096] = "Correct:";
    int32_t ids[512];
    size_t n = 0;
    while (n < 190 && strlen(prompt) + 64 < sizeof prompt) {
        strcat(prompt, " the cat sat on a mat and");
        STATUS(fs_tokenize(model, prompt, strlen(prompt), 1, ids, 512, &n), FS_OK);
    }
    fs_engine_options eo = *base;
    eo.backend = "reference";
    eo.max_batched_tokens = 8;
    eo.prefix_caching = 0;
    fs_engine engine;
    STATUS(fs_engine_create(model, &eo, &engine), FS_OK);
    fs_request_options ro;
    fs_request_options_default(&ro);
    ro.max_tokens = 16;
    fs_engine_stats st;
    st.size = sizeof st;
    int landed = 0;
    for (int attempt = 0; attempt < 5 && !landed; attempt++) {
        fs_request req;
        fs_engine_stats_get(engine, &st);
        int64_t start = st.steps;
        STATUS(fs_submit_tokens(engine, ids, n, &ro, &req), FS_OK);
        do fs_engine_stats_get(engine, &st); while (st.steps < start + 2);
        int64_t at_cancel = st.steps;
        int64_t t0 = now_ns();
        STATUS(fs_request_cancel(req), FS_OK);
        fs_event ev;
        ev.size = sizeof ev;
        int tokens;
        STATUS(drain(req, &ev, &tokens), FS_OK);
        double ms = (now_ns() - t0) / 1e6;
        fs_engine_stats_get(engine, &st);
        fs_request_free(req);
        if (tokens > 0 || at_cancel - start >= (int64_t)(n + 7) / 8) continue; /* prefill was over: try again */
        landed = 1;
        CHECK(ev.status == FS_REQUEST_CANCELLED, "prefill cancel: status %d", ev.status);
        CHECK(st.steps - at_cancel <= 2, "prefill cancel took %lld steps", (long long)(st.steps - at_cancel));
        printf("prefill cancel: %zu-token prompt, cancelled after %lld of %zu prefill steps, final %.2f ms and %lld steps later\n",
               n, (long long)(at_cancel - start), (n + 7) / 8, ms, (long long)(st.steps - at_cancel));
    }
    CHECK(landed, "no cancel landed during prefill in 5 tries");
    STATUS(fs_engine_free(engine), FS_OK);
}

int main(int argc, char** argv) {
    if (argc < 2) { fprintf(stderr, "usage: abi_checks MODEL_DIR\n"); return 2; }
    const char* dir = argv[1];
    CHECK((fs_abi_version() >> 16) == (FS_ABI_VERSION >> 16), "abi %u", fs_abi_version());
    CHECK(fs_last_error() != NULL, "last error is never NULL");
    CHECK(strcmp(fs_status_name(FS_E_INVALID_HANDLE), "invalid_handle") == 0, "name %s", fs_status_name(FS_E_INVALID_HANDLE));
    CHECK(strcmp(fs_status_name(999), "unknown") == 0, "unknown status");

    /* Null pointers and defaults. */
    STATUS(fs_model_options_default(NULL), FS_E_INVALID_ARGUMENT);
    STATUS(fs_engine_options_default(NULL), FS_E_INVALID_ARGUMENT);
    STATUS(fs_request_options_default(NULL), FS_E_INVALID_ARGUMENT);
    fs_model model = (fs_model)1;
    STATUS(fs_model_load(NULL, NULL, &model), FS_E_INVALID_ARGUMENT);
    CHECK(model == NULL, "the output is cleared on failure");
    STATUS(fs_model_load(dir, NULL, NULL), FS_E_INVALID_ARGUMENT);

    /* A bad model directory fails cleanly, with a message. */
    STATUS(fs_model_load("/nonexistent/model/dir", NULL, &model), FS_E_MODEL);
    CHECK(strstr(fs_last_error(), "model.not_found") != NULL, "message names the code: %s", fs_last_error());
    STATUS(fs_model_load("/tmp", NULL, &model), FS_E_MODEL);

    /* A wrong struct size. */
    fs_model_options mo;
    fs_model_options_default(&mo);
    CHECK(mo.size == sizeof mo, "defaults set the size");
    mo.size = 8;
    STATUS(fs_model_load(dir, &mo, &model), FS_E_STRUCT_SIZE);
    fs_model_options_default(&mo);
    mo.quantize = 7;
    STATUS(fs_model_load(dir, &mo, &model), FS_E_INVALID_ARGUMENT);

    /* Load cancelled from the progress callback: nothing loaded, the callback stopped being called. */
    fs_model_options_default(&mo);
    mo.progress = cancel_after_two;
    mo.progress_user = &calls_before_cancel;
    STATUS(fs_model_load(dir, &mo, &model), FS_E_CANCELLED);
    CHECK(model == NULL, "no model after a cancelled load");
    CHECK(calls_before_cancel == 2, "progress called %d times", calls_before_cancel);

    /* The real load, with progress to the end. */
    fs_model_options_default(&mo);
    mo.progress = count_progress;
    STATUS(fs_model_load(dir, &mo, &model), FS_OK);
    CHECK(progress_total_seen, "progress reached done == total");

    /* Tokenize and detokenize, with too small buffers. */
    size_t n = 0;
    STATUS(fs_tokenize(model, PROMPT, strlen(PROMPT), 1, NULL, 0, &n), FS_E_BUFFER_TOO_SMALL);
    CHECK(n > 5, "count given when the buffer is too small: %zu", n);
    int32_t ids[256];
    size_t n2 = 0;
    STATUS(fs_tokenize(model, PROMPT, strlen(PROMPT), 1, ids, 256, &n2), FS_OK);
    CHECK(n2 == n && ids[0] == 1, "bos first, %zu ids", n2);
    char text[512];
    size_t bytes = 0;
    STATUS(fs_detokenize(model, ids + 1, n2 - 1, text, 4, &bytes), FS_E_BUFFER_TOO_SMALL);
    STATUS(fs_detokenize(model, ids + 1, n2 - 1, text, sizeof text, &bytes), FS_OK);
    CHECK(bytes == strlen(PROMPT) && strcmp(text, PROMPT) == 0, "round trip: '%s'", text);
    int32_t bad_id = 1 << 30;
    STATUS(fs_detokenize(model, &bad_id, 1, text, sizeof text, &bytes), FS_E_INVALID_ARGUMENT);
    STATUS(fs_tokenize(model, "\xff\xfe", 2, 0, ids, 256, &n2), FS_E_INVALID_ARGUMENT);
    STATUS(fs_tokenize(model, NULL, 3, 0, ids, 256, &n2), FS_E_INVALID_ARGUMENT);

    /* Engine options out of range; an unknown backend. */
    fs_engine_options eo;
    fs_engine_options_default(&eo);
    eo.kv_memory_bytes = 64ll << 20;
    eo.queue_interval_ms = 0; /* no queue-time budget: long requests queued behind others are never refused */
    fs_engine engine = (fs_engine)1;
    fs_engine_options bad = eo;
    bad.max_seqs = 0;
    STATUS(fs_engine_create(model, &bad, &engine), FS_E_INVALID_ARGUMENT);
    CHECK(engine == NULL, "no engine on failure");
    bad = eo;
    bad.backend = "no-such-backend";
    STATUS(fs_engine_create(model, &bad, &engine), FS_E_BACKEND);
    /* The cuda backend: runs where there is a GPU, else FS_E_BACKEND naming what is missing (cuda.no_driver, ...). */
    bad = eo;
    bad.backend = "cuda";
    int cuda = fs_engine_create(model, &bad, &engine);
    CHECK(cuda == FS_OK || (cuda == FS_E_BACKEND && strncmp(fs_last_error(), "cuda.", 5) == 0), "cuda: %s", fs_status_name(cuda));
    if (cuda == FS_OK) STATUS(fs_engine_free(engine), FS_OK);
    /* The vulkan backend (lavapipe where there is no GPU): the same greedy tokens as cpu, or FS_E_BACKEND naming what
     * is missing (vulkan.no_device, vulkan.no_shaders, ...). Prints which, for the test to hold it to what it expects. */
    bad = eo;
    bad.backend = "vulkan";
    int vulkan = fs_engine_create(model, &bad, &engine);
    CHECK(vulkan == FS_OK || (vulkan == FS_E_BACKEND && strncmp(fs_last_error(), "vulkan.", 7) == 0), "vulkan: %s", fs_status_name(vulkan));
    if (vulkan == FS_OK) {
        int32_t on_vulkan[64], on_cpu[64];
        int nv = greedy_ids(engine, PROMPT, on_vulkan, 64);
        STATUS(fs_engine_free(engine), FS_OK);
        STATUS(fs_engine_create(model, &eo, &engine), FS_OK);
        int nc = greedy_ids(engine, PROMPT, on_cpu, 64);
        STATUS(fs_engine_free(engine), FS_OK);
        CHECK(nv > 3 && nv == nc && memcmp(on_vulkan, on_cpu, (size_t)nv * sizeof(int32_t)) == 0, "vulkan %d tokens, cpu %d", nv, nc);
        printf("vulkan: %d greedy tokens, %s cpu's\n", nv, nv == nc && memcmp(on_vulkan, on_cpu, (size_t)nv * sizeof(int32_t)) == 0 ? "equal to" : "NOT equal to");
    } else {
        printf("vulkan: unavailable (%s)\n", fs_last_error());
    }
    bad = eo;
    bad.size = sizeof bad + 8;
    STATUS(fs_engine_create(model, &bad, &engine), FS_E_STRUCT_SIZE);
    STATUS(fs_engine_create((fs_model)(uintptr_t)0x1234567890ull, &eo, &engine), FS_E_INVALID_HANDLE);
    STATUS(fs_engine_create(model, &eo, &engine), FS_OK);

    /* Handles of the wrong kind and forged ones. */
    STATUS(fs_engine_free((fs_engine)model), FS_E_INVALID_HANDLE);
    STATUS(fs_model_free((fs_model)engine), FS_E_INVALID_HANDLE);
    STATUS(fs_request_cancel((fs_request)engine), FS_E_INVALID_HANDLE);
    STATUS(fs_request_free(NULL), FS_E_INVALID_HANDLE);
    STATUS(fs_request_free((fs_request)(uintptr_t)0x3000000100000001ull), FS_E_INVALID_HANDLE);
    STATUS(fs_request_free((fs_request)(uintptr_t)~0ull), FS_E_INVALID_HANDLE);

    /* Request options the rules refuse fail the submit itself. */
    fs_request_options ro;
    fs_request_options_default(&ro);
    fs_request req = (fs_request)1;
    fs_request_options br = ro;
    br.temperature = -1;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &br, &req), FS_E_INVALID_ARGUMENT);
    CHECK(req == NULL, "no request on failure");
    CHECK(strstr(fs_last_error(), "sampling.invalid") != NULL, "%s", fs_last_error());
    br = ro;
    br.max_tokens = 0;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &br, &req), FS_E_INVALID_ARGUMENT);
    br = ro;
    br.priority = 9;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &br, &req), FS_E_INVALID_ARGUMENT);
    br = ro;
    br.n_stop = 2;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &br, &req), FS_E_INVALID_ARGUMENT);
    br = ro;
    br.size = 4;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &br, &req), FS_E_STRUCT_SIZE);
    STATUS(fs_submit_text(engine, "\xc3\x28", 2, &ro, &req), FS_E_INVALID_ARGUMENT);
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &ro, NULL), FS_E_INVALID_ARGUMENT);

    /* Requests the engine refuses still get exactly one final: an empty prompt, an id outside the vocabulary. */
    fs_event ev;
    ev.size = sizeof ev;
    int tokens;
    STATUS(fs_submit_tokens(engine, NULL, 0, &ro, &req), FS_OK);
    STATUS(drain(req, &ev, &tokens), FS_OK);
    CHECK(ev.status == FS_REQUEST_INVALID && ev.error_code != NULL, "empty prompt: status %d", ev.status);
    STATUS(fs_request_next(req, 0, &ev), FS_E_ENDED);
    STATUS(fs_request_free(req), FS_OK);
    STATUS(fs_request_free(req), FS_E_INVALID_HANDLE); /* double free */
    STATUS(fs_request_next(req, 0, &ev), FS_E_INVALID_HANDLE);
    int32_t oov[2] = {1, 1 << 29};
    STATUS(fs_submit_tokens(engine, oov, 2, &ro, &req), FS_OK);
    STATUS(drain(req, &ev, &tokens), FS_OK);
    CHECK(ev.status == FS_REQUEST_INVALID, "out-of-vocabulary prompt: status %d", ev.status);
    fs_request_free(req);

    /* A greedy request from ids equals the same request from text; event size checked. */
    STATUS(fs_tokenize(model, PROMPT, strlen(PROMPT), 1, ids, 256, &n), FS_OK);
    STATUS(fs_submit_tokens(engine, ids, n, &ro, &req), FS_OK);
    ev.size = 0;
    STATUS(fs_request_next(req, 1000, &ev), FS_E_STRUCT_SIZE);
    ev.size = sizeof ev;
    int64_t before = now_ns();
    STATUS(fs_request_next(req, 30000, &ev), FS_OK);
    CHECK(ev.kind == FS_EVENT_TOKEN && ev.emitted_ns >= before - 1000000000ll && ev.emitted_ns <= now_ns(),
          "emitted_ns %lld is CLOCK_MONOTONIC (%lld..%lld)", (long long)ev.emitted_ns, (long long)before, (long long)now_ns());
    /* A caller built against ABI 1.0 passes the 96-byte event without emitted_ns: it gets that prefix, and the bytes
     * after it stay untouched. */
    fs_event old;
    memset(&old, 0x5a, sizeof old);
    old.size = (uint32_t)offsetof(fs_event, emitted_ns);
    STATUS(fs_request_next(req, 30000, &old), FS_OK);
    CHECK(old.size == offsetof(fs_event, emitted_ns) && old.kind == FS_EVENT_TOKEN && old.token_index == 1 &&
          old.emitted_ns == 0x5a5a5a5a5a5a5a5all, "1.0 event: size %u kind %d index %d", old.size, old.kind, old.token_index);
    STATUS(drain(req, &ev, &tokens), FS_OK);
    tokens += 2;
    CHECK(ev.status == FS_REQUEST_FINISHED && ev.finish_reason == FS_FINISH_EOS, "status %d finish %d", ev.status, ev.finish_reason);
    CHECK(ev.emitted_ns >= before, "the final has its emitted_ns");
    CHECK(ev.completion_tokens == tokens && tokens > 3, "tokens %d vs %d", ev.completion_tokens, tokens);
    CHECK((size_t)ev.prompt_tokens == n, "prompt tokens %d", ev.prompt_tokens);
    fs_request_free(req);

    /* Stop strings: the text ends before the stop string, finish reason stop. */
    const char* stops[] = {" free"};
    fs_request_options so = ro;
    so.stop = stops;
    so.n_stop = 1;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &so, &req), FS_OK);
    char out[1024];
    size_t len = 0;
    for (;;) {
        int st = fs_request_next(req, 30000, &ev);
        if (st != FS_OK) { CHECK(0, "next: %s", fs_status_name(st)); break; }
        memcpy(out + len, ev.text, ev.text_length);
        len += ev.text_length;
        if (ev.kind == FS_EVENT_FINAL) break;
    }
    out[len] = 0;
    CHECK(ev.finish_reason == FS_FINISH_STOP && strcmp(out, " She was refreshingly") == 0, "stop: finish %d, '%s'", ev.finish_reason, out);
    fs_request_free(req);

    /* Timeout with nothing yet: a long prompt with 0 ms wait. Then cancel: the final says cancelled. */
    fs_request_options lo = ro;
    lo.max_tokens = 2000;
    lo.ignore_eos = 1;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &lo, &req), FS_OK);
    STATUS(fs_request_cancel(req), FS_OK);
    STATUS(fs_request_cancel(req), FS_OK);
    STATUS(drain(req, &ev, &tokens), FS_OK);
    CHECK(ev.status == FS_REQUEST_CANCELLED || (ev.status == FS_REQUEST_FINISHED && ev.finish_reason == FS_FINISH_CONTEXT_FULL), "cancelled: status %d", ev.status);
    CHECK(tokens < 2000, "cancel took effect (%d tokens)", tokens);
    STATUS(fs_request_cancel(req), FS_OK); /* after the end: a no-op */
    fs_request_free(req);

    /* Callback mode: fs_request_next is refused, events arrive, exactly one final, none after it. */
    cb_state cs;
    memset(&cs, 0, sizeof cs);
    fs_request_options co = ro;
    co.on_event = on_event;
    co.user = &cs;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &co, &req), FS_OK);
    STATUS(fs_request_next(req, 0, &ev), FS_E_STATE);
    wait_finals(&cs, 1);
    CHECK(atomic_load(&cs.finals) == 1 && atomic_load(&cs.tokens) > 3 && atomic_load(&cs.after_final) == 0,
          "callback: %d finals, %d tokens", atomic_load(&cs.finals), atomic_load(&cs.tokens));
    CHECK(atomic_load(&cs.status) == FS_REQUEST_FINISHED, "callback status %d", atomic_load(&cs.status));
    fs_request_free(req);

    /* A callback that frees its own request, and one that tries to free the engine (refused). */
    memset(&cs, 0, sizeof cs);
    atomic_store(&cs.free_inside, 1);
    cs.engine = engine;
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &co, &cs.self), FS_OK);
    wait_finals(&cs, 1);
    CHECK(atomic_load(&cs.finals) == 1, "finals %d", atomic_load(&cs.finals));
    CHECK(atomic_load(&cs.engine_free_status) == FS_E_STATE, "engine free inside a callback: %d", atomic_load(&cs.engine_free_status));
    STATUS(fs_request_free(cs.self), FS_E_INVALID_HANDLE); /* already freed by its callback */

    /* Freeing a request in flight: no callback after fs_request_free returns. */
    memset(&cs, 0, sizeof cs);
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &co, &req), FS_OK);
    STATUS(fs_request_free(req), FS_OK);
    int after = atomic_load(&cs.tokens) + atomic_load(&cs.finals);
    sleep_ms(200);
    CHECK(atomic_load(&cs.tokens) + atomic_load(&cs.finals) == after, "events after free");

    /* A thread waiting without limit is woken by a free from another thread. gec-tiny's context is 256 tokens, so on
       a quiet machine a request can end before the free: try until a free lands while the waiter still waits. */
    int woken = 0, tries = 0;
    for (; tries < 20 && !woken; tries++) {
        STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &lo, &req), FS_OK);
        waiter_arg w = {req, -1};
        pthread_t th;
        pthread_create(&th, NULL, wait_forever, &w);
        sleep_ms(2);
        STATUS(fs_request_free(req), FS_OK);
        pthread_join(th, NULL);
        CHECK(w.status == FS_E_INVALID_HANDLE || w.status == FS_OK, "waiter got %s", fs_status_name(w.status));
        woken = w.status == FS_E_INVALID_HANDLE;
    }
    CHECK(woken, "no free landed while the waiter waited, in %d tries", tries);

    /* Cancel storms: every request still gets exactly one final; frees racing cancels are clean. */
    fs_request_options so2 = lo;
    so2.max_tokens = 200;
    run_storm(engine, &so2, 0);
    run_storm(engine, &so2, 1);

    prefill_cancel(model, &eo);

    /* Stats. */
    fs_engine_stats stats;
    stats.size = 3;
    STATUS(fs_engine_stats_get(engine, &stats), FS_E_STRUCT_SIZE);
    stats.size = sizeof stats;
    STATUS(fs_engine_stats_get(engine, &stats), FS_OK);
    CHECK(stats.submitted >= 8 && stats.tokens_generated > 0 && stats.kv_blocks_total > 0, "stats: %lld submitted", (long long)stats.submitted);

    /* Freeing the engine with requests in flight: each gets its final (cancelled) before fs_engine_free returns; the
     * handles stay readable until freed. Freeing the model first is harmless: the engine holds it. */
    fs_request inflight[4];
    for (int i = 0; i < 4; i++) STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &lo, &inflight[i]), FS_OK);
    STATUS(fs_model_free(model), FS_OK);
    STATUS(fs_model_free(model), FS_E_INVALID_HANDLE);
    STATUS(fs_engine_free(engine), FS_OK);
    STATUS(fs_engine_free(engine), FS_E_INVALID_HANDLE);
    for (int i = 0; i < 4; i++) {
        STATUS(drain(inflight[i], &ev, &tokens), FS_OK);
        CHECK(ev.status == FS_REQUEST_CANCELLED, "in flight at engine free: status %d", ev.status);
        STATUS(fs_request_free(inflight[i]), FS_OK);
    }
    STATUS(fs_submit_text(engine, PROMPT, strlen(PROMPT), &ro, &req), FS_E_INVALID_HANDLE);

    /* Two engines on one model, at once, each with its own requests. */
    STATUS(fs_model_load(dir, NULL, &model), FS_OK);
    fs_engine e1, e2;
    STATUS(fs_engine_create(model, &eo, &e1), FS_OK);
    STATUS(fs_engine_create(model, &eo, &e2), FS_OK);
    fs_request r1, r2;
    STATUS(fs_submit_text(e1, PROMPT, strlen(PROMPT), &ro, &r1), FS_OK);
    STATUS(fs_submit_text(e2, PROMPT, strlen(PROMPT), &ro, &r2), FS_OK);
    int t1, t2;
    fs_event ev2;
    ev2.size = sizeof ev2;
    STATUS(drain(r1, &ev, &t1), FS_OK);
    STATUS(drain(r2, &ev2, &t2), FS_OK);
    CHECK(ev.status == FS_REQUEST_FINISHED && ev2.status == FS_REQUEST_FINISHED && t1 == t2, "two engines: %d vs %d tokens", t1, t2);
    fs_request_free(r1);
    fs_request_free(r2);
    STATUS(fs_engine_free(e1), FS_OK);
    STATUS(fs_engine_free(e2), FS_OK);
    STATUS(fs_model_free(model), FS_OK);

    /* FP8 quantized at load, on the reference backend: a greedy request still runs to its end. */
    fs_model_options_default(&mo);
    mo.quantize = FS_QUANTIZE_FP8_PER_CHANNEL;
    STATUS(fs_model_load(dir, &mo, &model), FS_OK);
    fs_engine_options ref = eo;
    ref.backend = "reference";
    STATUS(fs_engine_create(model, &ref, &e1), FS_OK);
    STATUS(fs_submit_text(e1, PROMPT, strlen(PROMPT), &ro, &r1), FS_OK);
    STATUS(drain(r1, &ev, &t1), FS_OK);
    CHECK(ev.status == FS_REQUEST_FINISHED && t1 > 3, "fp8 on reference: status %d, %d tokens", ev.status, t1);
    fs_request_free(r1);
    STATUS(fs_engine_free(e1), FS_OK);
    STATUS(fs_model_free(model), FS_OK);

    if (failures) { fprintf(stderr, "%d of %d checks failed\n", failures, checks); return 1; }
    printf("ok: %d checks\n", checks);
    return 0;
}
