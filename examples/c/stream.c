/* stream.c: streams one grammar correction from a model through libfastserve (docs/embed.md).
 *
 *   cc -std=c11 -I native/include examples/c/stream.c -L dist -lfastserve -Wl,-rpath,"$PWD/dist" -o stream
 *   ./stream models/gec-tiny "She was refreshingly free into shyness."
 *
 * Prints the corrected text as it is generated on stdout, then one summary line on stderr. With --raw the second
 * argument is the whole prompt, as is (no "Correct: ...\nFixed:" around it). Exit status 0 when the request finished. */
#include <fastserve.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char* what, int status) {
    fprintf(stderr, "stream: %s: %s (%s)\n", what, fs_status_name(status), fs_last_error());
    return 1;
}

int main(int argc, char** argv) {
    int raw = argc > 1 && strcmp(argv[1], "--raw") == 0;
    if (argc - raw < 3) {
        fprintf(stderr, "usage: stream [--raw] MODEL_DIR SENTENCE [MAX_TOKENS]\n");
        return 2;
    }
    const char* dir = argv[1 + raw];
    const char* sentence = argv[2 + raw];
    int max_tokens = argc - raw > 3 ? atoi(argv[3 + raw]) : 64;
    if ((fs_abi_version() >> 16) != (FS_ABI_VERSION >> 16)) {
        fprintf(stderr, "stream: libfastserve ABI %u, this program was built for %u\n", fs_abi_version() >> 16, FS_ABI_VERSION >> 16);
        return 1;
    }

    fs_model model;
    int st = fs_model_load(dir, NULL, &model);
    if (st != FS_OK) return fail("load", st);

    fs_engine_options eo;
    fs_engine_options_default(&eo);
    eo.kv_memory_bytes = 64ll << 20;
    fs_engine engine;
    st = fs_engine_create(model, &eo, &engine);
    if (st != FS_OK) return fail("engine", st);

    /* The model card's prompt format: the model continues "Correct: <sentence>\nFixed:" with the corrected sentence. */
    size_t n = strlen(sentence) + 32;
    char* prompt = malloc(n);
    if (!prompt) return 1;
    if (raw) snprintf(prompt, n, "%s", sentence);
    else snprintf(prompt, n, "Correct: %s\nFixed:", sentence);

    fs_request_options ro;
    fs_request_options_default(&ro); /* greedy */
    ro.max_tokens = max_tokens;
    fs_request req;
    st = fs_submit_text(engine, prompt, strlen(prompt), &ro, &req);
    free(prompt);
    if (st != FS_OK) return fail("submit", st);

    fs_event ev;
    ev.size = sizeof ev;
    int finished = 0;
    for (;;) {
        st = fs_request_next(req, -1, &ev);
        if (st != FS_OK) return fail("next", st);
        fwrite(ev.text, 1, ev.text_length, stdout);
        fflush(stdout);
        if (ev.kind == FS_EVENT_FINAL) break;
    }
    finished = ev.status == FS_REQUEST_FINISHED;
    fprintf(stderr, "\nstream: status %d finish %d, %d prompt tokens, %d generated, first token %.1f ms, total %.1f ms%s%s\n",
            ev.status, ev.finish_reason, ev.prompt_tokens, ev.completion_tokens, ev.ttft_ms, ev.latency_ms,
            ev.error_code ? ", error " : "", ev.error_code ? ev.error_code : "");

    fs_request_free(req);
    fs_engine_free(engine);
    fs_model_free(model);
    return finished ? 0 : 1;
}
