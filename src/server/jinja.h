/* A Jinja2 interpreter for chat templates (tokenizer.chat_template).
 *
 * It executes the language subset that real chat templates use, with the
 * semantics of Python's jinja2 in the configuration Hugging Face's
 * apply_chat_template uses: an immutable sandbox, trim_blocks and
 * lstrip_blocks on, the loopcontrols extension (break/continue), the
 * {% generation %} block, tojson without HTML escaping and with the keys in
 * their given order, and the globals raise_exception(msg), strftime_now(fmt),
 * namespace(), range() and dict(). Output is byte-exact with jinja2 for the
 * templates of the common model families (tests/test_jinja.c checks this).
 *
 * Supported: {{ }}, {% %}, {# #} with whitespace control (-, +), raw, if/
 * elif/else, for (tuple targets, inline if filter, else, loop.index/index0/
 * revindex/revindex0/first/last/length/previtem/nextitem/cycle/depth), set
 * (names, tuples, namespace attributes, block set), macro (defaults,
 * varargs, kwargs), with, filter blocks, break/continue; expressions with
 * Python's operators, literals, slicing, method calls on str/dict/list,
 * filters and tests (see the tables in jinja.c). Not supported: extends,
 * block, include, import, call blocks, recursive loops; these are syntax
 * errors naming the tag.
 *
 * Errors read as jinja2 prints them: "<Kind>: <message>", e.g.
 * "TemplateError: System role not supported" from raise_exception, or
 * "TemplateSyntaxError: unexpected end of template (line 3)". A hostile
 * template cannot crash the process or run forever: recursion depth,
 * evaluation steps, memory and output size are bounded, and passing a bound
 * is an error that names it.
 *
 * A parsed template is immutable: any number of threads may render it at
 * once. Values during a render live in an arena freed at its end. */
#ifndef PAM_SERVER_JINJA_H
#define PAM_SERVER_JINJA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "pam.h"

typedef struct pam_jinja pam_jinja;

typedef struct pam_jinja_limits {
    size_t max_output_bytes; /* the rendered text */
    size_t max_memory_bytes; /* all values made during one render */
    uint64_t max_steps;      /* expression evaluations and loop iterations */
    int max_depth;           /* nesting of evaluation (macro recursion included) */
} pam_jinja_limits;

/* 16 MiB output, 256 MiB memory, 20M steps, depth 200. */
void pam_jinja_limits_default(pam_jinja_limits *l);

/* Parses src (len bytes, need not be NUL-terminated). On failure returns
 * PAM_ERR_INVALID (or PAM_ERR_NOMEM) with the message in err. */
pam_status pam_jinja_parse(const char *src, size_t len, pam_jinja **out, char *err, size_t err_cap);
void pam_jinja_free(pam_jinja *t);

/* Renders with the members of the JSON object vars as the template's
 * variables (messages, add_generation_prompt, bos_token, tools, ...).
 * limits may be NULL (the defaults). *out is malloc'd and NUL-terminated,
 * *out_len its length (may be NULL). On failure returns PAM_ERR_INVALID (a
 * template error: raise_exception, an undefined value used, a type error, a
 * limit) or PAM_ERR_NOMEM, with the message in err, and *out is NULL. */
pam_status pam_jinja_render(const pam_jinja *t, const json_t *vars, const pam_jinja_limits *limits, char **out,
                            size_t *out_len, char *err, size_t err_cap);

#endif
