/* libFuzzer target for the Jinja interpreter: the input is a template,
 * rendered with a fixed conversation (system, user, assistant with a tool
 * call, tool result), tools and the usual variables, under small limits so
 * that every input finishes fast. Parsing and rendering must either succeed
 * with a NUL-terminated output of the reported length, or fail with a
 * "Kind: message" error; never crash, leak, or run away (the step, depth,
 * memory and output bounds end hostile templates with an error). The
 * template is copied to an exact-size heap buffer so ASan flags over-reads.
 *   ./fuzz_jinja -max_total_time=60 -dict=... fuzz/seeds/fuzz_jinja */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "server/jinja.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char k_vars[] =
    "{\"messages\":["
    "{\"role\":\"system\",\"content\":\"You are terse.\"},"
    "{\"role\":\"user\",\"content\":\"Weather in Paris? \\u00e9\\u732b {{ x }}\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call12345\",\"type\":\"function\","
    "\"function\":{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"call12345\",\"content\":\"18C\"},"
    "{\"role\":\"assistant\",\"content\":\"<think>hm</think>It is 18C.\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\",\"n\":3,\"f\":1.5}";

static int well_formed_error(const char *err) {
    const char *colon = strstr(err, ": ");
    return colon && colon > err && colon[2] != '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json_t *vars;
    if (!vars && !(vars = json_loads(k_vars, 0, NULL))) abort();
    char *src = malloc(size ? size : 1);
    if (size) memcpy(src, data, size);
    pam_jinja *t = NULL;
    char err[512];
    pam_status st = pam_jinja_parse(src, size, &t, err, sizeof err);
    free(src);
    if (st != PAM_OK) {
        if (t || !well_formed_error(err)) abort();
        return 0;
    }
    pam_jinja_limits lim;
    pam_jinja_limits_default(&lim);
    lim.max_steps = 200000;
    lim.max_memory_bytes = 32 << 20;
    lim.max_output_bytes = 1 << 20;
    lim.max_depth = 100;
    char *out = NULL;
    size_t len = 0;
    st = pam_jinja_render(t, vars, &lim, &out, &len, err, sizeof err);
    if (st == PAM_OK) {
        if (!out || out[len] != '\0' || len > lim.max_output_bytes) abort();
    } else if (out || !well_formed_error(err)) {
        abort();
    }
    free(out);
    pam_jinja_free(t);
    return 0;
}
