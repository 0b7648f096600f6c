/* embed_bench.c: the `fastserve batch` workload through libfastserve from C, with T submitting threads
 * (docs/embed.md, "Benchmark"; bench/embed/run.sh runs it beside `fastserve batch`).
 *
 *   embed_bench MODEL_DIR SENTENCES_FILE THREADS [pull|callback] [MAX_TOKENS=64] [PASSES=1]
 *   embed_bench MODEL_DIR SENTENCES_FILE 1 latency
 *
 * One sentence per line; each becomes gec-tiny's prompt "Correct: <sentence>\nFixed:" (with BOS, greedy), as the
 * batch input run.sh writes. The engine has batch's options (serve's defaults, no queue-time budget). Thread t takes
 * sentences t, t+T, t+2T... and submits them all, then (pull) reads each request's events to its final in order, or
 * (callback) lets the engine's thread count them. The clock runs from the moment every thread is ready to the last
 * final. Prints one JSON line.
 *
 * latency: the ABI's delivery cost of a token, first and later tokens apart (see latency() below). Prints one JSON
 * line per (delivery, token) with the median, P99 and mean in microseconds.
 *
 * PASSES (argument 6, default 1) repeats the sentence list, for runs long enough to time steadily. */
#define _POSIX_C_SOURCE 200809L
#include <fastserve.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char** sentences;
static int n_sentences, n_threads, max_tokens = 64, callback_mode;
static fs_engine engine;
static pthread_barrier_t start;
static atomic_llong tokens, finished, finals, errors;
/* Callback mode: the waiting threads sleep on this until the last final (polling would wake them thousands of times a
 * second, each wake-up taking a core from the engine's compute threads). */
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static long long done_target;

static void signal_if_done(void) {
    if (atomic_load(&finals) + atomic_load(&errors) < done_target) return;
    pthread_mutex_lock(&done_lock);
    pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&done_lock);
}

static void count_final(void) {
    atomic_fetch_add(&finals, 1);
    signal_if_done();
}

static void wait_finals(void) {
    pthread_mutex_lock(&done_lock);
    while (atomic_load(&finals) + atomic_load(&errors) < done_target) pthread_cond_wait(&done_cond, &done_lock);
    pthread_mutex_unlock(&done_lock);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void on_event(const fs_event* ev, void* user) {
    (void)user;
    if (ev->kind != FS_EVENT_FINAL) return;
    atomic_fetch_add(&tokens, ev->completion_tokens);
    if (ev->status == FS_REQUEST_FINISHED) atomic_fetch_add(&finished, 1);
    count_final();
}

static void* worker(void* arg) {
    int t = (int)(intptr_t)arg;
    int mine = (n_sentences - t + n_threads - 1) / n_threads;
    fs_request* reqs = calloc((size_t)mine, sizeof *reqs);
    char prompt[1024];
    fs_request_options ro;
    fs_request_options_default(&ro);
    ro.max_tokens = max_tokens;
    if (callback_mode) ro.on_event = on_event;
    pthread_barrier_wait(&start);
    for (int k = 0; k < mine; k++) {
        int len = snprintf(prompt, sizeof prompt, "Correct: %s\nFixed:", sentences[t + k * n_threads]);
        if (fs_submit_text(engine, prompt, (size_t)len, &ro, &reqs[k]) != FS_OK) {
            fprintf(stderr, "embed_bench: submit: %s\n", fs_last_error());
            atomic_fetch_add(&errors, 1);
            signal_if_done();
            reqs[k] = NULL;
        }
    }
    fs_event ev;
    ev.size = sizeof ev;
    for (int k = 0; k < mine; k++) {
        if (!reqs[k]) continue;
        if (!callback_mode) {
            int st;
            while ((st = fs_request_next(reqs[k], -1, &ev)) == FS_OK && ev.kind == FS_EVENT_TOKEN) {}
            if (st != FS_OK) atomic_fetch_add(&errors, 1);
            else on_event(&ev, NULL);
            fs_request_free(reqs[k]);
        }
    }
    if (callback_mode) {
        /* Requests are freed once every final has come (freeing earlier would cancel them). */
        wait_finals();
        for (int k = 0; k < mine; k++) if (reqs[k]) fs_request_free(reqs[k]);
    }
    free(reqs);
    return NULL;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

/* Delivery delay samples of the latency mode: [first token | later tokens][pull | callback], in microseconds. */
enum { LAT_REQUESTS = 200, LAT_TOKENS = 32 };
static double* lat[2][2];
static int n_lat[2][2];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void record(const fs_event* ev, int mode) {
    if (ev->kind != FS_EVENT_TOKEN) return;
    int later = ev->token_index > 0;
    lat[later][mode][n_lat[later][mode]++] = (double)(now_ns() - ev->emitted_ns) / 1e3;
}

static void on_latency(const fs_event* ev, void* user) {
    (void)user;
    record(ev, 1);
    if (ev->kind == FS_EVENT_FINAL) count_final();
}

static void summary(const char* token, const char* mode, double* v, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    printf("{\"latency\": \"%s\", \"token\": \"%s\", \"tokens\": %d, \"added_us_p50\": %.1f, \"added_us_p99\": %.1f, \"added_us_mean\": %.1f}\n",
           mode, token, n, n ? v[n / 2] : 0, n ? v[(int)(n * 0.99)] : 0, n ? sum / n : 0);
}

/* latency: one request at a time, nothing else running; for each token the time from the engine's hand-off
 * (fs_event.emitted_ns, taken before detokenizing) to the moment the C caller holds the event: what detokenizing, the
 * stop matcher, the queue and the wake-up (pull) or the call (callback) add. First tokens and later tokens apart. */
static int latency(void) {
    int n = n_sentences < LAT_REQUESTS ? n_sentences : LAT_REQUESTS;
    for (int k = 0; k < 2; k++)
        for (int m = 0; m < 2; m++) lat[k][m] = calloc((size_t)n * LAT_TOKENS, sizeof(double));
    char prompt[1024];
    for (int mode = 0; mode < 2; mode++) {
        for (int i = 0; i < n; i++) {
            int len = snprintf(prompt, sizeof prompt, "Correct: %s\nFixed:", sentences[i]);
            fs_request_options ro;
            fs_request_options_default(&ro);
            ro.max_tokens = LAT_TOKENS;
            ro.ignore_eos = 1; /* every request yields LAT_TOKENS tokens */
            fs_request req;
            if (mode == 1) {
                ro.on_event = on_latency;
                atomic_store(&finals, 0);
                done_target = 1;
            }
            if (fs_submit_text(engine, prompt, (size_t)len, &ro, &req) != FS_OK) return 1;
            if (mode == 0) {
                fs_event ev;
                ev.size = sizeof ev;
                while (fs_request_next(req, -1, &ev) == FS_OK && ev.kind == FS_EVENT_TOKEN) record(&ev, 0);
            } else {
                wait_finals();
            }
            fs_request_free(req);
        }
    }
    for (int mode = 0; mode < 2; mode++)
        for (int k = 0; k < 2; k++)
            summary(k ? "later" : "first", mode ? "callback" : "pull", lat[k][mode], n_lat[k][mode]);
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: embed_bench MODEL_DIR SENTENCES_FILE THREADS [pull|callback|latency] [MAX_TOKENS] [PASSES]\n");
        return 2;
    }
    n_threads = atoi(argv[3]);
    callback_mode = argc > 4 && strcmp(argv[4], "callback") == 0;
    if (argc > 5) max_tokens = atoi(argv[5]);
    int passes = argc > 6 ? atoi(argv[6]) : 1;
    if (passes < 1 || passes > 100) return 2;
    if (n_threads < 1 || n_threads > 256) return 2;
    FILE* f = fopen(argv[2], "r");
    if (!f) { perror(argv[2]); return 1; }
    char line[1024];
    int cap = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        if (n_sentences == cap) sentences = realloc(sentences, (size_t)(cap = cap ? 2 * cap : 1024) * sizeof *sentences);
        sentences[n_sentences++] = strdup(line);
    }
    fclose(f);
    int distinct = n_sentences;
    for (int p = 1; p < passes; p++)
        for (int i = 0; i < distinct; i++) {
            if (n_sentences == cap) sentences = realloc(sentences, (size_t)(cap *= 2) * sizeof *sentences);
            sentences[n_sentences++] = sentences[i];
        }

    fs_model model;
    if (fs_model_load(argv[1], NULL, &model) != FS_OK) { fprintf(stderr, "embed_bench: %s\n", fs_last_error()); return 1; }
    fs_engine_options eo;
    fs_engine_options_default(&eo);
    eo.queue_interval_ms = 0; /* as `fastserve batch`: offline work has no queue-time budget */
    if (getenv("EMBED_BENCH_ENGINE_THREADS")) eo.threads = atoi(getenv("EMBED_BENCH_ENGINE_THREADS")); /* 0 = all cores */
    if (fs_engine_create(model, &eo, &engine) != FS_OK) { fprintf(stderr, "embed_bench: %s\n", fs_last_error()); return 1; }

    if (argc > 4 && strcmp(argv[4], "latency") == 0) {
        int rc = latency();
        fs_engine_free(engine);
        fs_model_free(model);
        return rc;
    }
    done_target = n_sentences;
    pthread_barrier_init(&start, NULL, (unsigned)n_threads + 1);
    pthread_t* th = calloc((size_t)n_threads, sizeof *th);
    for (int t = 0; t < n_threads; t++) pthread_create(&th[t], NULL, worker, (void*)(intptr_t)t);
    pthread_barrier_wait(&start);
    double t0 = now();
    for (int t = 0; t < n_threads; t++) pthread_join(th[t], NULL);
    double secs = now() - t0;

    printf("{\"threads\": %d, \"delivery\": \"%s\", \"requests\": %d, \"finished\": %lld, \"errors\": %lld, "
           "\"generated_tokens\": %lld, \"seconds\": %.3f, \"requests_per_second\": %.1f, \"generated_tokens_per_second\": %.1f}\n",
           n_threads, callback_mode ? "callback" : "pull", n_sentences, (long long)atomic_load(&finished),
           (long long)atomic_load(&errors), (long long)atomic_load(&tokens), secs, n_sentences / secs,
           atomic_load(&tokens) / secs);
    fs_engine_free(engine);
    fs_model_free(model);
    return atomic_load(&errors) == 0 ? 0 : 1;
}
