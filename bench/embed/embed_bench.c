/* embed_bench.c: the `fastserve batch` workload through libfastserve from C, with T submitting threads
 * (docs/embed.md, "Benchmark"; bench/embed/run.sh runs it beside `fastserve batch`).
 *
 *   embed_bench MODEL_DIR SENTENCES_FILE THREADS [pull|callback] [MAX_TOKENS=64]
 *   embed_bench MODEL_DIR SENTENCES_FILE 1 latency
 *
 * One sentence per line; each becomes gec-tiny's prompt "Correct: <sentence>\nFixed:" (with BOS, greedy), as the
 * batch input run.sh writes. The engine has batch's options (serve's defaults, no queue-time budget). Thread t takes
 * sentences t, t+T, t+2T... and submits them all, then (pull) reads each request's events to its final in order, or
 * (callback) lets the engine's thread count them. The clock runs from the moment every thread is ready to the last
 * final. Prints one JSON line.
 *
 * latency: the ABI's delivery cost of a token. One request at a time (nothing else running), the first 200 sentences,
 * pull then callback: the time from fs_submit_text to the first token as the C caller sees it, minus the engine's own
 * ttft_ms for the same request (taken where the engine emits the token): what detokenizing, the stop matcher, the
 * hand-off and the wake-up (pull) or call (callback) add. Prints the median and mean in microseconds. */
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
    atomic_fetch_add(&finals, 1);
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
        struct timespec ms = {0, 1000000L};
        while (atomic_load(&finals) + atomic_load(&errors) < n_sentences) nanosleep(&ms, NULL);
        for (int k = 0; k < mine; k++) if (reqs[k]) fs_request_free(reqs[k]);
    }
    free(reqs);
    return NULL;
}

static double first_seen;
static void on_first(const fs_event* ev, void* user) {
    double* engine_ttft = user;
    if (ev->kind == FS_EVENT_TOKEN && ev->token_index == 0) first_seen = now();
    if (ev->kind == FS_EVENT_FINAL) { *engine_ttft = ev->ttft_ms; atomic_fetch_add(&finals, 1); }
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

static int latency(void) {
    enum { N = 200 };
    static double delta[2][N];
    int n = n_sentences < N ? n_sentences : N;
    char prompt[1024];
    for (int mode = 0; mode < 2; mode++) {
        for (int i = 0; i < n; i++) {
            int len = snprintf(prompt, sizeof prompt, "Correct: %s\nFixed:", sentences[i]);
            fs_request_options ro;
            fs_request_options_default(&ro);
            ro.max_tokens = 8;
            double engine_ttft = -1, t0, seen = 0;
            fs_request req;
            if (mode == 1) {
                ro.on_event = on_first;
                ro.user = &engine_ttft;
                atomic_store(&finals, 0);
            }
            t0 = now();
            if (fs_submit_text(engine, prompt, (size_t)len, &ro, &req) != FS_OK) return 1;
            if (mode == 0) {
                fs_event ev;
                ev.size = sizeof ev;
                while (fs_request_next(req, -1, &ev) == FS_OK) {
                    if (ev.kind == FS_EVENT_TOKEN && ev.token_index == 0) seen = now();
                    if (ev.kind == FS_EVENT_FINAL) { engine_ttft = ev.ttft_ms; break; }
                }
            } else {
                struct timespec us = {0, 100000L};
                while (atomic_load(&finals) == 0) nanosleep(&us, NULL);
                seen = first_seen;
            }
            fs_request_free(req);
            delta[mode][i] = (seen - t0) * 1e6 - engine_ttft * 1e3;
        }
    }
    for (int mode = 0; mode < 2; mode++) {
        double sum = 0;
        for (int i = 0; i < n; i++) sum += delta[mode][i];
        qsort(delta[mode], (size_t)n, sizeof(double), cmp_double);
        printf("{\"latency\": \"%s\", \"requests\": %d, \"added_us_p50\": %.1f, \"added_us_mean\": %.1f}\n",
               mode == 0 ? "pull" : "callback", n, delta[mode][n / 2], sum / n);
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: embed_bench MODEL_DIR SENTENCES_FILE THREADS [pull|callback] [MAX_TOKENS]\n");
        return 2;
    }
    n_threads = atoi(argv[3]);
    callback_mode = argc > 4 && strcmp(argv[4], "callback") == 0;
    if (argc > 5) max_tokens = atoi(argv[5]);
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

    fs_model model;
    if (fs_model_load(argv[1], NULL, &model) != FS_OK) { fprintf(stderr, "embed_bench: %s\n", fs_last_error()); return 1; }
    fs_engine_options eo;
    fs_engine_options_default(&eo);
    eo.queue_interval_ms = 0; /* as `fastserve batch`: offline work has no queue-time budget */
    if (fs_engine_create(model, &eo, &engine) != FS_OK) { fprintf(stderr, "embed_bench: %s\n", fs_last_error()); return 1; }

    if (argc > 4 && strcmp(argv[4], "latency") == 0) {
        int rc = latency();
        fs_engine_free(engine);
        fs_model_free(model);
        return rc;
    }
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
