/* threads.c: many threads submitting to one engine at once (docs/embed.md).
 *
 *   cc -std=c11 -pthread -I native/include examples/c/threads.c -L dist -lfastserve -Wl,-rpath,"$PWD/dist" -o threads
 *   ./threads models/gec-tiny [THREADS=8] [REQUESTS_PER_THREAD=8]
 *
 * Each thread submits its requests (gec-tiny's prompt format, greedy, some seeded sampling), reads every event with
 * fs_request_next, and cancels every fifth request after its first token. It checks what the ABI promises: exactly
 * one FINAL per request and always last, completion_tokens equal to the TOKEN events seen, token indexes 0, 1, 2...,
 * the cancelled ones ending FS_REQUEST_CANCELLED (or finished first). Greedy requests for the same sentence must give
 * the same text on every thread. Prints one summary line; exit status 0 when every check held. */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <fastserve.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char* sentences[] = {
    "She was refreshingly free into shyness.",
    "He go to school every days.",
    "The dog chased it's tail.",
    "I has a apple.",
};
#define N_SENTENCES (sizeof sentences / sizeof sentences[0])

static fs_engine engine;
static int per_thread = 8;
static atomic_int finals, finished, cancelled, other, violations;
static char* greedy_text[N_SENTENCES];
static pthread_mutex_t text_lock = PTHREAD_MUTEX_INITIALIZER;

static void violation(const char* what, int thread, int i) {
    fprintf(stderr, "threads: thread %d request %d: %s\n", thread, i, what);
    atomic_fetch_add(&violations, 1);
}

static void* worker(void* arg) {
    int t = (int)(intptr_t)arg;
    char prompt[256], text[4096];
    for (int i = 0; i < per_thread; i++) {
        int s = (t + i) % (int)N_SENTENCES;
        int cancel = (t * per_thread + i) % 5 == 4;
        int sample = !cancel && i % 3 == 2;
        snprintf(prompt, sizeof prompt, "Correct: %s\nFixed:", sentences[s]);
        fs_request_options ro;
        fs_request_options_default(&ro);
        ro.max_tokens = 32;
        if (sample) {
            ro.temperature = 0.8f;
            ro.top_p = 0.95f;
            ro.seed = (uint64_t)(t * 1000 + i);
            ro.has_seed = 1;
        }
        fs_request req;
        int st = fs_submit_text(engine, prompt, strlen(prompt), &ro, &req);
        if (st != FS_OK) { violation(fs_last_error(), t, i); continue; }
        fs_event ev;
        ev.size = sizeof ev;
        int tokens = 0, n_finals = 0;
        size_t len = 0;
        for (;;) {
            st = fs_request_next(req, 30000, &ev);
            if (st != FS_OK) { violation(fs_status_name(st), t, i); break; }
            if (ev.kind == FS_EVENT_TOKEN) {
                if (n_finals) violation("a token after the final", t, i);
                if (ev.token_index != tokens) violation("token indexes out of order", t, i);
                tokens++;
                if (len + ev.text_length < sizeof text) { memcpy(text + len, ev.text, ev.text_length); len += ev.text_length; }
                if (cancel && tokens == 1) fs_request_cancel(req);
                continue;
            }
            n_finals++;
            if (len + ev.text_length < sizeof text) { memcpy(text + len, ev.text, ev.text_length); len += ev.text_length; }
            text[len] = 0;
            break;
        }
        if (n_finals == 1) {
            if (fs_request_next(req, 0, &ev) != FS_E_ENDED) violation("a second final", t, i);
            atomic_fetch_add(&finals, 1);
            if (ev.completion_tokens != tokens) violation("completion_tokens differs from the TOKEN events", t, i);
            if (ev.status == FS_REQUEST_FINISHED) atomic_fetch_add(&finished, 1);
            else if (ev.status == FS_REQUEST_CANCELLED) atomic_fetch_add(&cancelled, 1);
            else atomic_fetch_add(&other, 1);
            if (!cancel && ev.status != FS_REQUEST_FINISHED && ev.status != FS_REQUEST_OVERLOADED) violation("ended neither finished nor overloaded", t, i);
            if (!cancel && !sample && ev.status == FS_REQUEST_FINISHED) {
                pthread_mutex_lock(&text_lock);
                if (!greedy_text[s]) greedy_text[s] = strdup(text);
                else if (strcmp(greedy_text[s], text) != 0) violation("greedy text differs between threads", t, i);
                pthread_mutex_unlock(&text_lock);
            }
        }
        fs_request_free(req);
    }
    return NULL;
}

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: threads MODEL_DIR [THREADS] [REQUESTS_PER_THREAD]\n");
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 8;
    if (argc > 3) per_thread = atoi(argv[3]);
    if (threads < 1 || threads > 256 || per_thread < 1) { fprintf(stderr, "threads: bad counts\n"); return 2; }

    fs_model model;
    if (fs_model_load(argv[1], NULL, &model) != FS_OK) { fprintf(stderr, "threads: load: %s\n", fs_last_error()); return 1; }
    fs_engine_options eo;
    fs_engine_options_default(&eo);
    eo.kv_memory_bytes = 256ll << 20;
    eo.queue_interval_ms = 0; /* every request waits its turn: none is refused for queueing time */
    if (fs_engine_create(model, &eo, &engine) != FS_OK) { fprintf(stderr, "threads: engine: %s\n", fs_last_error()); return 1; }
    fs_model_free(model); /* the engine keeps the model alive */

    pthread_t* ids = calloc((size_t)threads, sizeof *ids);
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, worker, (void*)(intptr_t)t);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    free(ids);

    fs_engine_stats stats;
    stats.size = sizeof stats;
    fs_engine_stats_get(engine, &stats);
    fs_engine_free(engine);
    int total = threads * per_thread;
    if (atomic_load(&finals) != total) violation("not every request got its final", -1, -1);
    printf("threads: %d threads, %d requests, %d finals (%d finished, %d cancelled, %d other), %lld tokens, %d violations\n",
           threads, total, atomic_load(&finals), atomic_load(&finished), atomic_load(&cancelled), atomic_load(&other),
           (long long)stats.tokens_generated, atomic_load(&violations));
    for (size_t s = 0; s < N_SENTENCES; s++) free(greedy_text[s]);
    return atomic_load(&violations) == 0 ? 0 : 1;
}
