/* The Jinja interpreter against Python's jinja2: every case of
 * ../shared/templates/expected.json (seven real chat templates, four
 * conversations, with and without add_generation_prompt, renderings and
 * errors by jinja2 3.1.6 as Hugging Face configures it) must match byte for
 * byte. Then the language features one by one (expected outputs are what
 * jinja2 prints for the same source and settings), the error messages, and
 * the limits that keep a hostile template from crashing or hanging. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/jinja.h"
#include "util/test_util.h"

static char *render_vars(const char *src, json_t *vars, pam_status *st, char *err, size_t cap) {
    pam_jinja *t = NULL;
    *st = pam_jinja_parse(src, strlen(src), &t, err, cap);
    if (*st != PAM_OK) return NULL;
    char *out = NULL;
    *st = pam_jinja_render(t, vars, NULL, &out, NULL, err, cap);
    pam_jinja_free(t);
    return out;
}

/* Renders src with vars given as JSON text; checks the output. */
static void expect(const char *src, const char *vars_json, const char *want) {
    json_error_t je;
    json_t *vars = json_loads(vars_json ? vars_json : "{}", 0, &je);
    if (!vars) fail_msg("bad vars JSON: %s", je.text);
    char err[512];
    pam_status st;
    char *got = render_vars(src, vars, &st, err, sizeof err);
    json_decref(vars);
    if (st != PAM_OK) fail_msg("template %s\nfailed: %s", src, err);
    if (strcmp(got, want) != 0) fail_msg("template %s\ngot  [%s]\nwant [%s]", src, got, want);
    free(got);
}

/* Expects parsing or rendering to fail with exactly this message. */
static void expect_error(const char *src, const char *vars_json, const char *want) {
    json_t *vars = json_loads(vars_json ? vars_json : "{}", 0, NULL);
    assert_non_null(vars);
    char err[512];
    pam_status st;
    char *got = render_vars(src, vars, &st, err, sizeof err);
    json_decref(vars);
    if (st == PAM_OK) fail_msg("template %s\nrendered [%s], want error [%s]", src, got, want);
    assert_int_equal(st, PAM_ERR_INVALID);
    if (strcmp(err, want) != 0) fail_msg("template %s\nerror [%s]\nwant  [%s]", src, err, want);
}

static void test_reference_cases(void **state) {
    size_t size;
    char *text = pam_test_read_file(pam_test_shared("templates/expected.json"), &size);
    assert_non_null(text);
    json_error_t je;
    json_t *root = json_loadb(text, size, 0, &je);
    free(text);
    assert_non_null(root);
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) >= 56);
    int n_fail = 0, n_err_cases = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *cs = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(cs, "template"));
        char rel[512];
        snprintf(rel, sizeof rel, "templates/%s", name);
        size_t tlen;
        char *src = pam_test_read_file(pam_test_shared(rel), &tlen);
        assert_non_null(src);
        json_t *vars = json_object();
        json_object_set(vars, "messages", json_object_get(cs, "messages"));
        json_object_set(vars, "add_generation_prompt", json_object_get(cs, "add_generation_prompt"));
        json_object_set(vars, "bos_token", json_object_get(cs, "bos_token"));
        json_object_set(vars, "eos_token", json_object_get(cs, "eos_token"));
        pam_jinja *t = NULL;
        char err[512];
        pam_status st = pam_jinja_parse(src, tlen, &t, err, sizeof err);
        free(src);
        char *out = NULL;
        size_t out_len = 0;
        if (st == PAM_OK) st = pam_jinja_render(t, vars, NULL, &out, &out_len, err, sizeof err);
        pam_jinja_free(t);
        json_decref(vars);
        json_t *want = json_object_get(cs, "expected");
        const char *conv = json_string_value(json_object_get(cs, "conversation"));
        int agp = json_is_true(json_object_get(cs, "add_generation_prompt"));
        if (json_is_string(want)) {
            if (st != PAM_OK) {
                print_error("%s %s agp=%d: error %s\n", name, conv, agp, err);
                n_fail++;
            } else if (out_len != json_string_length(want) || memcmp(out, json_string_value(want), out_len) != 0) {
                print_error("%s %s agp=%d:\ngot  [%s]\nwant [%s]\n", name, conv, agp, out, json_string_value(want));
                n_fail++;
            }
        } else {
            n_err_cases++;
            const char *werr = json_string_value(json_object_get(cs, "error"));
            assert_non_null(werr);
            if (st == PAM_OK) {
                print_error("%s %s agp=%d: rendered, want error %s\n", name, conv, agp, werr);
                n_fail++;
            } else if (strcmp(err, werr) != 0) {
                print_error("%s %s agp=%d: error [%s], want [%s]\n", name, conv, agp, err, werr);
                n_fail++;
            }
        }
        free(out);
    }
    json_decref(root);
    assert_true(n_err_cases > 0);
    assert_int_equal(n_fail, 0);
}

static void test_whitespace(void **state) {
    /* trim_blocks: the newline after a block tag goes; lstrip_blocks: the
     * indentation before a block tag goes; neither touches {{ }}. */
    expect("{% if true %}\n  a\n{% endif %}\n", NULL, "  a\n");
    expect("  {% if true %}x{% endif %}  \n", NULL, "x  ");
    expect("  {{ 1 }}\n", NULL, "  1");
    expect("a  {%- if true -%}  b  {%- endif %}", NULL, "ab");
    expect("a {{- 1 -}} b", NULL, "a1b");
    expect("  {%+ if true %}x{% endif %}", NULL, "  x");
    expect("{% if true +%}\nx{% endif %}", NULL, "\nx");
    expect("a\n  {# comment #}\nb", NULL, "a\nb");
    expect("a {#- c -#} b", NULL, "ab");
    expect("{% raw %}{{ x }}{% endraw %}", NULL, "{{ x }}");
    expect("x\r\ny\n", NULL, "x\ny");   /* line breaks normalised, the last dropped */
    expect("x\n\n", NULL, "x\n");
}

static void test_expressions(void **state) {
    expect("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }}", NULL,
           "7 3 -4 1 2 1024 3.5");
    expect("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 10 / 5 }}", NULL,
           "1.0 0.30000000000000004 1e+20 1.5e-07 2.0");
    expect("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2] }}", NULL, "a1NoneTrue ababab [1, 2]");
    expect("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'b' > 'a' }} {{ 1 == 1.0 }} {{ 'a' in 'cat' }} {{ 3 not in [1] }}",
           NULL, "True False True True True True");
    expect("{{ 'x' if false }}|{{ 'y' if 0 else 'z' }}|{{ none or 'd' }}|{{ 'a' and 'b' }}", NULL, "|z|d|b");
    expect("{{ not x is defined }} {{ x is not defined }}", NULL, "True True");
    expect("{{ \"q\\\"\" }} {{ 'it\\'s' }} {{ 'a' 'b' }} {{ '\\u00e9\\n'|length }}", NULL, "q\" it's ab 2");
    expect("{{ [1, 'a', none, true, 1.5, {'k': [2]}] }}", NULL, "[1, 'a', None, True, 1.5, {'k': [2]}]");
    expect("{{ s[1:] }} {{ s[:-1] }} {{ s[::-1] }} {{ s[-1] }} {{ l[1:3] }} {{ l[-2:] }}",
           "{\"s\":\"h\u00e9llo\",\"l\":[1,2,3,4]}", "\u00e9llo h\u00e9ll oll\u00e9h o [2, 3] [3, 4]");
    expect("{{ d.a }} {{ d['a'] }} {{ d.items() | list }} {{ d.get('b', 5) }} {{ l.0 }} {{ (1,) }}",
           "{\"d\":{\"a\":1},\"l\":[7]}", "1 1 [('a', 1)] 5 7 (1,)");
    expect("{{ 'a,b,,c'.split(',') }} {{ ' x  y '.split() }} {{ 'a b c'.split(none, 1) }}", NULL,
           "['a', 'b', '', 'c'] ['x', 'y'] ['a', 'b c']");
    expect("{{ '  hi  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\\n\\nhi'.lstrip('\\n') }}|{{ 'hi  '.rstrip() }}", NULL,
           "hi|hi|hi|hi");
    expect("{{ 'Hello'.startswith('He') }} {{ 'Hello'.endswith(('x', 'lo')) }} {{ 'hello world'.title() }} "
           "{{ 'ABC'.lower() }} {{ 'abc'.upper() }} {{ 'a-a'.replace('a', 'b') }} {{ 'abc'.find('c') }}",
           NULL, "True True Hello World abc ABC b-b 2");
    expect("{{ '</think>x</think>answer'.split('</think>')[-1] }}", NULL, "answer");
}

static void test_statements(void **state) {
    expect("{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
           "{{ loop.revindex }}{{ loop.revindex0 }},{% endfor %}",
           "{\"l\":[\"a\",\"b\"]}", "10TrueFalse221,21FalseTrue210,");
    expect("{% for x in [] %}x{% else %}empty{% endfor %}", NULL, "empty");
    expect("{% for x in range(10) if x is odd %}{{ x }}{{ ',' if not loop.last }}{% endfor %}", NULL, "1,3,5,7,9");
    expect("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}", "{\"d\":{\"b\":1,\"a\":2}}", "b=1;a=2;");
    expect("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}"
           "{{ x }}{% endfor %}", NULL, "02");
    expect("{% for x in 'ab' %}{{ loop.cycle('o', 'e') }}{{ loop.previtem is defined }}{% endfor %}", NULL,
           "oFalseeTrue");
    /* set in a loop does not leak out; a namespace carries values out */
    expect("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", NULL, "1");
    expect("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}", NULL,
           "4");
    expect("{% if false %}a{% elif true %}b{% else %}c{% endif %}", NULL, "b");
    expect("{% set a, b = [1, 2] %}{{ b }}{{ a }}", NULL, "21");
    expect("{% set x %}in {{ 1 }}{% endset %}[{{ x }}]", NULL, "[in 1]");
    expect("{% macro m(a, b='B') %}<{{ a }}{{ b }}{{ varargs }}>{% endmacro %}{{ m(1) }}{{ m(1, b=2) }}{{ m(1, 2, 3) }}",
           NULL, "<1B()><12()><12(3,)>");
    expect("{% with y = 5 %}{{ y }}{% endwith %}{{ y is defined }}", NULL, "5False");
    expect("{% filter upper %}abc{% endfilter %}", NULL, "ABC");
    expect("{% generation %}g{% endgeneration %}", NULL, "g");
}

static void test_filters_tests(void **state) {
    expect("{{ ' a '|trim }}|{{ 'x'|length }}|{{ [1,2]|length }}|{{ 3|string }}|{{ u|default('d') }}|"
           "{{ ''|default('d', true) }}|{{ [1,2]|join(', ') }}|{{ 'ab'|list }}|{{ [3,1]|first }}|{{ [3,1]|last }}",
           NULL, "a|1|2|3|d|d|1, 2|['a', 'b']|3|1");
    expect("{{ m | selectattr('role', 'equalto', 'user') | map(attribute='c') | list }} "
           "{{ m | rejectattr('role', 'equalto', 'user') | list | length }}",
           "{\"m\":[{\"role\":\"user\",\"c\":1},{\"role\":\"x\",\"c\":2},{\"role\":\"user\",\"c\":3}]}", "[1, 3] 1");
    expect("{{ [3,1,2]|sort }} {{ [1,2,2]|unique|list }} {{ [1,2,3]|sum }} {{ [1,5,3]|max }} {{ 'a'|upper }}"
           " {{ 'hello there'|title }} {{ '3'|int + 1 }} {{ 2|float }} {{ -3|abs }} {{ [1,2]|reverse|list }}",
           NULL, "[1, 2, 3] [1, 2] 6 5 A Hello There 4 2.0 3 [2, 1]");
    expect("{{ d|tojson }} {{ 'é\"\\n'|tojson }} {{ [1, none, true, 1.5]|tojson }}",
           "{\"d\":{\"b\":[1,{}],\"a\":\"x\"}}", "{\"b\": [1, {}], \"a\": \"x\"} \"é\\\"\\n\" [1, null, true, 1.5]");
    expect("{{ d|tojson(indent=2) }}", "{\"d\":{\"a\":[1,2],\"b\":{}}}",
           "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}");
    expect("{{ d|tojson(sort_keys=true) }}", "{\"d\":{\"b\":1,\"a\":2}}", "{\"a\": 2, \"b\": 1}");
    expect("{{ x is string }}{{ x is mapping }}{{ d is mapping }}{{ l is iterable }}{{ 1 is number }}{{ none is none }}"
           "{{ 2 is even }}{{ 6 is divisibleby 3 }}{{ 'a' is in 'abc' }}{{ u is undefined }}",
           "{\"x\":\"s\",\"d\":{},\"l\":[]}", "TrueFalseTrueTrueTrueTrueTrueTrueTrueTrue");
    expect("{{ 'a<b>&'|e }}", NULL, "a&lt;b&gt;&amp;");
    /* printf-style and str.format formatting */
    expect("{{ '%s-%d|%05.2f|%x|%-4s|%%' % ('a', 2, 3.14159, 255, 'b') }}{{ '%(k)03d' % {'k': 7} }}{{ '%s'|format(1) }}",
           NULL, "a-2|03.14|ff|b   |%007" "1");
    expect("{{ '{} {x} {:>4} {:.2f}'.format('a', 'b', 3.14159, x='y') }}{{ '{1}{0}'.format(1, 2) }}", NULL,
           "a y    b 3.1421");
    expect("{{ 'a\\nb'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}", NULL, "a\n  b|  a\n  b");
}

static void test_errors(void **state) {
    expect_error("{{ raise_exception('No way') }}", NULL, "TemplateError: No way");
    expect_error("{{ x.y }}", NULL, "UndefinedError: 'x' is undefined");
    expect_error("{{ d.y.z }}", "{\"d\":{}}", "UndefinedError: 'dict object' has no attribute 'y'");
    expect_error("{{ 'a' + 1 }}", NULL, "TypeError: can only concatenate str (not \"int\") to str");
    expect_error("{{ 1 / 0 }}", NULL, "ZeroDivisionError: division by zero");
    expect_error("{% if x %}", NULL,
                 "TemplateSyntaxError: Unexpected end of template. Jinja was looking for the following tags: "
                 "'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'. (line 1)");
    expect_error("{{ x | nosuch }}", NULL, "TemplateAssertionError: No filter named 'nosuch'. (line 1)");
    /* inside an if or a conditional expression an unknown filter or test is
     * an error only when that code runs (as jinja2 compiles it) */
    expect("{% if false %}{{ x|nosuch }}{% elif false %}{{ x is nosuch }}{% endif %}{{ x|nosuch if false }}ok", NULL, "ok");
    expect_error("{% if true %}{{ 1|nosuch }}{% endif %}", NULL, "TemplateRuntimeError: No filter named 'nosuch' found.");
    expect_error("{% if true %}{% for x in [1] %}{{ x|nosuch }}{% endfor %}{% endif %}", NULL,
                 "TemplateAssertionError: No filter named 'nosuch'. (line 1)");
    expect_error("{{ '%d' % 'x' }}", NULL, "TypeError: %d format: a real number is required, not str");
    expect_error("{{ '%s %s' % ('a',) }}", NULL, "TypeError: not enough arguments for format string");
    expect_error("{% foo %}", NULL, "TemplateSyntaxError: Encountered unknown tag 'foo'. (line 1)");
    expect_error("\n\n{{ 1 + }}", NULL, "TemplateSyntaxError: unexpected 'end of print statement' (line 3)");
    expect_error("{% include 'x' %}", NULL,
                 "TemplateSyntaxError: the 'include' tag is not supported in chat templates (line 1)");
    expect_error("{% break %}", NULL, "TemplateSyntaxError: 'break' outside of a loop (line 1)");
    expect_error("{{ l.append(1) }}", "{\"l\":[]}",
                 "SecurityError: access to attribute 'append' of 'list' object is unsafe.");
    expect_error("{% set x = 1 %}{% set x.y = 2 %}", NULL,
                 "TemplateRuntimeError: cannot assign attribute on non-namespace object");
    expect_error("{% for a, b in [[1]] %}{% endfor %}", NULL,
                 "ValueError: not enough values to unpack (expected 2, got 1)");
    expect_error("{{ 'x'", NULL,
                 "TemplateSyntaxError: unexpected end of template, expected 'end of print statement'. (line 1)");
}

/* Hostile templates end with an error naming the limit, quickly. */
static void test_limits(void **state) {
    pam_jinja_limits lim;
    pam_jinja_limits_default(&lim);
    lim.max_steps = 100000;
    lim.max_output_bytes = 1 << 16;
    lim.max_memory_bytes = 64 << 20;
    static const struct {
        const char *src, *want;
    } cases[] = {
        {"{% set r = range(1000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
         "TemplateError: the template ran for more than 100000 steps"},
        {"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
         "TemplateError: the template nests deeper than 200 levels"},
        {"{% set ns = namespace(x=1) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x == ns.x }}",
         "TemplateError: the template nests deeper than 200 levels"},
        {"{% set ns = namespace(x=1) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}",
         "TemplateError: values nest deeper than 200 levels"},
        {"{% for i in range(5000) %}xxxxxxxxxxxxxxxx{% endfor %}", "TemplateError: the template's output exceeds 65536 bytes"},
        {"{{ 'x' * 100000000 }}", "TemplateError: a repeated value is too large"},
        {"{{ range(1000000000) }}",
         "OverflowError: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000)."},
        {"{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(30) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
         "TemplateError: the template used more than 67108864 bytes of memory"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pam_jinja *t = NULL;
        char err[256];
        assert_int_equal(pam_jinja_parse(cases[i].src, strlen(cases[i].src), &t, err, sizeof err), PAM_OK);
        char *out = NULL;
        pam_status st = pam_jinja_render(t, NULL, &lim, &out, NULL, err, sizeof err);
        pam_jinja_free(t);
        if (st != PAM_ERR_INVALID) fail_msg("%s\nrendered, want error [%s]", cases[i].src, cases[i].want);
        assert_null(out);
        if (strcmp(err, cases[i].want) != 0) fail_msg("%s\nerror [%s]\nwant  [%s]", cases[i].src, err, cases[i].want);
    }
    /* deep nesting in the source is refused by the parser */
    char src[2100] = "{{ ";
    for (int i = 0; i < 1000; i++) strcat(src, "(");
    strcat(src, "1");
    for (int i = 0; i < 1000; i++) strcat(src, ")");
    strcat(src, " }}");
    pam_jinja *t = NULL;
    char err[256];
    assert_int_equal(pam_jinja_parse(src, strlen(src), &t, err, sizeof err), PAM_ERR_INVALID);
    if (!strstr(err, "nests deeper than")) fail_msg("deep nesting: %s", err);
    const char *blocks = "{% if 1 %}{% if 1 %}{% if 1 %}";
    char deep_blocks[4000] = "";
    for (int i = 0; i < 100; i++) strcat(deep_blocks, blocks);
    assert_int_equal(pam_jinja_parse(deep_blocks, strlen(deep_blocks), &t, err, sizeof err), PAM_ERR_INVALID);
    if (!strstr(err, "nests deeper than")) fail_msg("deep blocks: %s", err);
}

/* One parsed template renders many times (and concurrently: it is not
 * changed by rendering); variables can be any JSON. */
static void test_reuse(void **state) {
    const char *src = "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}";
    pam_jinja *t = NULL;
    char err[256];
    assert_int_equal(pam_jinja_parse(src, strlen(src), &t, err, sizeof err), PAM_OK);
    for (int k = 0; k < 3; k++) {
        json_t *vars = json_pack("{s:[{s:s,s:i}]}", "messages", "role", "user", "content", k);
        char *out = NULL;
        size_t n = 0;
        assert_int_equal(pam_jinja_render(t, vars, NULL, &out, &n, err, sizeof err), PAM_OK);
        char want[32];
        snprintf(want, sizeof want, "user:%d;", k);
        assert_string_equal(out, want);
        assert_int_equal(n, strlen(want));
        free(out);
        json_decref(vars);
    }
    pam_jinja_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_cases), cmocka_unit_test(test_whitespace), cmocka_unit_test(test_expressions),
        cmocka_unit_test(test_statements),      cmocka_unit_test(test_filters_tests), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),          cmocka_unit_test(test_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
