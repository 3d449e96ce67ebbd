/* Jinja2 interpreter for chat templates (see jinja.h).
 *
 * Pipeline: the source is normalised as jinja2 does (every line break
 * becomes "\n", one trailing newline dropped), lexed into data and tag
 * tokens with jinja2's whitespace rules (trim_blocks, lstrip_blocks, "-" and
 * "+" markers), parsed into a tree, and the tree is walked.
 *
 * Memory: the tree lives in the template's arena; every value made while
 * rendering lives in a per-render arena that is dropped at the end, so values
 * are plain structs copied by value with no reference counts. Errors in the
 * parser and the renderer unwind with longjmp to the entry point, which owns
 * every allocation (the arenas and the output buffer); nothing else needs
 * cleaning up. Lists and dicts are never changed after they are built (the
 * sandbox is immutable); the only mutable object is a namespace.
 *
 * Strings are byte strings holding UTF-8; length, indexing and slicing count
 * code points as Python does. */
#include "server/jinja.h"

#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

/* ---------------------------------------------------------------- arena */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
} chunk;

typedef struct arena {
    chunk *head;
    size_t total, limit;
} arena;

static void arena_free(arena *a) {
    chunk *c = a->head;
    while (c) {
        chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* NULL when the limit is passed or malloc fails (the caller reports it). */
static void *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > a->limit || cap < n) return NULL;
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->total += cap;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

/* ---------------------------------------------------------------- values */

typedef enum vtype { T_UNDEF, T_NONE, T_BOOL, T_INT, T_FLOAT, T_STR, T_LIST, T_DICT, T_NS, T_MACRO, T_FUNC, T_LOOP } vtype;

typedef struct jstr {
    size_t n;
    char p[]; /* NUL-terminated */
} jstr;

typedef struct jval jval;
typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;
typedef struct macro macro;
typedef struct loopv loopv;

struct jval {
    vtype t;
    union {
        int b;
        int64_t i;
        double f;
        jstr *s;
        jlist *l;
        jdict *d; /* T_DICT and T_NS */
        macro *m;
        jfunc *fn;
        loopv *lp;        /* T_LOOP: the loop variable; its fields are computed when read */
        const char *hint; /* T_UNDEF: the message when it is used */
    } u;
};

struct jlist {
    size_t n, cap;
    jval *v;
    int is_tuple; /* prints as (a, b); never equal to a list */
};

struct jdict {
    size_t n, cap;
    jval *k, *v;
};

typedef struct ctx ctx;

typedef struct args {
    jval *pos;
    int n_pos;
    const char **kw_names;
    jval *kw;
    int n_kw;
} args;

typedef jval (*builtin_fn)(ctx *c, jval self, args *a);

struct loopv {
    const jlist *items;
    size_t i;
};

struct jfunc {
    const char *name;
    jval self;
    builtin_fn fn;
};

/* ---------------------------------------------------------------- tree */

typedef enum nkind {
    /* expressions */
    E_LIT, E_NAME, E_LIST, E_TUPLE, E_DICT, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NEG, E_POS,
    E_NOT, E_AND, E_OR, E_BIN, E_CMP, E_COND,
    /* statements */
    S_SEQ, S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_BREAK, S_CONTINUE, S_WITH, S_FILTERBLOCK,
    S_GENERATION,
} nkind;

typedef enum binop {
    OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN,
} binop;

typedef struct node node;
struct node {
    nkind kind;
    int op, line, neg;
    node *a, *b, *c, *d;
    node **items; /* children: list items, call args, statements, comparison operands */
    int n_items;
    const char **names; /* call keyword names (NULL = positional), targets, macro params */
    int n_names;
    int *ops;           /* E_CMP operators */
    const char *name;   /* E_NAME, E_ATTR, filter/test name, macro name, set namespace */
    jval lit;
    node *body, *else_body;
};

struct pam_jinja {
    arena ar;
    node *root;
};

/* ---------------------------------------------------------------- lexer */

typedef enum tkind {
    TK_DATA, TK_VAR_BEGIN, TK_VAR_END, TK_BLOCK_BEGIN, TK_BLOCK_END, TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP,
    TK_EOF
} tkind;

typedef struct token {
    tkind kind;
    int line;
    const char *s; /* arena copy (data, name, string value, operator) */
    size_t n;
    int64_t i;
    double f;
} token;

typedef struct parser {
    arena *ar;
    jmp_buf jb;
    char *err;
    size_t err_cap;
    token *toks;
    size_t n_toks, cap_toks, pos;
    int depth;
    /* jinja2 reports an unknown filter or test when it compiles the
     * template, except inside an if (its test and bodies) or a conditional
     * expression, where it becomes an error only if that code runs. */
    int soft;
    struct unknown_name {
        const char *name;
        int line, is_test, soft;
    } *unknown;
    int n_unknown, cap_unknown;
} parser;

#define MAX_PARSE_DEPTH 100

#if defined(__GNUC__)
#define JPRINTF(a, b) __attribute__((format(printf, a, b)))
#define JNORETURN __attribute__((noreturn))
#else
#define JPRINTF(a, b)
#define JNORETURN
#endif

static JNORETURN void perr(parser *p, int line, const char *fmt, ...) JPRINTF(3, 4);
static void perr(parser *p, int line, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(p->err, p->err_cap, "TemplateSyntaxError: %s (line %d)", msg, line);
    else
        snprintf(p->err, p->err_cap, "TemplateSyntaxError: %s", msg);
    longjmp(p->jb, 1);
}

static JNORETURN void poom(parser *p) {
    snprintf(p->err, p->err_cap, "TemplateError: the template is too large to compile");
    longjmp(p->jb, 2);
}

static void *palloc(parser *p, size_t n) {
    void *r = arena_alloc(p->ar, n);
    if (!r) poom(p);
    memset(r, 0, n);
    return r;
}

static char *pstrdup(parser *p, const char *s, size_t n) {
    char *r = palloc(p, n + 1);
    memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

static token *push_tok(parser *p, tkind k, int line) {
    if (p->n_toks == p->cap_toks) {
        size_t cap = p->cap_toks ? p->cap_toks * 2 : 256;
        token *t = arena_alloc(p->ar, cap * sizeof *t);
        if (!t) poom(p);
        if (p->n_toks) memcpy(t, p->toks, p->n_toks * sizeof *t);
        p->toks = t;
        p->cap_toks = cap;
    }
    token *t = &p->toks[p->n_toks++];
    memset(t, 0, sizeof *t);
    t->kind = k;
    t->line = line;
    return t;
}

static int is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f'; }

/* jinja2 joins source.splitlines() with "\n": every line break (including
 * \r\n, \r, \v, \f, \x1c-\x1e, U+0085, U+2028, U+2029) becomes "\n" and a
 * final line break is dropped (keep_trailing_newline is off). */
static char *normalise_source(parser *p, const char *src, size_t len, size_t *out_len) {
    char *o = palloc(p, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        unsigned char ch = (unsigned char)src[i];
        if (ch == '\r') {
            o[n++] = '\n';
            i += (i + 1 < len && src[i + 1] == '\n') ? 2 : 1;
        } else if (ch == '\v' || ch == '\f' || (ch >= 0x1c && ch <= 0x1e)) {
            o[n++] = '\n';
            i++;
        } else if (ch == 0xc2 && i + 1 < len && (unsigned char)src[i + 1] == 0x85) {
            o[n++] = '\n';
            i += 2;
        } else if (ch == 0xe2 && i + 2 < len && (unsigned char)src[i + 1] == 0x80 &&
                   ((unsigned char)src[i + 2] == 0xa8 || (unsigned char)src[i + 2] == 0xa9)) {
            o[n++] = '\n';
            i += 3;
        } else {
            o[n++] = (char)ch;
            i++;
        }
    }
    if (n && o[n - 1] == '\n') n--;
    o[n] = '\0';
    *out_len = n;
    return o;
}

static int count_lines(const char *s, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == '\n';
    return k;
}

/* Python's unicode-escape decoding of a string literal's body. */
static char *unescape(parser *p, const char *s, size_t n, size_t *out_n) {
    char *o = palloc(p, n * 4 + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i];
            continue;
        }
        char e = s[++i];
        uint32_t cp = 0;
        int hex = 0;
        switch (e) {
        case '\n': break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'n': o[k++] = '\n'; break;
        case 'r': o[k++] = '\r'; break;
        case 't': o[k++] = '\t'; break;
        case 'v': o[k++] = '\v'; break;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        default:
            if (e >= '0' && e <= '7') {
                int d = 0;
                while (d < 3 && i < n && s[i] >= '0' && s[i] <= '7') cp = cp * 8 + (uint32_t)(s[i++] - '0'), d++;
                i--;
                k += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)o + k);
            } else {
                o[k++] = '\\';
                o[k++] = e;
            }
        }
        if (hex) {
            for (int d = 0; d < hex; d++) {
                char h = i + 1 + (size_t)d < n ? s[i + 1 + (size_t)d] : 0;
                if (!isxdigit((unsigned char)h)) perr(p, 0, "truncated \\%c escape in a string literal", e);
                cp = cp * 16 + (uint32_t)(isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
            }
            i += (size_t)hex;
            if (cp > 0x10ffff) perr(p, 0, "illegal Unicode character in a string literal");
            if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
            k += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)o + k);
        }
    }
    o[k] = '\0';
    *out_n = k;
    return o;
}

static const char *const k_ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(",
                                    ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};

/* Lexes the inside of a tag from *pos up to its end marker; returns the
 * position after the marker (and the whitespace it eats). */
static size_t lex_tag(parser *p, const char *s, size_t n, size_t i, int *line, int is_var) {
    int balance = 0;
    for (;;) {
        while (i < n && is_ws(s[i])) {
            if (s[i] == '\n') (*line)++;
            i++;
        }
        if (i >= n)
            perr(p, *line, "unexpected end of template, expected '%s'.",
                 is_var ? "end of print statement" : "end of statement block");
        if (balance == 0) {
            const char *end = is_var ? "}}" : "%}";
            size_t skip = 0;
            int strip = 0, trim = !is_var;
            if (s[i] == '-' && i + 3 <= n && !strncmp(s + i + 1, end, 2))
                skip = 3, strip = 1;
            else if (!is_var && s[i] == '+' && i + 3 <= n && !strncmp(s + i + 1, end, 2))
                skip = 3, trim = 0;
            else if (i + 2 <= n && !strncmp(s + i, end, 2))
                skip = 2;
            if (skip) {
                push_tok(p, is_var ? TK_VAR_END : TK_BLOCK_END, *line);
                i += skip;
                if (strip) {
                    while (i < n && is_ws(s[i])) {
                        if (s[i] == '\n') (*line)++;
                        i++;
                    }
                } else if (trim && i < n && s[i] == '\n') {
                    (*line)++;
                    i++;
                }
                return i;
            }
        }
        char ch = s[i];
        if (isalpha((unsigned char)ch) || ch == '_') {
            size_t j = i;
            while (j < n && (isalnum((unsigned char)s[j]) || s[j] == '_')) j++;
            token *t = push_tok(p, TK_NAME, *line);
            t->s = pstrdup(p, s + i, j - i);
            t->n = j - i;
            i = j;
        } else if (isdigit((unsigned char)ch)) {
            size_t j = i;
            char buf[128];
            size_t k = 0;
            int is_float = 0;
            while (j < n && (isdigit((unsigned char)s[j]) || (s[j] == '_' && j + 1 < n && isdigit((unsigned char)s[j + 1]))))
                if (s[j++] != '_' && k < sizeof buf - 1) buf[k++] = s[j - 1];
            if (j + 1 < n && s[j] == '.' && isdigit((unsigned char)s[j + 1])) {
                is_float = 1;
                buf[k < sizeof buf - 1 ? k++ : k] = '.';
                j++;
                while (j < n && (isdigit((unsigned char)s[j]) || (s[j] == '_' && j + 1 < n && isdigit((unsigned char)s[j + 1]))))
                    if (s[j++] != '_' && k < sizeof buf - 1) buf[k++] = s[j - 1];
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t e = j + 1;
                if (e < n && (s[e] == '+' || s[e] == '-')) e++;
                if (e < n && isdigit((unsigned char)s[e])) {
                    is_float = 1;
                    while (j < e) buf[k < sizeof buf - 1 ? k++ : k] = s[j++];
                    while (j < n && isdigit((unsigned char)s[j]))
                        if (k < sizeof buf - 1) buf[k++] = s[j++];
                        else j++;
                }
            }
            buf[k] = '\0';
            token *t = push_tok(p, is_float ? TK_FLOAT : TK_INT, *line);
            if (is_float) {
                t->f = strtod(buf, NULL);
            } else {
                char *endp;
                unsigned long long v = strtoull(buf, &endp, 10);
                if (k > 18 && (v > (unsigned long long)INT64_MAX || strlen(buf) > 19))
                    perr(p, *line, "integer literal %s is too large", buf);
                t->i = (int64_t)v;
            }
            i = j;
        } else if (ch == '\'' || ch == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != ch) j += (s[j] == '\\' && j + 1 < n) ? 2 : 1;
            if (j >= n) perr(p, *line, "unexpected end of string literal");
            token *t = push_tok(p, TK_STR, *line);
            t->s = unescape(p, s + i + 1, j - i - 1, &t->n);
            *line += count_lines(s + i, j - i);
            i = j + 1;
        } else {
            size_t k;
            for (k = 0; k < sizeof k_ops / sizeof *k_ops; k++) {
                size_t l = strlen(k_ops[k]);
                if (i + l <= n && !strncmp(s + i, k_ops[k], l)) break;
            }
            if (k == sizeof k_ops / sizeof *k_ops) perr(p, *line, "unexpected char '%c'", ch);
            const char *op = k_ops[k];
            if (op[0] == '(' || op[0] == '[' || op[0] == '{') balance++;
            if (op[0] == ')' || op[0] == ']' || op[0] == '}') {
                if (balance == 0) perr(p, *line, "unexpected '%c'", op[0]);
                balance--;
            }
            token *t = push_tok(p, TK_OP, *line);
            t->s = op;
            t->n = strlen(op);
            i += t->n;
        }
    }
}

static void strip_text_ws(const char *s, size_t *n) {
    while (*n && is_ws(s[*n - 1])) (*n)--;
}

/* The text before a tag, after jinja2's "-" and lstrip_blocks rules. */
static size_t tag_text_len(const char *text, size_t n, char sign, int is_block_or_comment, int line_starting) {
    if (sign == '-') {
        strip_text_ws(text, &n);
        return n;
    }
    if (sign == '+' || !is_block_or_comment) return n;
    size_t l = n;
    while (l > 0 && text[l - 1] != '\n') l--;
    if (l == 0 && !line_starting) return n;
    for (size_t k = l; k < n; k++)
        if (text[k] != ' ' && text[k] != '\t') return n;
    return l;
}

static void push_data(parser *p, const char *s, size_t n, int line) {
    if (!n) return;
    token *t = push_tok(p, TK_DATA, line);
    t->s = pstrdup(p, s, n);
    t->n = n;
}

static size_t skip_ws(const char *s, size_t n, size_t i, int *line) {
    while (i < n && is_ws(s[i])) {
        if (s[i] == '\n') (*line)++;
        i++;
    }
    return i;
}

/* "{%[-+]? raw [-]%}" at j; returns the position after it or 0. */
static size_t match_raw(const char *s, size_t n, size_t j, const char *word, int *strip_after, char *sign) {
    size_t i = j + 2;
    *sign = 0;
    if (i < n && (s[i] == '-' || s[i] == '+')) *sign = s[i++];
    while (i < n && is_ws(s[i])) i++;
    size_t l = strlen(word);
    if (i + l > n || strncmp(s + i, word, l) || (i + l < n && (isalnum((unsigned char)s[i + l]) || s[i + l] == '_')))
        return 0;
    i += l;
    while (i < n && is_ws(s[i])) i++;
    *strip_after = 0;
    if (i + 3 <= n && !strncmp(s + i, "-%}", 3)) {
        *strip_after = 1;
        return i + 3;
    }
    if (i + 3 <= n && !strncmp(s + i, "+%}", 3)) {
        *strip_after = 2;
        return i + 3;
    }
    if (i + 2 <= n && !strncmp(s + i, "%}", 2)) return i + 2;
    return 0;
}

static void lex(parser *p, const char *src, size_t len) {
    size_t n;
    char *s = normalise_source(p, src, len, &n);
    size_t i = 0;
    int line = 1, line_starting = 1;
    while (i < n) {
        size_t j = i;
        while (j + 1 < n && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' || s[j + 1] == '#'))) j++;
        if (j + 1 >= n) {
            push_data(p, s + i, n - i, line);
            break;
        }
        char tk = s[j + 1];
        char sign = j + 2 < n && (s[j + 2] == '-' || s[j + 2] == '+') ? s[j + 2] : 0;
        int text_line = line;
        line += count_lines(s + i, j - i);
        int raw_strip = 0;
        char raw_sign = 0;
        size_t raw_end = tk == '%' ? match_raw(s, n, j, "raw", &raw_strip, &raw_sign) : 0;
        push_data(p, s + i, tag_text_len(s + i, j - i, sign, tk != '{', line_starting), text_line);
        i = j + 2 + (sign ? 1 : 0);
        if (raw_end) {
            i = raw_end;
            if (raw_strip == 1) i = skip_ws(s, n, i, &line);
            line_starting = i > 0 && s[i - 1] == '\n';
            size_t k = i;
            size_t e = 0;
            int end_strip = 0;
            char end_sign = 0;
            for (; k + 1 < n; k++)
                if (s[k] == '{' && s[k + 1] == '%' && (e = match_raw(s, n, k, "endraw", &end_strip, &end_sign)))
                    break;
            if (!e) perr(p, line, "missing end of raw directive");
            push_data(p, s + i, tag_text_len(s + i, k - i, end_sign, 1, line_starting), line);
            line += count_lines(s + i, e - i);
            i = e;
            if (end_strip == 1)
                i = skip_ws(s, n, i, &line);
            else if (end_strip == 0 && i < n && s[i] == '\n')
                i++, line++;
        } else if (tk == '#') {
            size_t k = i;
            while (k + 1 < n && !(s[k] == '#' && s[k + 1] == '}')) k++;
            if (k + 1 >= n) perr(p, line, "missing end of comment tag");
            char esign = k > i && (s[k - 1] == '-' || s[k - 1] == '+') ? s[k - 1] : 0;
            line += count_lines(s + i, k - i);
            i = k + 2;
            if (esign == '-')
                i = skip_ws(s, n, i, &line);
            else if (esign != '+' && i < n && s[i] == '\n')
                i++, line++;
        } else {
            push_tok(p, tk == '{' ? TK_VAR_BEGIN : TK_BLOCK_BEGIN, line);
            i = lex_tag(p, s, n, i, &line, tk == '{');
        }
        line_starting = i > 0 && s[i - 1] == '\n';
    }
    push_tok(p, TK_EOF, line);
}

/* ---------------------------------------------------------------- parser */

static int find_filter(const char *name);
static int find_test(const char *name);

static token *peek(parser *p) { return &p->toks[p->pos]; }
static token *peek2(parser *p) { return p->pos + 1 < p->n_toks ? &p->toks[p->pos + 1] : &p->toks[p->n_toks - 1]; }
static token *next_tok(parser *p) {
    token *t = &p->toks[p->pos];
    if (t->kind != TK_EOF) p->pos++;
    return t;
}
static int is_op(const token *t, const char *op) { return t->kind == TK_OP && !strcmp(t->s, op); }
static int is_name(const token *t, const char *nm) { return t->kind == TK_NAME && !strcmp(t->s, nm); }

static const char *tok_desc(const token *t) {
    switch (t->kind) {
    case TK_DATA: return "template data";
    case TK_VAR_BEGIN: return "begin of print statement";
    case TK_VAR_END: return "end of print statement";
    case TK_BLOCK_BEGIN: return "begin of statement block";
    case TK_BLOCK_END: return "end of statement block";
    case TK_STR: return "string";
    case TK_INT: return "integer";
    case TK_FLOAT: return "float";
    case TK_EOF: return "end of template";
    default: return t->s;
    }
}

static void expect_op(parser *p, const char *op) {
    token *t = next_tok(p);
    if (!is_op(t, op)) perr(p, t->line, "expected token '%s', got '%s'", op, tok_desc(t));
}

static const char *expect_name(parser *p) {
    token *t = next_tok(p);
    if (t->kind != TK_NAME) perr(p, t->line, "expected name, got '%s'", tok_desc(t));
    return t->s;
}

static void expect_block_end(parser *p) {
    token *t = next_tok(p);
    if (t->kind != TK_BLOCK_END) perr(p, t->line, "expected token 'end of statement block', got '%s'", tok_desc(t));
}

static node *new_node(parser *p, nkind k, int line) {
    node *n = palloc(p, sizeof *n);
    n->kind = k;
    n->line = line;
    return n;
}

typedef struct nvec {
    node **v;
    const char **names;
    int n, cap;
} nvec;

static void nvec_push(parser *p, nvec *v, node *x, const char *name) {
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 8;
        node **nv = palloc(p, (size_t)cap * sizeof *nv);
        const char **nn = palloc(p, (size_t)cap * sizeof *nn);
        if (v->n) {
            memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
            memcpy(nn, v->names, (size_t)v->n * sizeof *nn);
        }
        v->v = nv;
        v->names = nn;
        v->cap = cap;
    }
    v->names[v->n] = name;
    v->v[v->n++] = x;
}

static void enter(parser *p) {
    if (++p->depth > MAX_PARSE_DEPTH) perr(p, peek(p)->line, "the template nests deeper than %d levels", MAX_PARSE_DEPTH);
}
static void leave(parser *p) { p->depth--; }

static node *parse_expr(parser *p, int with_condexpr);
static node *parse_tuple(parser *p, int with_condexpr, int explicit_parens);
static node *parse_unary(parser *p, int with_filter);
static node *parse_postfix(parser *p, node *n);

static int tuple_end(const token *t) {
    return t->kind == TK_VAR_END || t->kind == TK_BLOCK_END || t->kind == TK_EOF || is_op(t, ")") || is_op(t, "]") ||
           is_op(t, "}") || is_op(t, "=") || is_name(t, "in") || is_name(t, "if") || is_name(t, "recursive");
}

static void parse_call_args(parser *p, node *call) {
    expect_op(p, "(");
    nvec v = {0};
    while (!is_op(peek(p), ")")) {
        if (v.n) {
            expect_op(p, ",");
            if (is_op(peek(p), ")")) break;
        }
        if (is_op(peek(p), "*") || is_op(peek(p), "**"))
            perr(p, peek(p)->line, "argument unpacking (* and **) is not supported");
        if (peek(p)->kind == TK_NAME && is_op(peek2(p), "=")) {
            const char *nm = next_tok(p)->s;
            next_tok(p);
            nvec_push(p, &v, parse_expr(p, 1), nm);
        } else {
            for (int k = 0; k < v.n; k++)
                if (v.names[k]) perr(p, peek(p)->line, "positional argument follows keyword argument");
            nvec_push(p, &v, parse_expr(p, 1), NULL);
        }
    }
    expect_op(p, ")");
    call->items = v.v;
    call->names = v.names;
    call->n_items = v.n;
}

static node *parse_primary(parser *p) {
    enter(p);
    token *t = next_tok(p);
    node *n = NULL;
    switch (t->kind) {
    case TK_NAME:
        n = new_node(p, E_LIT, t->line);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) {
            n->lit.t = T_BOOL;
            n->lit.u.b = 1;
        } else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) {
            n->lit.t = T_BOOL;
        } else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) {
            n->lit.t = T_NONE;
        } else {
            n->kind = E_NAME;
            n->name = t->s;
        }
        break;
    case TK_STR: {
        size_t total = t->n;
        size_t k = p->pos;
        while (p->toks[k].kind == TK_STR) total += p->toks[k++].n;
        jstr *s = palloc(p, sizeof *s + total + 1);
        memcpy(s->p, t->s, t->n);
        s->n = t->n;
        while (peek(p)->kind == TK_STR) {
            token *u = next_tok(p);
            memcpy(s->p + s->n, u->s, u->n);
            s->n += u->n;
        }
        s->p[s->n] = '\0';
        n = new_node(p, E_LIT, t->line);
        n->lit.t = T_STR;
        n->lit.u.s = s;
        break;
    }
    case TK_INT:
        n = new_node(p, E_LIT, t->line);
        n->lit.t = T_INT;
        n->lit.u.i = t->i;
        break;
    case TK_FLOAT:
        n = new_node(p, E_LIT, t->line);
        n->lit.t = T_FLOAT;
        n->lit.u.f = t->f;
        break;
    case TK_OP:
        if (is_op(t, "(")) {
            n = parse_tuple(p, 1, 1);
            expect_op(p, ")");
        } else if (is_op(t, "[")) {
            nvec v = {0};
            while (!is_op(peek(p), "]")) {
                if (v.n) {
                    expect_op(p, ",");
                    if (is_op(peek(p), "]")) break;
                }
                nvec_push(p, &v, parse_expr(p, 1), NULL);
            }
            expect_op(p, "]");
            n = new_node(p, E_LIST, t->line);
            n->items = v.v;
            n->n_items = v.n;
        } else if (is_op(t, "{")) {
            nvec v = {0};
            while (!is_op(peek(p), "}")) {
                if (v.n) {
                    expect_op(p, ",");
                    if (is_op(peek(p), "}")) break;
                }
                nvec_push(p, &v, parse_expr(p, 1), NULL);
                expect_op(p, ":");
                nvec_push(p, &v, parse_expr(p, 1), NULL);
            }
            expect_op(p, "}");
            n = new_node(p, E_DICT, t->line);
            n->items = v.v;
            n->n_items = v.n;
        } else {
            perr(p, t->line, "unexpected '%s'", t->s);
        }
        break;
    default:
        perr(p, t->line, "unexpected '%s'", tok_desc(t));
    }
    leave(p);
    return n;
}

static node *parse_subscript_part(parser *p) {
    int line = peek(p)->line;
    node *parts[3] = {NULL, NULL, NULL};
    if (!is_op(peek(p), ":")) {
        node *e = parse_expr(p, 1);
        if (!is_op(peek(p), ":")) return e;
        parts[0] = e;
    }
    next_tok(p); /* ':' */
    if (!is_op(peek(p), "]") && !is_op(peek(p), ",") && !is_op(peek(p), ":")) parts[1] = parse_expr(p, 1);
    if (is_op(peek(p), ":")) {
        next_tok(p);
        if (!is_op(peek(p), "]") && !is_op(peek(p), ",")) parts[2] = parse_expr(p, 1);
    }
    node *s = new_node(p, E_SLICE, line);
    s->b = parts[0];
    s->c = parts[1];
    s->d = parts[2];
    return s;
}

static node *parse_postfix(parser *p, node *n) {
    for (;;) {
        token *t = peek(p);
        if (is_op(t, ".")) {
            next_tok(p);
            token *a = next_tok(p);
            if (a->kind == TK_NAME) {
                node *x = new_node(p, E_ATTR, a->line);
                x->a = n;
                x->name = a->s;
                n = x;
            } else if (a->kind == TK_INT) {
                node *x = new_node(p, E_ITEM, a->line);
                x->a = n;
                x->b = new_node(p, E_LIT, a->line);
                x->b->lit.t = T_INT;
                x->b->lit.u.i = a->i;
                n = x;
            } else {
                perr(p, a->line, "expected name or number");
            }
        } else if (is_op(t, "[")) {
            next_tok(p);
            enter(p);
            nvec v = {0};
            while (!is_op(peek(p), "]")) {
                if (v.n) {
                    expect_op(p, ",");
                    if (is_op(peek(p), "]")) break;
                }
                nvec_push(p, &v, parse_subscript_part(p), NULL);
            }
            expect_op(p, "]");
            leave(p);
            if (v.n == 0) perr(p, t->line, "expected subscript expression");
            node *key = v.v[0];
            for (int k = 0; v.n > 1 && k < v.n; k++)
                if (v.v[k]->kind == E_SLICE) perr(p, t->line, "a slice inside a tuple subscript is not supported");
            if (v.n > 1) {
                key = new_node(p, E_TUPLE, t->line);
                key->items = v.v;
                key->n_items = v.n;
            }
            if (key->kind == E_SLICE) {
                key->a = n;
                n = key;
            } else {
                node *x = new_node(p, E_ITEM, t->line);
                x->a = n;
                x->b = key;
                n = x;
            }
        } else if (is_op(t, "(")) {
            enter(p);
            node *x = new_node(p, E_CALL, t->line);
            x->a = n;
            parse_call_args(p, x);
            leave(p);
            n = x;
        } else {
            return n;
        }
    }
}

static const char *parse_dotted_name(parser *p) {
    const char *nm = expect_name(p);
    while (is_op(peek(p), ".") && peek2(p)->kind == TK_NAME) {
        next_tok(p);
        const char *rest = next_tok(p)->s;
        size_t a = strlen(nm), b = strlen(rest);
        char *j = palloc(p, a + b + 2);
        memcpy(j, nm, a);
        j[a] = '.';
        memcpy(j + a + 1, rest, b + 1);
        nm = j;
    }
    return nm;
}

static JNORETURN void passert(parser *p, int line, const char *fmt, const char *name) {
    char msg[300];
    snprintf(msg, sizeof msg, fmt, name);
    snprintf(p->err, p->err_cap, "TemplateAssertionError: %s (line %d)", msg, line);
    longjmp(p->jb, 1);
}

static void note_unknown(parser *p, const char *name, int line, int is_test) {
    if (p->n_unknown == p->cap_unknown) {
        int cap = p->cap_unknown ? p->cap_unknown * 2 : 8;
        struct unknown_name *u = palloc(p, (size_t)cap * sizeof *u);
        if (p->n_unknown) memcpy(u, p->unknown, (size_t)p->n_unknown * sizeof *u);
        p->unknown = u;
        p->cap_unknown = cap;
    }
    p->unknown[p->n_unknown++] = (struct unknown_name){name, line, is_test, p->soft > 0};
}

static node *parse_filter(parser *p, node *value) {
    int line = peek(p)->line;
    const char *nm = parse_dotted_name(p);
    if (find_filter(nm) < 0) note_unknown(p, nm, line, 0);
    node *f = new_node(p, E_FILTER, line);
    f->a = value;
    f->name = nm;
    if (is_op(peek(p), "(")) parse_call_args(p, f);
    return f;
}

static node *parse_filter_expr(parser *p, node *n) {
    for (;;) {
        token *t = peek(p);
        if (is_op(t, "|")) {
            next_tok(p);
            n = parse_filter(p, n);
        } else if (is_name(t, "is")) {
            next_tok(p);
            node *x = new_node(p, E_TEST, t->line);
            if (is_name(peek(p), "not")) {
                next_tok(p);
                x->neg = 1;
            }
            x->a = n;
            int line = peek(p)->line;
            x->name = parse_dotted_name(p);
            if (find_test(x->name) < 0) note_unknown(p, x->name, line, 1);
            token *u = peek(p);
            if (is_op(u, "(")) {
                parse_call_args(p, x);
            } else if ((u->kind == TK_NAME || u->kind == TK_STR || u->kind == TK_INT || u->kind == TK_FLOAT ||
                        is_op(u, "(") || is_op(u, "[") || is_op(u, "{")) &&
                       !is_name(u, "else") && !is_name(u, "or") && !is_name(u, "and")) {
                if (is_name(u, "is")) perr(p, u->line, "You cannot chain multiple tests with is");
                node *arg = parse_postfix(p, parse_primary(p));
                x->items = palloc(p, sizeof *x->items);
                x->names = palloc(p, sizeof *x->names);
                x->items[0] = arg;
                x->n_items = 1;
            }
            n = x;
        } else if (is_op(t, "(")) {
            node *x = new_node(p, E_CALL, t->line);
            x->a = n;
            parse_call_args(p, x);
            n = x;
        } else {
            return n;
        }
    }
}

static node *parse_unary(parser *p, int with_filter) {
    enter(p);
    token *t = peek(p);
    node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        next_tok(p);
        n = new_node(p, is_op(t, "-") ? E_NEG : E_POS, t->line);
        n->a = parse_unary(p, 0);
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    leave(p);
    return n;
}

static node *bin(parser *p, int op, node *a, node *b, int line) {
    node *n = new_node(p, E_BIN, line);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(parser *p) {
    node *n = parse_unary(p, 1);
    while (is_op(peek(p), "**")) {
        int line = next_tok(p)->line;
        n = bin(p, OP_POW, n, parse_unary(p, 1), line);
    }
    return n;
}

static node *parse_math2(parser *p) {
    node *n = parse_pow(p);
    for (;;) {
        token *t = peek(p);
        int op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV : is_op(t, "//") ? OP_FLOORDIV : is_op(t, "%") ? OP_MOD : -1;
        if (op < 0) return n;
        next_tok(p);
        n = bin(p, op, n, parse_pow(p), t->line);
    }
}

static node *parse_concat(parser *p) {
    node *n = parse_math2(p);
    while (is_op(peek(p), "~")) {
        int line = next_tok(p)->line;
        n = bin(p, OP_CONCAT, n, parse_math2(p), line);
    }
    return n;
}

static node *parse_math1(parser *p) {
    node *n = parse_concat(p);
    for (;;) {
        token *t = peek(p);
        int op = is_op(t, "+") ? OP_ADD : is_op(t, "-") ? OP_SUB : -1;
        if (op < 0) return n;
        next_tok(p);
        n = bin(p, op, n, parse_concat(p), t->line);
    }
}

static node *parse_compare(parser *p) {
    int line = peek(p)->line;
    node *first = parse_math1(p);
    nvec v = {0};
    int ops[64], n_ops = 0;
    nvec_push(p, &v, first, NULL);
    for (;;) {
        token *t = peek(p);
        int op = -1;
        if (is_op(t, "==")) op = OP_EQ;
        else if (is_op(t, "!=")) op = OP_NE;
        else if (is_op(t, "<")) op = OP_LT;
        else if (is_op(t, "<=")) op = OP_LE;
        else if (is_op(t, ">")) op = OP_GT;
        else if (is_op(t, ">=")) op = OP_GE;
        else if (is_name(t, "in")) op = OP_IN;
        else if (is_name(t, "not") && is_name(peek2(p), "in")) op = OP_NOTIN;
        if (op < 0) break;
        next_tok(p);
        if (op == OP_NOTIN) next_tok(p);
        if (n_ops == 64) perr(p, t->line, "too many chained comparisons");
        ops[n_ops++] = op;
        nvec_push(p, &v, parse_math1(p), NULL);
    }
    if (!n_ops) return first;
    node *n = new_node(p, E_CMP, line);
    n->items = v.v;
    n->n_items = v.n;
    n->ops = palloc(p, (size_t)n_ops * sizeof *n->ops);
    memcpy(n->ops, ops, (size_t)n_ops * sizeof *ops);
    return n;
}

static node *parse_not(parser *p) {
    if (is_name(peek(p), "not")) {
        enter(p);
        int line = next_tok(p)->line;
        node *n = new_node(p, E_NOT, line);
        n->a = parse_not(p);
        leave(p);
        return n;
    }
    return parse_compare(p);
}

static node *parse_and(parser *p) {
    node *n = parse_not(p);
    while (is_name(peek(p), "and")) {
        node *x = new_node(p, E_AND, next_tok(p)->line);
        x->a = n;
        x->b = parse_not(p);
        n = x;
    }
    return n;
}

static node *parse_or(parser *p) {
    node *n = parse_and(p);
    while (is_name(peek(p), "or")) {
        node *x = new_node(p, E_OR, next_tok(p)->line);
        x->a = n;
        x->b = parse_and(p);
        n = x;
    }
    return n;
}

static node *parse_expr(parser *p, int with_condexpr) {
    enter(p);
    int first_unknown = p->n_unknown;
    node *n = parse_or(p);
    if (with_condexpr) {
        while (is_name(peek(p), "if")) {
            for (int k = first_unknown; k < p->n_unknown; k++) p->unknown[k].soft = 1;
            node *x = new_node(p, E_COND, next_tok(p)->line);
            x->a = n;
            p->soft++;
            x->b = parse_or(p);
            if (is_name(peek(p), "else")) {
                next_tok(p);
                x->c = parse_expr(p, 1);
            }
            p->soft--;
            n = x;
        }
    }
    leave(p);
    return n;
}

static node *parse_tuple(parser *p, int with_condexpr, int explicit_parens) {
    int line = peek(p)->line;
    nvec v = {0};
    int comma = 0;
    for (;;) {
        if (v.n) {
            if (!is_op(peek(p), ",")) break;
            next_tok(p);
            comma = 1;
        }
        if (tuple_end(peek(p))) break;
        nvec_push(p, &v, parse_expr(p, with_condexpr), NULL);
    }
    if (!comma) {
        if (v.n == 1) return v.v[0];
        if (!explicit_parens) perr(p, line, "Expected an expression, got '%s'", tok_desc(peek(p)));
    }
    node *n = new_node(p, E_TUPLE, line);
    n->items = v.v;
    n->n_items = v.n;
    return n;
}

/* Assignment targets: a name, "a, b", "(a, b)"; with_ns allows "ns.attr". */
static void parse_targets(parser *p, node *st, int with_ns) {
    nvec v = {0};
    int paren = 0;
    if (is_op(peek(p), "(")) {
        next_tok(p);
        paren = 1;
    }
    for (;;) {
        const char *nm = expect_name(p);
        if (with_ns && !paren && v.n == 0 && is_op(peek(p), ".")) {
            next_tok(p);
            st->name = nm; /* the namespace */
            nvec_push(p, &v, NULL, expect_name(p));
            break;
        }
        if (!strcmp(nm, "true") || !strcmp(nm, "false") || !strcmp(nm, "none") || !strcmp(nm, "True") ||
            !strcmp(nm, "False") || !strcmp(nm, "None"))
            perr(p, peek(p)->line, "Can't assign to '%s'", nm);
        nvec_push(p, &v, NULL, nm);
        if (!is_op(peek(p), ",")) break;
        next_tok(p);
        if (paren && is_op(peek(p), ")")) break;
    }
    if (paren) expect_op(p, ")");
    st->names = v.names;
    st->n_names = v.n;
    st->neg = (v.n > 1) || paren; /* unpack */
}

static node *parse_seq(parser *p, const char *const *ends, int n_ends, const char **which, int loops);

/* A body in a new jinja2 frame (for, macro, with, filter, block set): not
 * soft even inside an if. */
static node *parse_seq_hard(parser *p, const char *const *ends, int n_ends, const char **which, int loops) {
    int saved = p->soft;
    p->soft = 0;
    node *n = parse_seq(p, ends, n_ends, which, loops);
    p->soft = saved;
    return n;
}

static int name_in(const char *nm, const char *const *set, int n) {
    for (int k = 0; k < n; k++)
        if (!strcmp(nm, set[k])) return 1;
    return 0;
}

static node *parse_statement(parser *p, int loops) {
    token *t = next_tok(p);
    if (t->kind != TK_NAME) perr(p, t->line, "tag name expected");
    const char *tag = t->s;
    const char *which = NULL;
    enter(p);
    node *n = NULL;
    if (!strcmp(tag, "if") || !strcmp(tag, "elif")) {
        n = new_node(p, S_IF, t->line);
        p->soft++;
        n->a = parse_tuple(p, 0, 0);
        expect_block_end(p);
        static const char *const ends[] = {"elif", "else", "endif"};
        n->body = parse_seq(p, ends, 3, &which, loops);
        if (!strcmp(which, "elif")) {
            p->pos--; /* parse the elif as a nested if that consumes the endif */
            n->else_body = parse_statement(p, loops);
            p->soft--;
            leave(p);
            return n;
        }
        if (!strcmp(which, "else")) {
            expect_block_end(p);
            static const char *const ends2[] = {"endif"};
            n->else_body = parse_seq(p, ends2, 1, &which, loops);
        }
        expect_block_end(p);
        p->soft--;
    } else if (!strcmp(tag, "for")) {
        n = new_node(p, S_FOR, t->line);
        parse_targets(p, n, 0);
        token *in = next_tok(p);
        if (!is_name(in, "in")) perr(p, in->line, "expected 'in', got '%s'", tok_desc(in));
        n->a = parse_tuple(p, 0, 0);
        if (is_name(peek(p), "if")) {
            next_tok(p);
            n->b = parse_expr(p, 1);
        }
        if (is_name(peek(p), "recursive")) perr(p, peek(p)->line, "recursive loops are not supported");
        expect_block_end(p);
        static const char *const ends[] = {"endfor", "else"};
        n->body = parse_seq_hard(p, ends, 2, &which, loops + 1);
        if (!strcmp(which, "else")) {
            expect_block_end(p);
            static const char *const ends2[] = {"endfor"};
            n->else_body = parse_seq_hard(p, ends2, 1, &which, loops);
        }
        expect_block_end(p);
    } else if (!strcmp(tag, "set")) {
        n = new_node(p, S_SET, t->line);
        parse_targets(p, n, 1);
        if (is_op(peek(p), "=")) {
            next_tok(p);
            n->a = parse_tuple(p, 1, 0);
            expect_block_end(p);
        } else {
            if (n->neg || n->name) perr(p, t->line, "a block set needs a single name");
            n->kind = S_SETBLOCK;
            node *f = NULL;
            while (is_op(peek(p), "|")) {
                next_tok(p);
                f = parse_filter(p, f);
            }
            n->a = f; /* filter chain applied to the block's text (innermost a == NULL) */
            expect_block_end(p);
            static const char *const ends[] = {"endset"};
            n->body = parse_seq_hard(p, ends, 1, &which, loops);
            expect_block_end(p);
        }
    } else if (!strcmp(tag, "macro")) {
        n = new_node(p, S_MACRO, t->line);
        n->name = expect_name(p);
        expect_op(p, "(");
        nvec v = {0};
        while (!is_op(peek(p), ")")) {
            if (v.n) {
                expect_op(p, ",");
                if (is_op(peek(p), ")")) break;
            }
            const char *pn = expect_name(p);
            node *def = NULL;
            if (is_op(peek(p), "=")) {
                next_tok(p);
                def = parse_expr(p, 1);
            } else {
                for (int k = 0; k < v.n; k++)
                    if (v.v[k]) perr(p, peek(p)->line, "non-default argument follows default argument");
            }
            nvec_push(p, &v, def, pn);
        }
        expect_op(p, ")");
        expect_block_end(p);
        n->items = v.v;
        n->names = v.names;
        n->n_items = v.n;
        static const char *const ends[] = {"endmacro"};
        n->body = parse_seq_hard(p, ends, 1, &which, 0);
        if (peek(p)->kind == TK_NAME) next_tok(p); /* endmacro name */
        expect_block_end(p);
    } else if (!strcmp(tag, "break") || !strcmp(tag, "continue")) {
        if (!loops) perr(p, t->line, "'%s' outside of a loop", tag);
        n = new_node(p, !strcmp(tag, "break") ? S_BREAK : S_CONTINUE, t->line);
        expect_block_end(p);
    } else if (!strcmp(tag, "with")) {
        n = new_node(p, S_WITH, t->line);
        nvec v = {0};
        while (peek(p)->kind != TK_BLOCK_END) {
            if (v.n) expect_op(p, ",");
            const char *nm = expect_name(p);
            expect_op(p, "=");
            nvec_push(p, &v, parse_expr(p, 1), nm);
        }
        expect_block_end(p);
        n->items = v.v;
        n->names = v.names;
        n->n_items = v.n;
        static const char *const ends[] = {"endwith"};
        n->body = parse_seq_hard(p, ends, 1, &which, loops);
        expect_block_end(p);
    } else if (!strcmp(tag, "filter")) {
        n = new_node(p, S_FILTERBLOCK, t->line);
        int saved_soft = p->soft;
        p->soft = 0;
        node *f = parse_filter(p, NULL);
        while (is_op(peek(p), "|")) {
            next_tok(p);
            f = parse_filter(p, f);
        }
        p->soft = saved_soft;
        n->a = f;
        expect_block_end(p);
        static const char *const ends[] = {"endfilter"};
        n->body = parse_seq_hard(p, ends, 1, &which, loops);
        expect_block_end(p);
    } else if (!strcmp(tag, "generation")) {
        n = new_node(p, S_GENERATION, t->line);
        expect_block_end(p);
        static const char *const ends[] = {"endgeneration"};
        n->body = parse_seq(p, ends, 1, &which, loops);
        expect_block_end(p);
    } else {
        static const char *const known[] = {"extends", "block", "include", "import", "from", "call", "do", "raw"};
        if (name_in(tag, known, 8)) perr(p, t->line, "the '%s' tag is not supported in chat templates", tag);
        perr(p, t->line, "Encountered unknown tag '%s'.", tag);
    }
    leave(p);
    return n;
}

/* Statements up to a block tag named in ends (its name is consumed and
 * returned in *which; the caller reads the rest of that tag). */
static node *parse_seq(parser *p, const char *const *ends, int n_ends, const char **which, int loops) {
    node *seq = new_node(p, S_SEQ, peek(p)->line);
    nvec v = {0};
    for (;;) {
        token *t = peek(p);
        if (t->kind == TK_EOF) {
            if (n_ends) {
                char buf[200] = "";
                const char *opener = "";
                for (int k = 0; k < n_ends; k++) {
                    size_t l = strlen(buf);
                    snprintf(buf + l, sizeof buf - l, "%s'%s'", k ? " or " : "", ends[k]);
                    if (!strncmp(ends[k], "end", 3)) opener = ends[k] + 3;
                }
                perr(p, t->line,
                     "Unexpected end of template. Jinja was looking for the following tags: %s. The innermost block "
                     "that needs to be closed is '%s'.",
                     buf, opener);
            }
            break;
        }
        next_tok(p);
        if (t->kind == TK_DATA) {
            node *x = new_node(p, S_TEXT, t->line);
            x->lit.t = T_STR;
            jstr *s = palloc(p, sizeof *s + t->n + 1);
            memcpy(s->p, t->s, t->n);
            s->n = t->n;
            x->lit.u.s = s;
            nvec_push(p, &v, x, NULL);
        } else if (t->kind == TK_VAR_BEGIN) {
            node *x = new_node(p, S_OUT, t->line);
            x->a = parse_tuple(p, 1, 0);
            token *e = next_tok(p);
            if (e->kind != TK_VAR_END) perr(p, e->line, "expected token 'end of print statement', got '%s'", tok_desc(e));
            nvec_push(p, &v, x, NULL);
        } else if (t->kind == TK_BLOCK_BEGIN) {
            token *nm = peek(p);
            if (nm->kind == TK_NAME && name_in(nm->s, ends, n_ends)) {
                next_tok(p);
                *which = nm->s;
                break;
            }
            if (nm->kind == TK_NAME && (!strncmp(nm->s, "end", 3) || !strcmp(nm->s, "else") || !strcmp(nm->s, "elif")))
                perr(p, nm->line, "Encountered unknown tag '%s'.", nm->s);
            nvec_push(p, &v, parse_statement(p, loops), NULL);
        } else {
            perr(p, t->line, "unexpected '%s'", tok_desc(t));
        }
    }
    seq->items = v.v;
    seq->n_items = v.n;
    return seq;
}

/* ---------------------------------------------------------------- runtime */

typedef struct scope {
    struct scope *parent;
    const char **names;
    jval *vals;
    int n, cap;
} scope;

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

struct ctx {
    arena ar;
    jmp_buf jb;
    char *err;
    size_t err_cap;
    pam_jinja_limits lim;
    uint64_t steps;
    int depth;
    int ctl; /* 1 break, 2 continue */
    sbuf *out;
    scope *sc;
};

struct macro {
    const node *def;
    scope *closure;
};

static JNORETURN void rerr(ctx *c, const char *kind, const char *fmt, ...) JPRINTF(3, 4);
static void rerr(ctx *c, const char *kind, const char *fmt, ...) {
    int k = snprintf(c->err, c->err_cap, "%s: ", kind);
    if (k < 0) k = 0;
    if ((size_t)k < c->err_cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + k, c->err_cap - (size_t)k, fmt, ap);
        va_end(ap);
    }
    longjmp(c->jb, 1);
}

static void *ralloc(ctx *c, size_t n) {
    void *p = arena_alloc(&c->ar, n);
    if (!p) rerr(c, "TemplateError", "the template used more than %zu bytes of memory", c->lim.max_memory_bytes);
    return p;
}

static void tick(ctx *c, uint64_t n) {
    c->steps += n;
    if (c->steps > c->lim.max_steps)
        rerr(c, "TemplateError", "the template ran for more than %llu steps", (unsigned long long)c->lim.max_steps);
}

static void sb_put(ctx *c, sbuf *b, const char *s, size_t n) {
    if (b->n + n > c->lim.max_output_bytes)
        rerr(c, "TemplateError", "the template's output exceeds %zu bytes", c->lim.max_output_bytes);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = ralloc(c, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_puts(ctx *c, sbuf *b, const char *s) { sb_put(c, b, s, strlen(s)); }

static jval v_undef(const char *hint) {
    jval v = {.t = T_UNDEF};
    v.u.hint = hint;
    return v;
}
static jval v_none(void) { return (jval){.t = T_NONE}; }
static jval v_bool(int b) {
    jval v = {.t = T_BOOL};
    v.u.b = b != 0;
    return v;
}
static jval v_int(int64_t i) {
    jval v = {.t = T_INT};
    v.u.i = i;
    return v;
}
static jval v_float(double f) {
    jval v = {.t = T_FLOAT};
    v.u.f = f;
    return v;
}

static jstr *mk_jstr(ctx *c, const char *p, size_t n) {
    if (n > c->lim.max_memory_bytes) rerr(c, "TemplateError", "a string of %zu bytes is too large", n);
    jstr *s = ralloc(c, sizeof *s + n + 1);
    if (n) memcpy(s->p, p, n);
    s->p[n] = '\0';
    s->n = n;
    return s;
}

static jval v_str(ctx *c, const char *p, size_t n) {
    jval v = {.t = T_STR};
    v.u.s = mk_jstr(c, p, n);
    return v;
}
static jval v_cstr(ctx *c, const char *p) { return v_str(c, p, strlen(p)); }
static jval v_sbuf(ctx *c, const sbuf *b) { return v_str(c, b->p ? b->p : "", b->n); }

static jval v_list(ctx *c, size_t cap) {
    jval v = {.t = T_LIST};
    v.u.l = ralloc(c, sizeof *v.u.l);
    v.u.l->n = 0;
    v.u.l->is_tuple = 0;
    v.u.l->cap = cap;
    v.u.l->v = cap ? ralloc(c, cap * sizeof(jval)) : NULL;
    return v;
}

static void list_push(ctx *c, jlist *l, jval x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        if (cap > c->lim.max_memory_bytes / sizeof(jval)) rerr(c, "TemplateError", "a list is too large");
        jval *nv = ralloc(c, cap * sizeof *nv);
        if (l->n) memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static jval v_dict(ctx *c, size_t cap, vtype t) {
    jval v = {.t = t};
    v.u.d = ralloc(c, sizeof *v.u.d);
    v.u.d->n = 0;
    v.u.d->cap = cap;
    v.u.d->k = cap ? ralloc(c, cap * sizeof(jval)) : NULL;
    v.u.d->v = cap ? ralloc(c, cap * sizeof(jval)) : NULL;
    return v;
}

static int v_eq(ctx *c, jval a, jval b);

static jval *dict_find(ctx *c, const jdict *d, jval key) {
    for (size_t i = 0; i < d->n; i++)
        if (v_eq(c, d->k[i], key)) return &d->v[i];
    return NULL;
}

static jval *dict_find_s(const jdict *d, const char *key) {
    size_t n = strlen(key);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == T_STR && d->k[i].u.s->n == n && !memcmp(d->k[i].u.s->p, key, n)) return &d->v[i];
    return NULL;
}

/* Sets key (replacing an equal key, as a Python dict does). */
static void dict_set(ctx *c, jdict *d, jval key, jval val) {
    jval *e = dict_find(c, d, key);
    if (e) {
        *e = val;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        if (cap > c->lim.max_memory_bytes / sizeof(jval)) rerr(c, "TemplateError", "a dict is too large");
        jval *nk = ralloc(c, cap * sizeof *nk), *nv = ralloc(c, cap * sizeof *nv);
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n++] = val;
}

static void dict_set_s(ctx *c, jdict *d, const char *key, jval val) { dict_set(c, d, v_cstr(c, key), val); }

static jval v_func(ctx *c, const char *name, jval self, builtin_fn fn) {
    jval v = {.t = T_FUNC};
    v.u.fn = ralloc(c, sizeof *v.u.fn);
    v.u.fn->name = name;
    v.u.fn->self = self;
    v.u.fn->fn = fn;
    return v;
}

static const char *type_name(jval v) {
    switch (v.t) {
    case T_UNDEF: return "Undefined";
    case T_NONE: return "NoneType";
    case T_BOOL: return "bool";
    case T_INT: return "int";
    case T_FLOAT: return "float";
    case T_STR: return "str";
    case T_LIST: return "list";
    case T_DICT: return "dict";
    case T_NS: return "Namespace";
    case T_MACRO: return "Macro";
    case T_LOOP: return "LoopContext";
    default: return "builtin_function_or_method";
    }
}

/* jinja2's object_type_repr, for "has no attribute" messages. */
static const char *obj_desc(ctx *c, jval v) {
    if (v.t == T_NONE) return "None";
    const char *t = type_name(v);
    char *s = ralloc(c, strlen(t) + 8);
    sprintf(s, "%s object", t);
    return s;
}

static JNORETURN void fail_undef(ctx *c, jval v) { rerr(c, "UndefinedError", "%s", v.u.hint ? v.u.hint : "undefined"); }

static char *fmt_hint(ctx *c, const char *fmt, const char *a, const char *b) {
    size_t n = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
    char *s = ralloc(c, n);
    snprintf(s, n, fmt, a, b ? b : "");
    return s;
}

static int truthy(jval v) {
    switch (v.t) {
    case T_UNDEF:
    case T_NONE: return 0;
    case T_BOOL: return v.u.b;
    case T_INT: return v.u.i != 0;
    case T_FLOAT: return v.u.f != 0;
    case T_STR: return v.u.s->n != 0;
    case T_LIST: return v.u.l->n != 0;
    case T_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

static int is_num(jval v) { return v.t == T_INT || v.t == T_FLOAT || v.t == T_BOOL; }
static int is_intlike(jval v) { return v.t == T_INT || v.t == T_BOOL; }
static int64_t as_int(jval v) { return v.t == T_BOOL ? v.u.b : v.u.i; }
static double as_f(jval v) { return v.t == T_FLOAT ? v.u.f : (double)as_int(v); }

/* ---- UTF-8 */

static int is_cont(unsigned char ch) { return (ch & 0xc0) == 0x80; }

static size_t u8_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += !is_cont((unsigned char)s[i]) || i == 0;
    return k;
}

/* Byte offset of code point idx (n for idx == length). */
static size_t u8_off(const char *s, size_t n, size_t idx) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_cont((unsigned char)s[i]) || i == 0) {
            if (k == idx) return i;
            k++;
        }
    }
    return n;
}

static size_t u8_next(const char *s, size_t n, size_t i) {
    i++;
    while (i < n && is_cont((unsigned char)s[i])) i++;
    return i;
}

static int32_t u8_decode(const char *s, size_t n, size_t i) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
    return k > 0 ? cp : -1;
}

/* Python's str.isspace() code points. */
static int is_uspace(int32_t cp) {
    return (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
           cp == 0x3000;
}

/* ---- str() and repr() */

static void fmt_float(double f, char *buf, size_t cap) {
    if (isnan(f)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, cap, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    /* tmp: d.ddde[+-]XX with prec significant digits */
    char digits[24];
    size_t nd = 0;
    const char *q = tmp;
    int neg = 0;
    if (*q == '-') neg = 1, q++;
    for (; *q && *q != 'e'; q++)
        if (isdigit((unsigned char)*q)) digits[nd++] = *q;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    char *o = buf;
    size_t left = cap;
#define PUT(...)                                        \
    do {                                                \
        int w_ = snprintf(o, left, __VA_ARGS__);        \
        if (w_ < 0 || (size_t)w_ >= left) return;       \
        o += w_, left -= (size_t)w_;                    \
    } while (0)
    if (neg) PUT("-");
    if (exp10 < -4 || exp10 >= 16) {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        PUT("0.");
        for (int k = -1; k > exp10; k--) PUT("0");
        PUT("%s", digits);
    } else {
        for (int k = 0; k <= exp10; k++) PUT("%c", (size_t)k < nd ? digits[k] : '0');
        PUT(".");
        if ((size_t)exp10 + 1 < nd)
            PUT("%s", digits + exp10 + 1);
        else
            PUT("0");
    }
#undef PUT
}

static void repr_into(ctx *c, sbuf *b, jval v);

static void str_repr_into(ctx *c, sbuf *b, const jstr *s) {
    char q = (memchr(s->p, '\'', s->n) && !memchr(s->p, '"', s->n)) ? '"' : '\'';
    sb_put(c, b, &q, 1);
    for (size_t i = 0; i < s->n; i++) {
        unsigned char ch = (unsigned char)s->p[i];
        char e[8];
        if (ch == '\\' || ch == (unsigned char)q) {
            e[0] = '\\', e[1] = (char)ch;
            sb_put(c, b, e, 2);
        } else if (ch == '\n') {
            sb_put(c, b, "\\n", 2);
        } else if (ch == '\r') {
            sb_put(c, b, "\\r", 2);
        } else if (ch == '\t') {
            sb_put(c, b, "\\t", 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            snprintf(e, sizeof e, "\\x%02x", ch);
            sb_put(c, b, e, 4);
        } else {
            sb_put(c, b, (const char *)&s->p[i], 1);
        }
    }
    sb_put(c, b, &q, 1);
}

static void str_into(ctx *c, sbuf *b, jval v) {
    char num[48];
    switch (v.t) {
    case T_UNDEF: return;
    case T_NONE: sb_puts(c, b, "None"); return;
    case T_BOOL: sb_puts(c, b, v.u.b ? "True" : "False"); return;
    case T_INT: snprintf(num, sizeof num, "%lld", (long long)v.u.i); sb_puts(c, b, num); return;
    case T_FLOAT: fmt_float(v.u.f, num, sizeof num); sb_puts(c, b, num); return;
    case T_STR: sb_put(c, b, v.u.s->p, v.u.s->n); return;
    default: repr_into(c, b, v);
    }
}

static void repr_into(ctx *c, sbuf *b, jval v) {
    tick(c, 1);
    if (++c->depth > c->lim.max_depth) rerr(c, "TemplateError", "values nest deeper than %d levels", c->lim.max_depth);
    switch (v.t) {
    case T_STR: str_repr_into(c, b, v.u.s); break;
    case T_UNDEF: break;
    case T_LIST:
        sb_puts(c, b, v.u.l->is_tuple ? "(" : "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_puts(c, b, ", ");
            repr_into(c, b, v.u.l->v[i]);
        }
        sb_puts(c, b, v.u.l->is_tuple ? (v.u.l->n == 1 ? ",)" : ")") : "]");
        break;
    case T_DICT:
    case T_NS:
        sb_puts(c, b, v.t == T_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) sb_puts(c, b, ", ");
            repr_into(c, b, v.u.d->k[i]);
            sb_puts(c, b, ": ");
            repr_into(c, b, v.u.d->v[i]);
        }
        sb_puts(c, b, v.t == T_NS ? "}>" : "}");
        break;
    case T_MACRO: sb_puts(c, b, "<Macro>"); break;
    case T_LOOP: sb_puts(c, b, "<LoopContext>"); break;
    case T_FUNC: sb_puts(c, b, "<built-in function "); sb_puts(c, b, v.u.fn->name); sb_puts(c, b, ">"); break;
    default: str_into(c, b, v);
    }
    c->depth--;
}

static jstr *to_jstr(ctx *c, jval v) {
    if (v.t == T_STR) return v.u.s;
    sbuf b = {0};
    str_into(c, &b, v);
    return mk_jstr(c, b.p ? b.p : "", b.n);
}

static jval to_strv(ctx *c, jval v) {
    jval r = {.t = T_STR};
    r.u.s = to_jstr(c, v);
    return r;
}

/* ---- JSON (Python's json.dumps, as Hugging Face's tojson calls it) */

typedef struct jsonopt {
    int indent; /* -1: none */
    int sort_keys, ensure_ascii;
    const jstr *item_sep, *key_sep;
} jsonopt;

static void json_str_into(ctx *c, sbuf *b, const char *s, size_t n, int ensure_ascii) {
    sb_puts(c, b, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        char e[16];
        if (ch == '"') sb_puts(c, b, "\\\"");
        else if (ch == '\\') sb_puts(c, b, "\\\\");
        else if (ch == '\n') sb_puts(c, b, "\\n");
        else if (ch == '\r') sb_puts(c, b, "\\r");
        else if (ch == '\t') sb_puts(c, b, "\\t");
        else if (ch == '\b') sb_puts(c, b, "\\b");
        else if (ch == '\f') sb_puts(c, b, "\\f");
        else if (ch < 0x20 || (ensure_ascii && ch == 0x7f)) {
            snprintf(e, sizeof e, "\\u%04x", ch);
            sb_puts(c, b, e);
        } else if (ch >= 0x80 && ensure_ascii) {
            int32_t cp = u8_decode(s, n, i);
            size_t nx = u8_next(s, n, i);
            if (cp < 0) cp = 0xfffd;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else {
                snprintf(e, sizeof e, "\\u%04x", cp);
            }
            sb_puts(c, b, e);
            i = nx;
            continue;
        } else {
            sb_put(c, b, s + i, 1);
        }
        i++;
    }
    sb_puts(c, b, "\"");
}

static int cmp_str(const jstr *a, const jstr *b) {
    size_t n = a->n < b->n ? a->n : b->n;
    int r = memcmp(a->p, b->p, n);
    if (r) return r;
    return a->n < b->n ? -1 : a->n > b->n;
}

static void json_newline(ctx *c, sbuf *b, const jsonopt *o, int level) {
    sb_puts(c, b, "\n");
    for (int k = 0; k < o->indent * level; k++) sb_puts(c, b, " ");
}

static void json_into(ctx *c, sbuf *b, jval v, const jsonopt *o, int level) {
    tick(c, 1);
    if (++c->depth > c->lim.max_depth) rerr(c, "TemplateError", "values nest deeper than %d levels", c->lim.max_depth);
    char num[48];
    switch (v.t) {
    case T_NONE: sb_puts(c, b, "null"); break;
    case T_BOOL: sb_puts(c, b, v.u.b ? "true" : "false"); break;
    case T_INT: snprintf(num, sizeof num, "%lld", (long long)v.u.i); sb_puts(c, b, num); break;
    case T_FLOAT:
        if (isnan(v.u.f)) sb_puts(c, b, "NaN");
        else if (isinf(v.u.f)) sb_puts(c, b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else {
            fmt_float(v.u.f, num, sizeof num);
            sb_puts(c, b, num);
        }
        break;
    case T_STR: json_str_into(c, b, v.u.s->p, v.u.s->n, o->ensure_ascii); break;
    case T_LIST:
        if (!v.u.l->n) {
            sb_puts(c, b, "[]");
            break;
        }
        sb_puts(c, b, "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) sb_put(c, b, o->item_sep->p, o->item_sep->n);
            if (o->indent >= 0) json_newline(c, b, o, level + 1);
            json_into(c, b, v.u.l->v[i], o, level + 1);
        }
        if (o->indent >= 0) json_newline(c, b, o, level);
        sb_puts(c, b, "]");
        break;
    case T_DICT: {
        const jdict *d = v.u.d;
        if (!d->n) {
            sb_puts(c, b, "{}");
            break;
        }
        size_t *ord = ralloc(c, d->n * sizeof *ord);
        for (size_t i = 0; i < d->n; i++) {
            ord[i] = i;
            if (d->k[i].t != T_STR && d->k[i].t != T_INT && d->k[i].t != T_FLOAT && d->k[i].t != T_BOOL &&
                d->k[i].t != T_NONE)
                rerr(c, "TypeError", "keys must be str, int, float, bool or None, not %s", type_name(d->k[i]));
        }
        if (o->sort_keys) /* insertion sort: stable, and dicts in templates are small */
            for (size_t i = 1; i < d->n; i++) {
                size_t x = ord[i], j = i;
                if (d->k[x].t != T_STR) rerr(c, "TypeError", "sort_keys needs string keys");
                while (j > 0 && cmp_str(d->k[ord[j - 1]].u.s, d->k[x].u.s) > 0) ord[j] = ord[j - 1], j--;
                ord[j] = x;
                tick(c, i);
            }
        sb_puts(c, b, "{");
        for (size_t i = 0; i < d->n; i++) {
            if (i) sb_put(c, b, o->item_sep->p, o->item_sep->n);
            if (o->indent >= 0) json_newline(c, b, o, level + 1);
            jval k = d->k[ord[i]];
            if (k.t == T_STR)
                json_into(c, b, k, o, level + 1);
            else {
                sbuf kb = {0};
                if (k.t == T_NONE) sb_puts(c, &kb, "null");
                else if (k.t == T_BOOL) sb_puts(c, &kb, k.u.b ? "true" : "false");
                else json_into(c, &kb, k, o, level + 1);
                json_str_into(c, b, kb.p, kb.n, o->ensure_ascii);
            }
            sb_put(c, b, o->key_sep->p, o->key_sep->n);
            json_into(c, b, d->v[ord[i]], o, level + 1);
        }
        if (o->indent >= 0) json_newline(c, b, o, level);
        sb_puts(c, b, "}");
        break;
    }
    default: rerr(c, "TypeError", "Object of type %s is not JSON serializable", type_name(v));
    }
    c->depth--;
}

static jval from_json(ctx *c, const json_t *j, int depth) {
    if (depth > c->lim.max_depth) rerr(c, "TemplateError", "the variables nest deeper than %d levels", c->lim.max_depth);
    tick(c, 1);
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jval d = v_dict(c, json_object_size(j), T_DICT);
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)j, k, x) {
            jval key = v_cstr(c, k);
            d.u.d->k[d.u.d->n] = key;
            d.u.d->v[d.u.d->n++] = from_json(c, x, depth + 1);
        }
        return d;
    }
    case JSON_ARRAY: {
        jval l = v_list(c, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++) l.u.l->v[l.u.l->n++] = from_json(c, json_array_get(j, i), depth + 1);
        return l;
    }
    case JSON_STRING: return v_str(c, json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return v_int((int64_t)json_integer_value(j));
    case JSON_REAL: return v_float(json_real_value(j));
    case JSON_TRUE: return v_bool(1);
    case JSON_FALSE: return v_bool(0);
    default: return v_none();
    }
}

/* ---- equality, ordering, arithmetic */

static void enter_eval(ctx *c);

static int v_eq_in(ctx *c, jval a, jval b);

/* Values can nest as deep as a template builds them: compare under the
 * depth bound. */
static int v_eq(ctx *c, jval a, jval b) {
    enter_eval(c);
    int r = v_eq_in(c, a, b);
    c->depth--;
    return r;
}

static int v_eq_in(ctx *c, jval a, jval b) {
    tick(c, 1);
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return as_int(a) == as_int(b);
        return as_f(a) == as_f(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case T_UNDEF:
    case T_NONE: return 1;
    case T_STR: return a.u.s->n == b.u.s->n && !memcmp(a.u.s->p, b.u.s->p, a.u.s->n);
    case T_LIST:
        if (a.u.l->n != b.u.l->n || a.u.l->is_tuple != b.u.l->is_tuple) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!v_eq(c, a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case T_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jval *o = dict_find(c, b.u.d, a.u.d->k[i]);
            if (!o || !v_eq(c, a.u.d->v[i], *o)) return 0;
        }
        return 1;
    case T_NS: return a.u.d == b.u.d;
    case T_MACRO: return a.u.m == b.u.m;
    case T_LOOP: return a.u.lp == b.u.lp;
    default: return a.u.fn == b.u.fn;
    }
}

static const char *op_sym(int op) {
    static const char *const s[] = {"+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "in", "not in"};
    return s[op];
}

static int v_cmp(ctx *c, jval a, jval b, int op) {
    if (a.t == T_UNDEF) fail_undef(c, a);
    if (b.t == T_UNDEF) fail_undef(c, b);
    tick(c, 1);
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return as_int(a) < as_int(b) ? -1 : as_int(a) > as_int(b);
        double x = as_f(a), y = as_f(b);
        if (isnan(x) || isnan(y)) return 2; /* unordered */
        return x < y ? -1 : x > y;
    }
    if (a.t == T_STR && b.t == T_STR) return cmp_str(a.u.s, b.u.s);
    if (a.t == T_LIST && b.t == T_LIST) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (v_eq(c, a.u.l->v[i], b.u.l->v[i])) continue;
            enter_eval(c);
            int r = v_cmp(c, a.u.l->v[i], b.u.l->v[i], op);
            c->depth--;
            return r;
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    rerr(c, "TypeError", "'%s' not supported between instances of '%s' and '%s'", op_sym(op), type_name(a), type_name(b));
}

static jval concat_str(ctx *c, const jstr *a, const jstr *b) {
    if (a->n + b->n > c->lim.max_memory_bytes) rerr(c, "TemplateError", "a string is too large");
    jval r = {.t = T_STR};
    r.u.s = ralloc(c, sizeof *r.u.s + a->n + b->n + 1);
    memcpy(r.u.s->p, a->p, a->n);
    memcpy(r.u.s->p + a->n, b->p, b->n);
    r.u.s->n = a->n + b->n;
    r.u.s->p[r.u.s->n] = '\0';
    tick(c, (a->n + b->n) / 4096);
    return r;
}

static jval repeat(ctx *c, jval seq, int64_t k) {
    if (k < 0) k = 0;
    size_t unit = seq.t == T_STR ? seq.u.s->n : seq.u.l->n * sizeof(jval);
    if (unit && (uint64_t)k > c->lim.max_memory_bytes / unit) rerr(c, "TemplateError", "a repeated value is too large");
    tick(c, (uint64_t)k * (seq.t == T_STR ? 1 : seq.u.l->n) / 64);
    if (seq.t == T_STR) {
        sbuf b = {0};
        sb_put(c, &b, "", 0);
        for (int64_t i = 0; i < k; i++) {
            if (b.n + seq.u.s->n + 1 > b.cap) {
                /* grow without the output-size check: this is a value */
                size_t cap = b.cap * 2;
                while (cap < b.n + seq.u.s->n + 1) cap *= 2;
                char *p = ralloc(c, cap);
                memcpy(p, b.p, b.n);
                b.p = p;
                b.cap = cap;
            }
            memcpy(b.p + b.n, seq.u.s->p, seq.u.s->n);
            b.n += seq.u.s->n;
        }
        return v_str(c, b.p, b.n);
    }
    jval r = v_list(c, (size_t)k * seq.u.l->n);
    for (int64_t i = 0; i < k; i++)
        for (size_t j = 0; j < seq.u.l->n; j++) r.u.l->v[r.u.l->n++] = seq.u.l->v[j];
    return r;
}

static int64_t want_int(ctx *c, jval v, const char *what);
static void put_cp(ctx *c, sbuf *b, int32_t cp);

/* Python's printf-style formatting (str % args, the format filter):
 * %[(name)][flags][width][.precision]conversion with conversions s r a d i u
 * f F e E g G x X o c and %%. */
static jval percent_format(ctx *c, const jstr *fmt, jval argv) {
    jval single[1] = {argv};
    const jval *items = single;
    size_t n_items = 1, next = 0;
    int by_name = argv.t == T_DICT;
    if (argv.t == T_LIST && argv.u.l->is_tuple) items = argv.u.l->v, n_items = argv.u.l->n;
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    for (size_t i = 0; i < fmt->n; i++) {
        if (fmt->p[i] != '%') {
            sb_put(c, &b, fmt->p + i, 1);
            continue;
        }
        if (++i >= fmt->n) rerr(c, "ValueError", "incomplete format");
        jval v;
        int have_v = 0;
        if (fmt->p[i] == '(') {
            size_t j = i + 1;
            while (j < fmt->n && fmt->p[j] != ')') j++;
            if (j >= fmt->n) rerr(c, "ValueError", "incomplete format key");
            if (argv.t != T_DICT) rerr(c, "TypeError", "format requires a mapping");
            jval key = v_str(c, fmt->p + i + 1, j - i - 1);
            jval *e = dict_find(c, argv.u.d, key);
            if (!e) rerr(c, "KeyError", "'%s'", key.u.s->p);
            v = *e;
            have_v = 1;
            i = j + 1;
        }
        char spec[32] = "%";
        size_t k = 1;
        while (i < fmt->n && strchr("-+ #0", fmt->p[i]) && k < 8) spec[k++] = fmt->p[i++];
        int width = -1, prec = -1;
        for (int part = 0; part < 2; part++) {
            if (part == 1) {
                if (i >= fmt->n || fmt->p[i] != '.') break;
                i++;
                prec = 0;
            }
            int val = 0, any = 0;
            if (i < fmt->n && fmt->p[i] == '*') {
                if (by_name || next >= n_items) rerr(c, "TypeError", "not enough arguments for format string");
                int64_t w = want_int(c, items[next++], "* width");
                val = w > 100000 ? 100000 : w < -100000 ? -100000 : (int)w;
                any = 1;
                i++;
            } else {
                while (i < fmt->n && isdigit((unsigned char)fmt->p[i]) && val < 100000) val = val * 10 + (fmt->p[i++] - '0'), any = 1;
            }
            if (val > 4096 || val < -4096) rerr(c, "ValueError", "a width or precision of %d is too large", val);
            if (val < 0 && part == 0) { /* Python: a negative * width left-justifies */
                val = -val;
                if (k < 8) spec[k++] = '-';
            } else if (val < 0) {
                val = 0;
            }
            if (part == 0 && any) width = val;
            if (part == 1) prec = val;
        }
        if (i >= fmt->n) rerr(c, "ValueError", "incomplete format");
        char conv = fmt->p[i];
        if (conv == '%') {
            sb_puts(c, &b, "%");
            continue;
        }
        if (!have_v) {
            if (by_name) rerr(c, "TypeError", "format requires a mapping");
            if (next >= n_items) rerr(c, "TypeError", "not enough arguments for format string");
            v = items[next++];
        }
        if (v.t == T_UNDEF && conv != 's') fail_undef(c, v);
        char out[4200];
        int left = strchr(spec, '-') != NULL;
        switch (conv) {
        case 's':
        case 'r':
        case 'a': {
            sbuf t = {0};
            sb_put(c, &t, "", 0);
            if (conv == 's') str_into(c, &t, v);
            else repr_into(c, &t, v);
            size_t len = t.n;
            if (prec >= 0) len = u8_off(t.p, t.n, (size_t)prec);
            size_t cps = u8_len(t.p, len);
            for (int pad = width - (int)cps; !left && pad > 0; pad--) sb_puts(c, &b, " ");
            sb_put(c, &b, t.p, len);
            for (int pad = width - (int)cps; left && pad > 0; pad--) sb_puts(c, &b, " ");
            continue;
        }
        case 'd': case 'i': case 'u': case 'x': case 'X': case 'o': case 'c': {
            int64_t x;
            if (v.t == T_FLOAT && conv != 'c' && conv != 'x' && conv != 'X' && conv != 'o') {
                if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18) rerr(c, "OverflowError", "cannot convert float to integer");
                x = (int64_t)v.u.f;
            } else if (conv == 'c' && v.t == T_STR) {
                if (u8_len(v.u.s->p, v.u.s->n) != 1) rerr(c, "TypeError", "%%c requires int or char");
                sb_put(c, &b, v.u.s->p, v.u.s->n);
                continue;
            } else {
                if (!is_intlike(v)) rerr(c, "TypeError", "%%%c format: a real number is required, not %s", conv, type_name(v));
                x = as_int(v);
            }
            if (conv == 'c') {
                if (x < 0 || x > 0x10ffff) rerr(c, "OverflowError", "%%c arg not in range(0x110000)");
                put_cp(c, &b, (int32_t)x);
                continue;
            }
            char cv = conv == 'i' || conv == 'u' ? 'd' : conv;
            /* C ignores the 0 flag when a precision is given: give one only if asked */
            snprintf(spec + k, sizeof spec - k, prec < 0 ? "*ll%c" : "*.*ll%c", cv);
            int w = width < 0 ? 0 : width, pr = prec;
            if (cv != 'd' && x < 0) { /* Python prints a sign, C prints two's complement */
                char tmp[64];
                snprintf(tmp, sizeof tmp, cv == 'o' ? "-%llo" : cv == 'x' ? "-%llx" : "-%llX", (unsigned long long)-(x + 1) + 1ull);
                snprintf(out, sizeof out, "%*s", left ? -w : w, tmp);
            } else if (prec < 0) {
                snprintf(out, sizeof out, spec, w, (long long)x);
            } else {
                snprintf(out, sizeof out, spec, w, pr, (long long)x);
            }
            sb_puts(c, &b, out);
            continue;
        }
        case 'f': case 'F': case 'e': case 'E': case 'g': case 'G': {
            if (!is_num(v)) rerr(c, "TypeError", "must be real number, not %s", type_name(v));
            snprintf(spec + k, sizeof spec - k, "*.*%c", conv);
            snprintf(out, sizeof out, spec, width < 0 ? 0 : width, prec < 0 ? 6 : prec, as_f(v));
            sb_puts(c, &b, out);
            continue;
        }
        default: rerr(c, "ValueError", "unsupported format character '%c'", conv);
        }
    }
    if (!by_name && next < n_items) rerr(c, "TypeError", "not all arguments converted during string formatting");
    return v_sbuf(c, &b);
}

static int64_t floordiv_i(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static jval arith(ctx *c, int op, jval a, jval b) {
    if (op == OP_CONCAT) {
        sbuf s = {0};
        str_into(c, &s, a);
        str_into(c, &s, b);
        return v_sbuf(c, &s);
    }
    if (op == OP_MOD && a.t == T_STR) return percent_format(c, a.u.s, b);
    if (a.t == T_UNDEF) fail_undef(c, a);
    if (b.t == T_UNDEF) fail_undef(c, b);
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b) && op != OP_DIV) {
            int64_t x = as_int(a), y = as_int(b), r = 0;
            int ovf = 0;
            switch (op) {
            case OP_ADD: ovf = __builtin_add_overflow(x, y, &r); break;
            case OP_SUB: ovf = __builtin_sub_overflow(x, y, &r); break;
            case OP_MUL: ovf = __builtin_mul_overflow(x, y, &r); break;
            case OP_FLOORDIV:
            case OP_MOD:
                if (y == 0) rerr(c, "ZeroDivisionError", "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) ovf = 1;
                else if (op == OP_FLOORDIV) r = floordiv_i(x, y);
                else r = x - floordiv_i(x, y) * y;
                break;
            case OP_POW:
                if (y < 0) return v_float(pow((double)x, (double)y));
                r = 1;
                for (int64_t k = 0; k < y && !ovf; k++) {
                    ovf = __builtin_mul_overflow(r, x, &r);
                    if (r == 0 || r == 1 || (r == -1 && x == -1)) {
                        if (x == -1) r = (y % 2) ? -1 : 1;
                        break;
                    }
                }
                break;
            }
            if (ovf) rerr(c, "OverflowError", "integer result out of the supported 64-bit range");
            return v_int(r);
        }
        double x = as_f(a), y = as_f(b);
        switch (op) {
        case OP_ADD: return v_float(x + y);
        case OP_SUB: return v_float(x - y);
        case OP_MUL: return v_float(x * y);
        case OP_DIV:
            if (y == 0) rerr(c, "ZeroDivisionError", "division by zero");
            return v_float(x / y);
        case OP_FLOORDIV:
            if (y == 0) rerr(c, "ZeroDivisionError", "float floor division by zero");
            return v_float(floor(x / y));
        case OP_MOD: {
            if (y == 0) rerr(c, "ZeroDivisionError", "float modulo");
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return v_float(m);
        }
        default: return v_float(pow(x, y));
        }
    }
    if (op == OP_ADD) {
        if (a.t == T_STR && b.t == T_STR) return concat_str(c, a.u.s, b.u.s);
        if (a.t == T_LIST && b.t == T_LIST) {
            jval r = v_list(c, a.u.l->n + b.u.l->n);
            tick(c, r.u.l->cap / 64);
            memcpy(r.u.l->v, a.u.l->v, a.u.l->n * sizeof(jval));
            memcpy(r.u.l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof(jval));
            r.u.l->n = a.u.l->n + b.u.l->n;
            return r;
        }
        if (a.t == T_STR || a.t == T_LIST)
            rerr(c, "TypeError", "can only concatenate %s (not \"%s\") to %s", type_name(a), type_name(b), type_name(a));
    }
    if (op == OP_MUL) {
        if ((a.t == T_STR || a.t == T_LIST) && is_intlike(b)) return repeat(c, a, as_int(b));
        if ((b.t == T_STR || b.t == T_LIST) && is_intlike(a)) return repeat(c, b, as_int(a));
    }
    rerr(c, "TypeError", "unsupported operand type(s) for %s: '%s' and '%s'", op_sym(op), type_name(a), type_name(b));
}

static int contains(ctx *c, jval hay, jval needle) {
    switch (hay.t) {
    case T_UNDEF: fail_undef(c, hay);
    case T_STR:
        if (needle.t == T_UNDEF) fail_undef(c, needle);
        if (needle.t != T_STR) rerr(c, "TypeError", "'in <string>' requires string as left operand, not %s", type_name(needle));
        tick(c, hay.u.s->n / 256);
        return needle.u.s->n == 0 || memmem(hay.u.s->p, hay.u.s->n, needle.u.s->p, needle.u.s->n) != NULL;
    case T_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (v_eq(c, hay.u.l->v[i], needle)) return 1;
        return 0;
    case T_DICT:
        if ((needle.t == T_LIST && !needle.u.l->is_tuple) || needle.t == T_DICT || needle.t == T_NS)
            rerr(c, "TypeError", "unhashable type: '%s'", type_name(needle));
        return dict_find(c, hay.u.d, needle) != NULL;
    default: rerr(c, "TypeError", "argument of type '%s' is not iterable", type_name(hay));
    }
}

/* The items a for loop visits: a list's items, a dict's keys, a string's
 * characters, nothing for undefined. */
static jlist *iter_items(ctx *c, jval v) {
    jlist *l = ralloc(c, sizeof *l);
    memset(l, 0, sizeof *l);
    switch (v.t) {
    case T_UNDEF: return l;
    case T_LIST: return v.u.l;
    case T_DICT:
        l->n = l->cap = v.u.d->n;
        l->v = v.u.d->k;
        return l;
    case T_STR: {
        const jstr *s = v.u.s;
        for (size_t i = 0; i < s->n;) {
            size_t j = u8_next(s->p, s->n, i);
            list_push(c, l, v_str(c, s->p + i, j - i));
            i = j;
        }
        tick(c, l->n / 16);
        return l;
    }
    default: rerr(c, "TypeError", "'%s' object is not iterable", type_name(v));
    }
}

/* ---- attributes and items */

static jval str_method(ctx *c, jval self, const char *name, int *found);
static jval loop_cycle(ctx *c, jval self, args *a);
static jval dict_method(ctx *c, jval self, const char *name, int *found);
static jval list_method(ctx *c, jval self, const char *name, int *found);

static jval get_attr(ctx *c, jval obj, const char *name) {
    int found = 0;
    jval m;
    switch (obj.t) {
    case T_UNDEF: fail_undef(c, obj);
    case T_STR:
        m = str_method(c, obj, name, &found);
        if (found) return m;
        break;
    case T_DICT:
        m = dict_method(c, obj, name, &found);
        if (found) return m;
        {
            jval *e = dict_find_s(obj.u.d, name);
            if (e) return *e;
        }
        break;
    case T_NS: {
        jval *e = dict_find_s(obj.u.d, name);
        if (e) return *e;
        break;
    }
    case T_LIST:
        m = list_method(c, obj, name, &found);
        if (found) return m;
        break;
    case T_LOOP: {
        const jlist *items = obj.u.lp->items;
        size_t i = obj.u.lp->i, len = items->n;
        if (!strcmp(name, "index")) return v_int((int64_t)i + 1);
        if (!strcmp(name, "index0")) return v_int((int64_t)i);
        if (!strcmp(name, "revindex")) return v_int((int64_t)(len - i));
        if (!strcmp(name, "revindex0")) return v_int((int64_t)(len - i - 1));
        if (!strcmp(name, "first")) return v_bool(i == 0);
        if (!strcmp(name, "last")) return v_bool(i + 1 == len);
        if (!strcmp(name, "length")) return v_int((int64_t)len);
        if (!strcmp(name, "depth")) return v_int(1);
        if (!strcmp(name, "depth0")) return v_int(0);
        if (!strcmp(name, "previtem")) return i ? items->v[i - 1] : v_undef("there is no previous item");
        if (!strcmp(name, "nextitem")) return i + 1 < len ? items->v[i + 1] : v_undef("there is no next item");
        if (!strcmp(name, "cycle")) return v_func(c, "cycle", v_int((int64_t)i), loop_cycle);
        break;
    }
    default: break;
    }
    return v_undef(fmt_hint(c, "'%s' has no attribute '%s'", obj_desc(c, obj), name));
}

static int64_t norm_index(int64_t i, size_t n) { return i < 0 ? i + (int64_t)n : i; }

static jval get_item(ctx *c, jval obj, jval key) {
    if (obj.t == T_UNDEF) fail_undef(c, obj);
    if (key.t == T_UNDEF && obj.t != T_DICT) fail_undef(c, key);
    if (obj.t == T_DICT) {
        jval *e = dict_find(c, obj.u.d, key);
        if (e) return *e;
    } else if ((obj.t == T_LIST || obj.t == T_STR) && is_intlike(key)) {
        size_t n = obj.t == T_LIST ? obj.u.l->n : u8_len(obj.u.s->p, obj.u.s->n);
        int64_t i = norm_index(as_int(key), n);
        if (i >= 0 && (uint64_t)i < n) {
            if (obj.t == T_LIST) return obj.u.l->v[i];
            size_t a = u8_off(obj.u.s->p, obj.u.s->n, (size_t)i);
            return v_str(c, obj.u.s->p + a, u8_next(obj.u.s->p, obj.u.s->n, a) - a);
        }
    }
    if (key.t == T_STR) {
        jval v = get_attr(c, obj, key.u.s->p);
        if (v.t != T_UNDEF || obj.t != T_DICT) return v;
        return v_undef(fmt_hint(c, "'%s' has no attribute '%s'", obj_desc(c, obj), key.u.s->p));
    }
    sbuf kb = {0};
    repr_into(c, &kb, key);
    return v_undef(fmt_hint(c, "%s has no element %s", obj_desc(c, obj), kb.p ? kb.p : ""));
}

static int64_t slice_arg(ctx *c, jval v, int64_t dflt) {
    if (v.t == T_NONE || v.t == T_UNDEF) return dflt;
    if (!is_intlike(v)) rerr(c, "TypeError", "slice indices must be integers or None");
    return as_int(v);
}

static jval do_slice(ctx *c, jval obj, jval vstart, jval vstop, jval vstep) {
    if (obj.t == T_UNDEF) fail_undef(c, obj);
    if (obj.t != T_LIST && obj.t != T_STR) rerr(c, "TypeError", "'%s' object is not subscriptable", type_name(obj));
    int is_str = obj.t == T_STR;
    size_t n = is_str ? u8_len(obj.u.s->p, obj.u.s->n) : obj.u.l->n;
    int64_t step = slice_arg(c, vstep, 1);
    if (step == 0) rerr(c, "ValueError", "slice step cannot be zero");
    int64_t len = (int64_t)n, start, stop;
    if (step > 0) {
        start = slice_arg(c, vstart, 0);
        stop = slice_arg(c, vstop, len);
        if (start < 0) start = start + len < 0 ? 0 : start + len;
        if (start > len) start = len;
        if (stop < 0) stop = stop + len < 0 ? 0 : stop + len;
        if (stop > len) stop = len;
    } else {
        start = slice_arg(c, vstart, len - 1);
        stop = slice_arg(c, vstop, -1 - len);
        if (start < 0) start = start + len < 0 ? -1 : start + len;
        if (start >= len) start = len - 1;
        if (stop < 0) stop = stop + len < 0 ? -1 : stop + len;
        if (stop >= len) stop = len - 1;
    }
    if (is_str && step == 1) {
        if (stop <= start) return v_str(c, "", 0);
        size_t a = u8_off(obj.u.s->p, obj.u.s->n, (size_t)start), b = u8_off(obj.u.s->p, obj.u.s->n, (size_t)stop);
        return v_str(c, obj.u.s->p + a, b - a);
    }
    jlist *chars = is_str ? iter_items(c, obj) : obj.u.l;
    jval r = v_list(c, 0);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        list_push(c, r.u.l, chars->v[i]);
        tick(c, 1);
    }
    if (!is_str) return r;
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    for (size_t i = 0; i < r.u.l->n; i++) sb_put(c, &b, r.u.l->v[i].u.s->p, r.u.l->v[i].u.s->n);
    return v_sbuf(c, &b);
}

/* ---- scopes */

static scope *new_scope(ctx *c, scope *parent) {
    scope *s = ralloc(c, sizeof *s);
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(ctx *c, scope *s, const char *name, jval v) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) {
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 4;
        const char **nn = ralloc(c, (size_t)cap * sizeof *nn);
        jval *nv = ralloc(c, (size_t)cap * sizeof *nv);
        if (s->n) {
            memcpy(nn, s->names, (size_t)s->n * sizeof *nn);
            memcpy(nv, s->vals, (size_t)s->n * sizeof *nv);
        }
        s->names = nn;
        s->vals = nv;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n++] = v;
}

static jval *scope_find(scope *s, const char *name) {
    for (; s; s = s->parent)
        for (int i = s->n - 1; i >= 0; i--)
            if (!strcmp(s->names[i], name)) return &s->vals[i];
    return NULL;
}

/* ---- evaluation */

static jval eval(ctx *c, const node *n);
static void exec_seq(ctx *c, const node *n);
static jval call_value(ctx *c, jval f, args *a, const char *what);
static jval apply_filter(ctx *c, const char *name, jval v, args *a);
static int apply_test(ctx *c, const char *name, jval v, args *a);

static void enter_eval(ctx *c) {
    if (++c->depth > c->lim.max_depth) rerr(c, "TemplateError", "the template nests deeper than %d levels", c->lim.max_depth);
}

static void eval_args(ctx *c, const node *n, args *a, jval *first) {
    int extra = first ? 1 : 0;
    int np = extra, nk = 0;
    for (int i = 0; i < n->n_items; i++) n->names[i] ? nk++ : np++;
    a->pos = np ? ralloc(c, (size_t)np * sizeof(jval)) : NULL;
    a->kw = nk ? ralloc(c, (size_t)nk * sizeof(jval)) : NULL;
    a->kw_names = nk ? ralloc(c, (size_t)nk * sizeof(char *)) : NULL;
    a->n_pos = a->n_kw = 0;
    if (first) a->pos[a->n_pos++] = *first;
    for (int i = 0; i < n->n_items; i++) {
        jval v = eval(c, n->items[i]);
        if (n->names[i]) {
            a->kw_names[a->n_kw] = n->names[i];
            a->kw[a->n_kw++] = v;
        } else {
            a->pos[a->n_pos++] = v;
        }
    }
}

/* Argument i by position or by name; *given says which. */
static jval arg(args *a, int i, const char *name, jval dflt, int *given) {
    if (given) *given = 1;
    if (i >= 0 && i < a->n_pos) return a->pos[i];
    for (int k = 0; k < a->n_kw; k++)
        if (name && !strcmp(a->kw_names[k], name)) return a->kw[k];
    if (given) *given = 0;
    return dflt;
}

static jval eval_filter_chain(ctx *c, const node *f, jval input) {
    jval v = f->a ? eval_filter_chain(c, f->a, input) : input;
    args a;
    eval_args(c, f, &a, NULL);
    return apply_filter(c, f->name, v, &a);
}

static jval eval(ctx *c, const node *n) {
    tick(c, 1);
    enter_eval(c);
    jval r;
    switch (n->kind) {
    case E_LIT: r = n->lit; break;
    case E_NAME: {
        jval *v = scope_find(c->sc, n->name);
        r = v ? *v : v_undef(fmt_hint(c, "'%s' is undefined", n->name, NULL));
        break;
    }
    case E_LIST:
    case E_TUPLE:
        r = v_list(c, (size_t)n->n_items);
        for (int i = 0; i < n->n_items; i++) r.u.l->v[r.u.l->n++] = eval(c, n->items[i]);
        r.u.l->is_tuple = n->kind == E_TUPLE;
        break;
    case E_DICT:
        r = v_dict(c, (size_t)n->n_items / 2, T_DICT);
        for (int i = 0; i + 1 < n->n_items; i += 2) {
            jval k = eval(c, n->items[i]);
            if (k.t == T_LIST || k.t == T_DICT || k.t == T_NS || k.t == T_UNDEF)
                rerr(c, "TypeError", "unhashable type: '%s'", type_name(k));
            dict_set(c, r.u.d, k, eval(c, n->items[i + 1]));
        }
        break;
    case E_ATTR: r = get_attr(c, eval(c, n->a), n->name); break;
    case E_ITEM: {
        jval o = eval(c, n->a);
        r = get_item(c, o, eval(c, n->b));
        break;
    }
    case E_SLICE: {
        jval o = eval(c, n->a);
        jval none = v_none();
        r = do_slice(c, o, n->b ? eval(c, n->b) : none, n->c ? eval(c, n->c) : none, n->d ? eval(c, n->d) : none);
        break;
    }
    case E_CALL: {
        jval f = eval(c, n->a);
        args a;
        eval_args(c, n, &a, NULL);
        r = call_value(c, f, &a, n->a->kind == E_NAME ? n->a->name : n->a->kind == E_ATTR ? n->a->name : "value");
        break;
    }
    case E_FILTER: {
        jval v = eval(c, n->a);
        args a;
        eval_args(c, n, &a, NULL);
        r = apply_filter(c, n->name, v, &a);
        break;
    }
    case E_TEST: {
        jval v = eval(c, n->a);
        args a;
        eval_args(c, n, &a, NULL);
        int t = apply_test(c, n->name, v, &a);
        r = v_bool(n->neg ? !t : t);
        break;
    }
    case E_NEG:
    case E_POS: {
        jval v = eval(c, n->a);
        if (v.t == T_UNDEF) fail_undef(c, v);
        if (!is_num(v)) rerr(c, "TypeError", "bad operand type for unary %c: '%s'", n->kind == E_NEG ? '-' : '+', type_name(v));
        if (n->kind == E_POS) r = v.t == T_BOOL ? v_int(v.u.b) : v;
        else if (v.t == T_FLOAT) r = v_float(-v.u.f);
        else if (as_int(v) == INT64_MIN) rerr(c, "OverflowError", "integer result out of the supported 64-bit range");
        else r = v_int(-as_int(v));
        break;
    }
    case E_NOT: r = v_bool(!truthy(eval(c, n->a))); break;
    case E_AND: {
        jval a = eval(c, n->a);
        r = truthy(a) ? eval(c, n->b) : a;
        break;
    }
    case E_OR: {
        jval a = eval(c, n->a);
        r = truthy(a) ? a : eval(c, n->b);
        break;
    }
    case E_BIN: {
        jval a = eval(c, n->a);
        r = arith(c, n->op, a, eval(c, n->b));
        break;
    }
    case E_CMP: {
        jval left = eval(c, n->items[0]);
        int ok = 1;
        for (int i = 1; i < n->n_items && ok; i++) {
            jval right = eval(c, n->items[i]);
            int op = n->ops[i - 1], k;
            switch (op) {
            case OP_EQ: ok = v_eq(c, left, right); break;
            case OP_NE: ok = !v_eq(c, left, right); break;
            case OP_IN: ok = contains(c, right, left); break;
            case OP_NOTIN: ok = !contains(c, right, left); break;
            default:
                k = v_cmp(c, left, right, op);
                ok = k == 2 ? 0 : op == OP_LT ? k < 0 : op == OP_LE ? k <= 0 : op == OP_GT ? k > 0 : k >= 0;
            }
            left = right;
        }
        r = v_bool(ok);
        break;
    }
    case E_COND:
        if (truthy(eval(c, n->b))) r = eval(c, n->a);
        else r = n->c ? eval(c, n->c) : v_undef("the inline if-expression evaluated to false and no else section was defined.");
        break;
    default: rerr(c, "TemplateError", "internal: not an expression");
    }
    c->depth--;
    return r;
}

static jval call_macro(ctx *c, macro *m, args *a) {
    const node *def = m->def;
    scope *saved_sc = c->sc;
    sbuf *saved_out = c->out;
    scope *s = new_scope(c, m->closure);
    c->sc = s;
    jval varargs = v_list(c, 0), kwargs = v_dict(c, 0, T_DICT);
    for (int i = 0; i < def->n_items; i++) {
        int given;
        jval v = arg(a, i, def->names[i], v_none(), &given);
        if (!given) v = def->items[i] ? eval(c, def->items[i])
                                      : v_undef(fmt_hint(c, "parameter '%s' was not provided", def->names[i], NULL));
        scope_set(c, s, def->names[i], v);
    }
    for (int i = def->n_items; i < a->n_pos; i++) list_push(c, varargs.u.l, a->pos[i]);
    for (int k = 0; k < a->n_kw; k++) {
        int known = 0;
        for (int i = 0; i < def->n_items; i++) known |= !strcmp(def->names[i], a->kw_names[k]);
        if (!known) dict_set_s(c, kwargs.u.d, a->kw_names[k], a->kw[k]);
    }
    varargs.u.l->is_tuple = 1;
    scope_set(c, s, "varargs", varargs);
    scope_set(c, s, "kwargs", kwargs);
    sbuf out = {0};
    c->out = &out;
    exec_seq(c, def->body);
    c->out = saved_out;
    c->sc = saved_sc;
    c->ctl = 0;
    return v_sbuf(c, &out);
}

static jval call_value(ctx *c, jval f, args *a, const char *what) {
    switch (f.t) {
    case T_FUNC: return f.u.fn->fn(c, f.u.fn->self, a);
    case T_MACRO: return call_macro(c, f.u.m, a);
    case T_UNDEF: fail_undef(c, f);
    default: rerr(c, "TypeError", "'%s' object is not callable", type_name(f));
    }
}

/* ---- statements */

static void assign_targets(ctx *c, const node *st, jval v) {
    if (!st->neg) {
        scope_set(c, c->sc, st->names[0], v);
        return;
    }
    if (v.t == T_UNDEF) fail_undef(c, v);
    jlist *items = iter_items(c, v);
    if (items->n < (size_t)st->n_names)
        rerr(c, "ValueError", "not enough values to unpack (expected %d, got %zu)", st->n_names, items->n);
    if (items->n > (size_t)st->n_names) rerr(c, "ValueError", "too many values to unpack (expected %d)", st->n_names);
    for (int i = 0; i < st->n_names; i++) scope_set(c, c->sc, st->names[i], items->v[i]);
}

static jval loop_cycle(ctx *c, jval self, args *a) {
    if (a->n_pos == 0) rerr(c, "TypeError", "no items for cycling given");
    return a->pos[self.u.i % a->n_pos];
}

static void exec_for(ctx *c, const node *n) {
    jval seq = eval(c, n->a);
    jlist *all = iter_items(c, seq);
    scope *outer = c->sc;
    jlist *items = all;
    if (n->b) { /* the inline filter runs before the loop, so loop.length counts what passes */
        items = ralloc(c, sizeof *items);
        memset(items, 0, sizeof *items);
        for (size_t i = 0; i < all->n; i++) {
            c->sc = new_scope(c, outer);
            assign_targets(c, n, all->v[i]);
            if (truthy(eval(c, n->b))) list_push(c, items, all->v[i]);
        }
        c->sc = outer;
    }
    size_t len = items->n;
    int completed = 0;
    for (size_t i = 0; i < len; i++) {
        tick(c, 2);
        scope *s = new_scope(c, outer);
        c->sc = s;
        jval loop = {.t = T_LOOP};
        loop.u.lp = ralloc(c, sizeof *loop.u.lp);
        loop.u.lp->items = items;
        loop.u.lp->i = i;
        scope_set(c, s, "loop", loop);
        assign_targets(c, n, items->v[i]);
        exec_seq(c, n->body);
        c->sc = outer;
        /* jinja2 marks the loop as iterated at the end of a body, so a body
         * left by break or continue does not count for the else block */
        if (!c->ctl) completed = 1;
        if (c->ctl == 1) {
            c->ctl = 0;
            break;
        }
        c->ctl = 0;
    }
    c->sc = outer;
    if (!completed && n->else_body) exec_seq(c, n->else_body);
}

static void exec_stmt(ctx *c, const node *n) {
    tick(c, 1);
    enter_eval(c);
    switch (n->kind) {
    case S_SEQ: exec_seq(c, n); break;
    case S_TEXT: sb_put(c, c->out, n->lit.u.s->p, n->lit.u.s->n); break;
    case S_OUT: str_into(c, c->out, eval(c, n->a)); break;
    case S_IF:
        if (truthy(eval(c, n->a))) exec_seq(c, n->body);
        else if (n->else_body) exec_stmt(c, n->else_body);
        break;
    case S_FOR: exec_for(c, n); break;
    case S_SET: {
        jval v = eval(c, n->a);
        if (n->name) {
            jval *ns = scope_find(c->sc, n->name);
            if (!ns || ns->t != T_NS) rerr(c, "TemplateRuntimeError", "cannot assign attribute on non-namespace object");
            dict_set_s(c, ns->u.d, n->names[0], v);
        } else {
            assign_targets(c, n, v);
        }
        break;
    }
    case S_SETBLOCK:
    case S_FILTERBLOCK:
    case S_GENERATION: {
        sbuf *saved = c->out;
        sbuf b = {0};
        c->out = n->kind == S_GENERATION ? saved : &b;
        exec_seq(c, n->body);
        c->out = saved;
        if (n->kind == S_GENERATION) break;
        jval v = v_sbuf(c, &b);
        if (n->a) v = eval_filter_chain(c, n->a, v);
        if (n->kind == S_SETBLOCK)
            scope_set(c, c->sc, n->names[0], v);
        else
            str_into(c, c->out, v);
        break;
    }
    case S_MACRO: {
        jval m = {.t = T_MACRO};
        m.u.m = ralloc(c, sizeof *m.u.m);
        m.u.m->def = n;
        m.u.m->closure = c->sc;
        scope_set(c, c->sc, n->name, m);
        break;
    }
    case S_BREAK: c->ctl = 1; break;
    case S_CONTINUE: c->ctl = 2; break;
    case S_WITH: {
        scope *outer = c->sc;
        scope *s = new_scope(c, outer);
        for (int i = 0; i < n->n_items; i++) scope_set(c, s, n->names[i], eval(c, n->items[i]));
        c->sc = s;
        exec_seq(c, n->body);
        c->sc = outer;
        break;
    }
    default: rerr(c, "TemplateError", "internal: not a statement");
    }
    c->depth--;
}

static void exec_seq(ctx *c, const node *n) {
    for (int i = 0; i < n->n_items && !c->ctl; i++) exec_stmt(c, n->items[i]);
}

/* ---------------------------------------------------------------- builtins */

static const jstr *want_str(ctx *c, jval v, const char *what) {
    if (v.t == T_UNDEF) fail_undef(c, v);
    if (v.t != T_STR) rerr(c, "TypeError", "%s must be str, not %s", what, type_name(v));
    return v.u.s;
}

static int64_t want_int(ctx *c, jval v, const char *what) {
    if (v.t == T_UNDEF) fail_undef(c, v);
    if (!is_intlike(v)) rerr(c, "TypeError", "%s must be an integer, not %s", what, type_name(v));
    return as_int(v);
}

static int cp_in(const jstr *set, int32_t cp) {
    for (size_t i = 0; i < set->n; i = u8_next(set->p, set->n, i))
        if (u8_decode(set->p, set->n, i) == cp) return 1;
    return 0;
}

static jval strip_impl(ctx *c, const jstr *s, const jstr *chars, int left, int right) {
    size_t a = 0, b = s->n;
    tick(c, s->n / 64);
    while (left && a < b) {
        int32_t cp = u8_decode(s->p, s->n, a);
        if (chars ? !cp_in(chars, cp) : !is_uspace(cp)) break;
        a = u8_next(s->p, s->n, a);
    }
    while (right && b > a) {
        size_t k = b - 1;
        while (k > a && is_cont((unsigned char)s->p[k])) k--;
        int32_t cp = u8_decode(s->p, s->n, k);
        if (chars ? !cp_in(chars, cp) : !is_uspace(cp)) break;
        b = k;
    }
    return v_str(c, s->p + a, b - a);
}

typedef int32_t (*cpmap)(int32_t);
static int32_t cp_upper(int32_t cp) { return utf8proc_toupper(cp); }
static int32_t cp_lower(int32_t cp) { return utf8proc_tolower(cp); }
static int cp_cased(int32_t cp) { return utf8proc_toupper(cp) != cp || utf8proc_tolower(cp) != cp; }

static void put_cp(ctx *c, sbuf *b, int32_t cp) {
    utf8proc_uint8_t e[4];
    utf8proc_ssize_t k = utf8proc_encode_char(cp, e);
    sb_put(c, b, (const char *)e, (size_t)k);
}

/* mode 0: map every code point; 1: Python's str.title(); 2: str.capitalize() */
static jval case_map(ctx *c, const jstr *s, cpmap f, int mode) {
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    int prev_cased = 0, first = 1;
    tick(c, s->n / 16);
    for (size_t i = 0; i < s->n;) {
        size_t j = u8_next(s->p, s->n, i);
        int32_t cp = u8_decode(s->p, s->n, i);
        if (cp < 0) {
            sb_put(c, &b, s->p + i, j - i);
        } else if (mode == 0) {
            put_cp(c, &b, f(cp));
        } else if (mode == 1) {
            put_cp(c, &b, prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp));
            prev_cased = cp_cased(cp);
        } else {
            put_cp(c, &b, first ? utf8proc_totitle(cp) : utf8proc_tolower(cp));
        }
        first = 0;
        i = j;
    }
    return v_sbuf(c, &b);
}

static jval replace_impl(ctx *c, const jstr *s, const jstr *old, const jstr *new_, int64_t count) {
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    int64_t done = 0;
    if (old->n == 0) {
        for (size_t i = 0; i <= s->n;) {
            if (count < 0 || done < count) sb_put(c, &b, new_->p, new_->n), done++;
            if (i == s->n) break;
            size_t j = u8_next(s->p, s->n, i);
            sb_put(c, &b, s->p + i, j - i);
            i = j;
        }
        return v_sbuf(c, &b);
    }
    size_t i = 0;
    while (i < s->n) {
        const char *hit = (count < 0 || done < count) ? memmem(s->p + i, s->n - i, old->p, old->n) : NULL;
        if (!hit) break;
        size_t at = (size_t)(hit - s->p);
        sb_put(c, &b, s->p + i, at - i);
        sb_put(c, &b, new_->p, new_->n);
        i = at + old->n;
        done++;
        tick(c, 1);
    }
    sb_put(c, &b, s->p + i, s->n - i);
    return v_sbuf(c, &b);
}

static jval split_impl(ctx *c, const jstr *s, const jstr *sep, int64_t maxsplit) {
    jval r = v_list(c, 0);
    if (sep) {
        if (sep->n == 0) rerr(c, "ValueError", "empty separator");
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            const char *hit = (maxsplit < 0 || done < maxsplit) ? memmem(s->p + i, s->n - i, sep->p, sep->n) : NULL;
            if (!hit) break;
            size_t at = (size_t)(hit - s->p);
            list_push(c, r.u.l, v_str(c, s->p + i, at - i));
            i = at + sep->n;
            done++;
            tick(c, 1);
        }
        list_push(c, r.u.l, v_str(c, s->p + i, s->n - i));
        return r;
    }
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
        while (i < s->n && is_uspace(u8_decode(s->p, s->n, i))) i = u8_next(s->p, s->n, i);
        if (i >= s->n) break;
        if (maxsplit >= 0 && done >= maxsplit) {
            list_push(c, r.u.l, v_str(c, s->p + i, s->n - i));
            break;
        }
        size_t j = i;
        while (j < s->n && !is_uspace(u8_decode(s->p, s->n, j))) j = u8_next(s->p, s->n, j);
        list_push(c, r.u.l, v_str(c, s->p + i, j - i));
        done++;
        tick(c, 1);
        i = j;
    }
    return r;
}

static int starts_ends(ctx *c, const jstr *s, jval pre, int ends) {
    if (pre.t == T_LIST) {
        for (size_t i = 0; i < pre.u.l->n; i++)
            if (starts_ends(c, s, pre.u.l->v[i], ends)) return 1;
        return 0;
    }
    const jstr *p = want_str(c, pre, ends ? "endswith's argument" : "startswith's argument");
    if (p->n > s->n) return 0;
    return !memcmp(ends ? s->p + s->n - p->n : s->p, p->p, p->n);
}

static const jstr *opt_str(ctx *c, args *a, int i, const char *name, const char *what) {
    int given;
    jval v = arg(a, i, name, v_none(), &given);
    if (!given || v.t == T_NONE) return NULL;
    return want_str(c, v, what);
}

static int64_t opt_int(ctx *c, args *a, int i, const char *name, int64_t dflt) {
    int given;
    jval v = arg(a, i, name, v_none(), &given);
    if (!given || v.t == T_NONE) return dflt;
    return want_int(c, v, name);
}

#define SELF_S (self.u.s)

static jval m_strip(ctx *c, jval self, args *a) { return strip_impl(c, SELF_S, opt_str(c, a, 0, "chars", "strip arg"), 1, 1); }
static jval m_lstrip(ctx *c, jval self, args *a) { return strip_impl(c, SELF_S, opt_str(c, a, 0, "chars", "lstrip arg"), 1, 0); }
static jval m_rstrip(ctx *c, jval self, args *a) { return strip_impl(c, SELF_S, opt_str(c, a, 0, "chars", "rstrip arg"), 0, 1); }
static jval m_split(ctx *c, jval self, args *a) {
    return split_impl(c, SELF_S, opt_str(c, a, 0, "sep", "split's separator"), opt_int(c, a, 1, "maxsplit", -1));
}
static jval m_rsplit(ctx *c, jval self, args *a) {
    const jstr *sep = opt_str(c, a, 0, "sep", "rsplit's separator");
    int64_t maxsplit = opt_int(c, a, 1, "maxsplit", -1);
    jval all = split_impl(c, SELF_S, sep, -1);
    if (maxsplit < 0 || (size_t)maxsplit + 1 >= all.u.l->n) return all;
    /* rejoin the leading parts: only exact for an explicit separator */
    size_t keep = (size_t)maxsplit, head = all.u.l->n - keep;
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    for (size_t i = 0; i < head; i++) {
        if (i) {
            if (sep) sb_put(c, &b, sep->p, sep->n);
            else sb_puts(c, &b, " ");
        }
        sb_put(c, &b, all.u.l->v[i].u.s->p, all.u.l->v[i].u.s->n);
    }
    jval r = v_list(c, keep + 1);
    r.u.l->v[r.u.l->n++] = v_sbuf(c, &b);
    for (size_t i = head; i < all.u.l->n; i++) r.u.l->v[r.u.l->n++] = all.u.l->v[i];
    return r;
}
static jval m_splitlines(ctx *c, jval self, args *a) {
    jval r = v_list(c, 0);
    const jstr *s = SELF_S;
    size_t i = 0, st = 0;
    while (i < s->n) {
        if (s->p[i] == '\n' || s->p[i] == '\r') {
            list_push(c, r.u.l, v_str(c, s->p + st, i - st));
            if (s->p[i] == '\r' && i + 1 < s->n && s->p[i + 1] == '\n') i++;
            st = ++i;
        } else {
            i++;
        }
    }
    if (st < s->n) list_push(c, r.u.l, v_str(c, s->p + st, s->n - st));
    return r;
}
static jval m_startswith(ctx *c, jval self, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "startswith() takes at least 1 argument (0 given)");
    return v_bool(starts_ends(c, SELF_S, a->pos[0], 0));
}
static jval m_endswith(ctx *c, jval self, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "endswith() takes at least 1 argument (0 given)");
    return v_bool(starts_ends(c, SELF_S, a->pos[0], 1));
}
static jval m_upper(ctx *c, jval self, args *a) { return case_map(c, SELF_S, cp_upper, 0); }
static jval m_lower(ctx *c, jval self, args *a) { return case_map(c, SELF_S, cp_lower, 0); }
static jval m_title(ctx *c, jval self, args *a) { return case_map(c, SELF_S, NULL, 1); }
static jval m_capitalize(ctx *c, jval self, args *a) { return case_map(c, SELF_S, NULL, 2); }
static jval m_replace(ctx *c, jval self, args *a) {
    if (a->n_pos < 2) rerr(c, "TypeError", "replace expected at least 2 arguments, got %d", a->n_pos);
    return replace_impl(c, SELF_S, want_str(c, a->pos[0], "replace arg 1"), want_str(c, a->pos[1], "replace arg 2"),
                        opt_int(c, a, 2, "count", -1));
}
static jval find_impl(ctx *c, jval self, args *a, int rev) {
    if (a->n_pos < 1) rerr(c, "TypeError", "find() takes at least 1 argument (0 given)");
    const jstr *s = SELF_S, *sub = want_str(c, a->pos[0], "find's argument");
    if (sub->n > s->n) return v_int(-1);
    const char *hit = NULL;
    if (!rev) hit = memmem(s->p, s->n, sub->p, sub->n);
    else
        for (size_t i = s->n - sub->n + 1; i-- > 0;)
            if (!memcmp(s->p + i, sub->p, sub->n)) {
                hit = s->p + i;
                break;
            }
    return v_int(hit ? (int64_t)u8_len(s->p, (size_t)(hit - s->p)) : -1);
}
static jval m_find(ctx *c, jval self, args *a) { return find_impl(c, self, a, 0); }
static jval m_rfind(ctx *c, jval self, args *a) { return find_impl(c, self, a, 1); }
static jval m_scount(ctx *c, jval self, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "count() takes at least 1 argument (0 given)");
    const jstr *s = SELF_S, *sub = want_str(c, a->pos[0], "count's argument");
    if (sub->n == 0) return v_int((int64_t)u8_len(s->p, s->n) + 1);
    int64_t k = 0;
    for (size_t i = 0; i + sub->n <= s->n;) {
        const char *hit = memmem(s->p + i, s->n - i, sub->p, sub->n);
        if (!hit) break;
        k++;
        i = (size_t)(hit - s->p) + sub->n;
    }
    return v_int(k);
}
static jval m_join(ctx *c, jval self, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "join() takes exactly one argument (0 given)");
    jlist *items = iter_items(c, a->pos[0]);
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    for (size_t i = 0; i < items->n; i++) {
        if (items->v[i].t != T_STR)
            rerr(c, "TypeError", "sequence item %zu: expected str instance, %s found", i, type_name(items->v[i]));
        if (i) sb_put(c, &b, SELF_S->p, SELF_S->n);
        sb_put(c, &b, items->v[i].u.s->p, items->v[i].u.s->n);
    }
    return v_sbuf(c, &b);
}
static jval str_pred(ctx *c, const jstr *s, int kind) {
    if (s->n == 0) return v_bool(0);
    int any_cased = 0;
    for (size_t i = 0; i < s->n; i = u8_next(s->p, s->n, i)) {
        int32_t cp = u8_decode(s->p, s->n, i);
        if (cp < 0) return v_bool(0);
        utf8proc_category_t cat = utf8proc_category(cp);
        int digit = cat == UTF8PROC_CATEGORY_ND;
        int alpha = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        switch (kind) {
        case 0: if (!digit) return v_bool(0); break;
        case 1: if (!alpha) return v_bool(0); break;
        case 2: if (!is_uspace(cp)) return v_bool(0); break;
        case 3: if (!alpha && !digit) return v_bool(0); break;
        case 4: if (utf8proc_tolower(cp) != cp) return v_bool(0); any_cased |= cp_cased(cp); break;
        default: if (utf8proc_toupper(cp) != cp) return v_bool(0); any_cased |= cp_cased(cp); break;
        }
    }
    return v_bool(kind < 4 || any_cased);
}
static jval m_isdigit(ctx *c, jval self, args *a) { return str_pred(c, SELF_S, 0); }
static jval m_isalpha(ctx *c, jval self, args *a) { return str_pred(c, SELF_S, 1); }
static jval m_isspace(ctx *c, jval self, args *a) { return str_pred(c, SELF_S, 2); }
static jval m_isalnum(ctx *c, jval self, args *a) { return str_pred(c, SELF_S, 3); }
static jval m_islower(ctx *c, jval self, args *a) { return str_pred(c, SELF_S, 4); }
static jval m_isupper(ctx *c, jval self, args *a) { return str_pred(c, SELF_S, 5); }

/* str.format: {} {0} {name} and {{ }}, with a printf-like spec after ':'
 * ([flags][width][.precision][type], type one of d f e g x o s %). */
static jval m_format(ctx *c, jval self, args *a) {
    const jstr *f = SELF_S;
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    int auto_idx = 0, numbering = 0; /* 1 automatic {}, 2 manual {0} */
    for (size_t i = 0; i < f->n; i++) {
        char ch = f->p[i];
        if (ch == '}') {
            if (i + 1 < f->n && f->p[i + 1] == '}') i++;
            else rerr(c, "ValueError", "Single '}' encountered in format string");
            sb_puts(c, &b, "}");
            continue;
        }
        if (ch != '{') {
            sb_put(c, &b, &f->p[i], 1);
            continue;
        }
        if (i + 1 < f->n && f->p[i + 1] == '{') {
            sb_puts(c, &b, "{");
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < f->n && f->p[j] != '}') j++;
        if (j >= f->n) rerr(c, "ValueError", "Single '{' encountered in format string");
        size_t colon = i + 1;
        while (colon < j && f->p[colon] != ':') colon++;
        jval field = v_str(c, f->p + i + 1, colon - i - 1);
        jval v;
        if (field.u.s->n == 0 || isdigit((unsigned char)field.u.s->p[0])) {
            int manual = field.u.s->n != 0;
            if (numbering && numbering != (manual ? 2 : 1))
                rerr(c, "ValueError", "cannot switch from manual field specification to automatic field numbering");
            numbering = manual ? 2 : 1;
        }
        if (field.u.s->n == 0) {
            if (auto_idx >= a->n_pos) rerr(c, "IndexError", "Replacement index %d out of range for positional args tuple", auto_idx);
            v = a->pos[auto_idx++];
        } else if (isdigit((unsigned char)field.u.s->p[0])) {
            long k = strtol(field.u.s->p, NULL, 10);
            if (k >= a->n_pos) rerr(c, "IndexError", "Replacement index %ld out of range for positional args tuple", k);
            v = a->pos[k];
        } else {
            int given;
            v = arg(a, -1, field.u.s->p, v_none(), &given);
            if (!given) rerr(c, "KeyError", "'%s'", field.u.s->p);
        }
        if (colon < j) {
            const char *sp = f->p + colon + 1;
            size_t n = j - colon - 1;
            char spec[40] = "%";
            size_t k = 1;
            /* alignment: '<' left, '>' right; strings go left by default */
            int align = 0;
            if (n && (sp[0] == '<' || sp[0] == '>')) align = sp[0], sp++, n--;
            else if (n && (sp[0] == '^' || sp[0] == '=' || (n > 1 && strchr("<>^=", sp[1]))))
                rerr(c, "ValueError", "this format spec is not supported: '%.*s'", (int)(j - colon - 1), f->p + colon + 1);
            if (align == '<' || (!align && v.t == T_STR)) spec[k++] = '-';
            if (n > 30) rerr(c, "ValueError", "format spec too long");
            memcpy(spec + k, sp, n);
            n += k - 1;
            spec[n + 1] = '\0';
            if (n == 0 || !strchr("dfeEgGxXos%", spec[n])) {
                spec[n + 1] = v.t == T_STR ? 's' : is_intlike(v) ? 'd' : v.t == T_FLOAT ? 'g' : 's';
                spec[n + 2] = '\0';
            }
            jval one = v_list(c, 1);
            one.u.l->v[one.u.l->n++] = v;
            one.u.l->is_tuple = 1;
            jval piece = percent_format(c, mk_jstr(c, spec, strlen(spec)), one);
            sb_put(c, &b, piece.u.s->p, piece.u.s->n);
        } else {
            str_into(c, &b, v);
        }
        i = j;
    }
    return v_sbuf(c, &b);
}

typedef struct method {
    const char *name;
    builtin_fn fn;
} method;

static const method k_str_methods[] = {
    {"strip", m_strip},         {"lstrip", m_lstrip},       {"rstrip", m_rstrip},   {"split", m_split},
    {"rsplit", m_rsplit},       {"splitlines", m_splitlines}, {"startswith", m_startswith}, {"endswith", m_endswith},
    {"upper", m_upper},         {"lower", m_lower},         {"title", m_title},     {"capitalize", m_capitalize},
    {"replace", m_replace},     {"find", m_find},           {"rfind", m_rfind},     {"count", m_scount},
    {"join", m_join},           {"isdigit", m_isdigit},     {"isalpha", m_isalpha}, {"isspace", m_isspace},
    {"isalnum", m_isalnum},     {"islower", m_islower},     {"isupper", m_isupper}, {"format", m_format},
};

static jval find_method(ctx *c, jval self, const char *name, const method *tab, size_t n, int *found) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(tab[i].name, name)) {
            *found = 1;
            return v_func(c, tab[i].name, self, tab[i].fn);
        }
    return v_none();
}

static jval str_method(ctx *c, jval self, const char *name, int *found) {
    return find_method(c, self, name, k_str_methods, sizeof k_str_methods / sizeof *k_str_methods, found);
}

static jval pair(ctx *c, jval a, jval b) {
    jval r = v_list(c, 2);
    r.u.l->v[0] = a;
    r.u.l->v[1] = b;
    r.u.l->n = 2;
    r.u.l->is_tuple = 1;
    return r;
}

static jval m_items(ctx *c, jval self, args *a) {
    jval r = v_list(c, self.u.d->n);
    for (size_t i = 0; i < self.u.d->n; i++) r.u.l->v[r.u.l->n++] = pair(c, self.u.d->k[i], self.u.d->v[i]);
    return r;
}
static jval m_keys(ctx *c, jval self, args *a) {
    jval r = v_list(c, self.u.d->n);
    for (size_t i = 0; i < self.u.d->n; i++) r.u.l->v[r.u.l->n++] = self.u.d->k[i];
    return r;
}
static jval m_values(ctx *c, jval self, args *a) {
    jval r = v_list(c, self.u.d->n);
    for (size_t i = 0; i < self.u.d->n; i++) r.u.l->v[r.u.l->n++] = self.u.d->v[i];
    return r;
}
static jval m_get(ctx *c, jval self, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "get expected at least 1 argument, got 0");
    jval *e = dict_find(c, self.u.d, a->pos[0]);
    return e ? *e : arg(a, 1, "default", v_none(), NULL);
}
static const method k_dict_methods[] = {{"items", m_items}, {"keys", m_keys}, {"values", m_values}, {"get", m_get}};

static const char *const k_unsafe_dict[] = {"update", "pop", "popitem", "setdefault", "clear"};
static const char *const k_unsafe_list[] = {"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"};

static jval dict_method(ctx *c, jval self, const char *name, int *found) {
    for (size_t i = 0; i < sizeof k_unsafe_dict / sizeof *k_unsafe_dict; i++)
        if (!strcmp(name, k_unsafe_dict[i]))
            rerr(c, "SecurityError", "access to attribute '%s' of 'dict' object is unsafe.", name);
    return find_method(c, self, name, k_dict_methods, sizeof k_dict_methods / sizeof *k_dict_methods, found);
}

static jval m_index(ctx *c, jval self, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "index expected at least 1 argument, got 0");
    for (size_t i = 0; i < self.u.l->n; i++)
        if (v_eq(c, self.u.l->v[i], a->pos[0])) return v_int((int64_t)i);
    rerr(c, "ValueError", "value is not in list");
}
static jval m_lcount(ctx *c, jval self, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "count() takes exactly one argument (0 given)");
    int64_t k = 0;
    for (size_t i = 0; i < self.u.l->n; i++) k += v_eq(c, self.u.l->v[i], a->pos[0]);
    return v_int(k);
}
static const method k_list_methods[] = {{"index", m_index}, {"count", m_lcount}};

static jval list_method(ctx *c, jval self, const char *name, int *found) {
    for (size_t i = 0; i < sizeof k_unsafe_list / sizeof *k_unsafe_list; i++)
        if (!strcmp(name, k_unsafe_list[i]))
            rerr(c, "SecurityError", "access to attribute '%s' of 'list' object is unsafe.", name);
    return find_method(c, self, name, k_list_methods, sizeof k_list_methods / sizeof *k_list_methods, found);
}

/* ---- filters (jinja2's, with Hugging Face's tojson) */

typedef jval (*filter_fn)(ctx *c, jval v, args *a);

static size_t v_len(ctx *c, jval v) {
    switch (v.t) {
    case T_UNDEF: return 0;
    case T_STR: return u8_len(v.u.s->p, v.u.s->n);
    case T_LIST: return v.u.l->n;
    case T_DICT:
    case T_NS: return v.u.d->n;
    default: rerr(c, "TypeError", "object of type '%s' has no len()", type_name(v));
    }
}

static jval f_length(ctx *c, jval v, args *a) { return v_int((int64_t)v_len(c, v)); }
static jval f_string(ctx *c, jval v, args *a) { return to_strv(c, v); }
static jval f_trim(ctx *c, jval v, args *a) { return strip_impl(c, to_jstr(c, v), opt_str(c, a, 0, "chars", "trim's chars"), 1, 1); }
static jval f_upper(ctx *c, jval v, args *a) { return case_map(c, to_jstr(c, v), cp_upper, 0); }
static jval f_lower(ctx *c, jval v, args *a) { return case_map(c, to_jstr(c, v), cp_lower, 0); }
static jval f_capitalize(ctx *c, jval v, args *a) { return case_map(c, to_jstr(c, v), NULL, 2); }
static jval f_safe(ctx *c, jval v, args *a) { return v; }

/* jinja2's title: each word (split at whitespace, '-', '(', '{', '[', '<')
 * gets its first character upper-cased and the rest lower-cased. */
static jval f_title(ctx *c, jval v, args *a) {
    const jstr *s = to_jstr(c, v);
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    int at_start = 1;
    for (size_t i = 0; i < s->n;) {
        size_t j = u8_next(s->p, s->n, i);
        int32_t cp = u8_decode(s->p, s->n, i);
        int sep = cp >= 0 && (is_uspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<');
        if (cp < 0) sb_put(c, &b, s->p + i, j - i);
        else if (sep) put_cp(c, &b, cp);
        else put_cp(c, &b, at_start ? utf8proc_toupper(cp) : utf8proc_tolower(cp));
        at_start = sep;
        i = j;
    }
    return v_sbuf(c, &b);
}

static jval f_replace(ctx *c, jval v, args *a) {
    int g1, g2;
    jval o = arg(a, 0, "old", v_none(), &g1), n = arg(a, 1, "new", v_none(), &g2);
    if (!g1 || !g2) rerr(c, "TypeError", "replace needs the old and the new string");
    return replace_impl(c, to_jstr(c, v), to_jstr(c, o), to_jstr(c, n), opt_int(c, a, 2, "count", -1));
}

static jval f_default(ctx *c, jval v, args *a) {
    jval d = arg(a, 0, "default_value", v_cstr(c, ""), NULL);
    int boolean = truthy(arg(a, 1, "boolean", v_bool(0), NULL));
    if (v.t == T_UNDEF || (boolean && !truthy(v))) return d;
    return v;
}

static jval f_tojson(ctx *c, jval v, args *a) {
    jsonopt o = {.indent = -1};
    o.ensure_ascii = truthy(arg(a, 0, "ensure_ascii", v_bool(0), NULL));
    jval ind = arg(a, 1, "indent", v_none(), NULL);
    if (ind.t != T_NONE && ind.t != T_UNDEF) {
        o.indent = (int)want_int(c, ind, "indent");
        if (o.indent < 0) o.indent = 0;
        if (o.indent > 64) rerr(c, "ValueError", "indent %d is too large", o.indent);
    }
    jval seps = arg(a, 2, "separators", v_none(), NULL);
    o.sort_keys = truthy(arg(a, 3, "sort_keys", v_bool(0), NULL));
    o.item_sep = mk_jstr(c, o.indent >= 0 ? "," : ", ", o.indent >= 0 ? 1 : 2);
    o.key_sep = mk_jstr(c, ": ", 2);
    if (seps.t == T_LIST && seps.u.l->n == 2) {
        o.item_sep = want_str(c, seps.u.l->v[0], "separators[0]");
        o.key_sep = want_str(c, seps.u.l->v[1], "separators[1]");
    } else if (seps.t != T_NONE && seps.t != T_UNDEF) {
        rerr(c, "TypeError", "separators must be a pair of strings");
    }
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    json_into(c, &b, v, &o, 0);
    return v_sbuf(c, &b);
}

static jval f_items(ctx *c, jval v, args *a) {
    if (v.t == T_UNDEF) return v_list(c, 0);
    if (v.t != T_DICT) rerr(c, "TypeError", "Can only get item pairs from a mapping.");
    return m_items(c, v, a);
}

static jval f_list(ctx *c, jval v, args *a) {
    jlist *items = iter_items(c, v);
    jval r = v_list(c, items->n);
    if (items->n) memcpy(r.u.l->v, items->v, items->n * sizeof(jval));
    r.u.l->n = items->n;
    return r;
}

static jval f_first(ctx *c, jval v, args *a) {
    jlist *items = iter_items(c, v);
    return items->n ? items->v[0] : v_undef("No first item, sequence was empty.");
}

static jval f_last(ctx *c, jval v, args *a) {
    jlist *items = iter_items(c, v);
    return items->n ? items->v[items->n - 1] : v_undef("No last item, sequence was empty.");
}

static jval f_reverse(ctx *c, jval v, args *a) {
    jlist *items = iter_items(c, v);
    jval r = v_list(c, items->n);
    for (size_t i = items->n; i-- > 0;) r.u.l->v[r.u.l->n++] = items->v[i];
    if (v.t != T_STR) return r;
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    for (size_t i = 0; i < r.u.l->n; i++) sb_put(c, &b, r.u.l->v[i].u.s->p, r.u.l->v[i].u.s->n);
    return v_sbuf(c, &b);
}

/* attribute paths like "a.b" or "a.0", as jinja2's make_attrgetter. */
static jval attr_path(ctx *c, jval v, jval path) {
    if (is_intlike(path)) return get_item(c, v, path);
    const jstr *p = want_str(c, path, "attribute");
    size_t i = 0;
    while (i <= p->n) {
        size_t j = i;
        while (j < p->n && p->p[j] != '.') j++;
        jval part = v_str(c, p->p + i, j - i);
        char *end;
        long long k = strtoll(part.u.s->p, &end, 10);
        if (part.u.s->n && *end == '\0') v = get_item(c, v, v_int(k));
        else v = get_item(c, v, part);
        i = j + 1;
    }
    return v;
}

static jval f_join(ctx *c, jval v, args *a) {
    const jstr *sep = to_jstr(c, arg(a, 0, "d", v_cstr(c, ""), NULL));
    int has_attr;
    jval at = arg(a, 1, "attribute", v_none(), &has_attr);
    jlist *items = iter_items(c, v);
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    for (size_t i = 0; i < items->n; i++) {
        if (i) sb_put(c, &b, sep->p, sep->n);
        str_into(c, &b, has_attr && at.t != T_NONE ? attr_path(c, items->v[i], at) : items->v[i]);
    }
    return v_sbuf(c, &b);
}

/* select/reject/selectattr/rejectattr: args start at `first` (the test name
 * and its arguments). */
static jval select_impl(ctx *c, jval v, args *a, int by_attr, int keep) {
    jlist *items = iter_items(c, v);
    int first = by_attr ? 1 : 0;
    jval at = by_attr ? arg(a, 0, NULL, v_none(), NULL) : v_none();
    if (by_attr && a->n_pos < 1) rerr(c, "TypeError", "selectattr needs an attribute name");
    const char *test = NULL;
    args ta = {0};
    if (a->n_pos > first) {
        test = want_str(c, a->pos[first], "test name")->p;
        if (find_test(test) < 0) rerr(c, "TemplateRuntimeError", "No test named '%s'.", test);
        ta.pos = a->pos + first + 1;
        ta.n_pos = a->n_pos - first - 1;
        ta.kw = a->kw;
        ta.kw_names = a->kw_names;
        ta.n_kw = a->n_kw;
    }
    jval r = v_list(c, 0);
    for (size_t i = 0; i < items->n; i++) {
        jval x = by_attr ? attr_path(c, items->v[i], at) : items->v[i];
        int ok = test ? apply_test(c, test, x, &ta) : truthy(x);
        if (ok == keep) list_push(c, r.u.l, items->v[i]);
    }
    return r;
}

static jval f_select(ctx *c, jval v, args *a) { return select_impl(c, v, a, 0, 1); }
static jval f_reject(ctx *c, jval v, args *a) { return select_impl(c, v, a, 0, 0); }
static jval f_selectattr(ctx *c, jval v, args *a) { return select_impl(c, v, a, 1, 1); }
static jval f_rejectattr(ctx *c, jval v, args *a) { return select_impl(c, v, a, 1, 0); }

static jval f_map(ctx *c, jval v, args *a) {
    jlist *items = iter_items(c, v);
    jval r = v_list(c, items->n);
    int has_attr;
    jval at = arg(a, -1, "attribute", v_none(), &has_attr);
    if (has_attr) {
        int has_def;
        jval d = arg(a, -1, "default", v_none(), &has_def);
        for (size_t i = 0; i < items->n; i++) {
            jval x = attr_path(c, items->v[i], at);
            r.u.l->v[r.u.l->n++] = (x.t == T_UNDEF && has_def) ? d : x;
        }
        return r;
    }
    if (a->n_pos < 1) rerr(c, "TypeError", "map needs a filter name or attribute=");
    const char *fname = want_str(c, a->pos[0], "filter name")->p;
    if (find_filter(fname) < 0) rerr(c, "TemplateRuntimeError", "No filter named '%s'.", fname);
    args fa = {a->pos + 1, a->n_pos - 1, a->kw_names, a->kw, a->n_kw};
    for (size_t i = 0; i < items->n; i++) r.u.l->v[r.u.l->n++] = apply_filter(c, fname, items->v[i], &fa);
    return r;
}

static jval f_int(ctx *c, jval v, args *a) {
    jval d = arg(a, 0, "default", v_int(0), NULL);
    int64_t base = opt_int(c, a, 1, "base", 10);
    if (v.t == T_UNDEF) fail_undef(c, v);
    switch (v.t) {
    case T_INT: return v;
    case T_BOOL: return v_int(v.u.b);
    case T_FLOAT:
        if (isnan(v.u.f) || isinf(v.u.f) || fabs(v.u.f) >= 9.2e18) return d;
        return v_int((int64_t)v.u.f);
    case T_STR: {
        const char *s = v.u.s->p;
        while (is_ws(*s)) s++;
        char *end;
        if (base < 2 || base > 36) base = 10;
        long long x = strtoll(s, &end, (int)base);
        if (end != s) {
            while (is_ws(*end)) end++;
            if (*end == '\0') return v_int(x);
        }
        double f = strtod(s, &end);
        if (end != s && !isnan(f) && fabs(f) < 9.2e18) {
            while (is_ws(*end)) end++;
            if (*end == '\0') return v_int((int64_t)f);
        }
        return d;
    }
    default: return d;
    }
}

static jval f_float(ctx *c, jval v, args *a) {
    jval d = arg(a, 0, "default", v_float(0), NULL);
    if (v.t == T_UNDEF) fail_undef(c, v);
    if (is_num(v)) return v_float(as_f(v));
    if (v.t == T_STR) {
        char *end;
        double f = strtod(v.u.s->p, &end);
        if (end != v.u.s->p) {
            while (is_ws(*end)) end++;
            if (*end == '\0') return v_float(f);
        }
    }
    return d;
}

static jval f_abs(ctx *c, jval v, args *a) {
    if (v.t == T_FLOAT) return v_float(fabs(v.u.f));
    if (!is_num(v)) rerr(c, "TypeError", "bad operand type for abs(): '%s'", type_name(v));
    int64_t x = want_int(c, v, "abs's argument");
    if (x == INT64_MIN) rerr(c, "OverflowError", "integer result out of the supported 64-bit range");
    return v_int(x < 0 ? -x : x);
}

static jval f_round(ctx *c, jval v, args *a) {
    if (!is_num(v)) rerr(c, "TypeError", "round needs a number, not %s", type_name(v));
    int64_t prec = opt_int(c, a, 0, "precision", 0);
    const jstr *how = opt_str(c, a, 1, "method", "method");
    if (prec < -20) prec = -20;
    if (prec > 20) prec = 20;
    double m = pow(10, (double)prec), x = as_f(v) * m;
    if (!how || !strcmp(how->p, "common")) x = round(x);
    else if (!strcmp(how->p, "ceil")) x = ceil(x);
    else if (!strcmp(how->p, "floor")) x = floor(x);
    else rerr(c, "TemplateRuntimeError", "method must be common, ceil or floor");
    return v_float(x / m);
}

static int sort_cmp(ctx *c, jval x, jval y, int cs) {
    if (!cs && x.t == T_STR && y.t == T_STR) {
        x = case_map(c, x.u.s, cp_lower, 0);
        y = case_map(c, y.u.s, cp_lower, 0);
    }
    int k = v_cmp(c, x, y, OP_LT);
    return k == 2 ? 0 : k;
}

/* Stable merge sort of keys, carrying items along. */
static void msort(ctx *c, jval *keys, jval *items, size_t n, int cs, int rev, jval *tk, jval *ti) {
    if (n < 2) return;
    size_t h = n / 2;
    msort(c, keys, items, h, cs, rev, tk, ti);
    msort(c, keys + h, items + h, n - h, cs, rev, tk, ti);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int r = sort_cmp(c, keys[j], keys[i], cs);
        if (rev ? r > 0 : r < 0) tk[k] = keys[j], ti[k++] = items[j++];
        else tk[k] = keys[i], ti[k++] = items[i++];
    }
    while (i < h) tk[k] = keys[i], ti[k++] = items[i++];
    while (j < n) tk[k] = keys[j], ti[k++] = items[j++];
    memcpy(keys, tk, n * sizeof *keys);
    memcpy(items, ti, n * sizeof *items);
}

static jval sorted(ctx *c, jlist *items, jval at, int has_attr, int cs, int rev) {
    size_t n = items->n;
    jval *keys = ralloc(c, (n + 1) * sizeof *keys), *its = ralloc(c, (n + 1) * sizeof *its);
    jval *tk = ralloc(c, (n + 1) * sizeof *tk), *ti = ralloc(c, (n + 1) * sizeof *ti);
    for (size_t i = 0; i < n; i++) {
        its[i] = items->v[i];
        keys[i] = has_attr && at.t != T_NONE ? attr_path(c, items->v[i], at) : items->v[i];
    }
    msort(c, keys, its, n, cs, rev, tk, ti);
    jval r = v_list(c, n);
    memcpy(r.u.l->v, its, n * sizeof *its);
    r.u.l->n = n;
    return r;
}

static jval f_sort(ctx *c, jval v, args *a) {
    int rev = truthy(arg(a, 0, "reverse", v_bool(0), NULL));
    int cs = truthy(arg(a, 1, "case_sensitive", v_bool(0), NULL));
    int has_attr;
    jval at = arg(a, 2, "attribute", v_none(), &has_attr);
    return sorted(c, iter_items(c, v), at, has_attr, cs, rev);
}

static jval f_dictsort(ctx *c, jval v, args *a) {
    if (v.t != T_DICT) rerr(c, "TypeError", "dictsort needs a mapping");
    int cs = truthy(arg(a, 0, "case_sensitive", v_bool(0), NULL));
    const jstr *by = opt_str(c, a, 1, "by", "by");
    int rev = truthy(arg(a, 2, "reverse", v_bool(0), NULL));
    jval pairs = m_items(c, v, a);
    return sorted(c, pairs.u.l, v_int(by && !strcmp(by->p, "value") ? 1 : 0), 1, cs, rev);
}

static jval f_unique(ctx *c, jval v, args *a) {
    int cs = truthy(arg(a, 0, "case_sensitive", v_bool(0), NULL));
    int has_attr;
    jval at = arg(a, 1, "attribute", v_none(), &has_attr);
    jlist *items = iter_items(c, v);
    jval r = v_list(c, 0), seen = v_list(c, 0);
    for (size_t i = 0; i < items->n; i++) {
        jval k = has_attr && at.t != T_NONE ? attr_path(c, items->v[i], at) : items->v[i];
        if (!cs && k.t == T_STR) k = case_map(c, k.u.s, cp_lower, 0);
        if (contains(c, seen, k)) continue;
        list_push(c, seen.u.l, k);
        list_push(c, r.u.l, items->v[i]);
    }
    return r;
}

static jval minmax(ctx *c, jval v, args *a, int want_max) {
    int cs = truthy(arg(a, 0, "case_sensitive", v_bool(0), NULL));
    int has_attr;
    jval at = arg(a, 1, "attribute", v_none(), &has_attr);
    jlist *items = iter_items(c, v);
    if (!items->n) return v_undef(want_max ? "No aggregated item, sequence was empty." : "No aggregated item, sequence was empty.");
    size_t best = 0;
    jval bk = has_attr && at.t != T_NONE ? attr_path(c, items->v[0], at) : items->v[0];
    for (size_t i = 1; i < items->n; i++) {
        jval k = has_attr && at.t != T_NONE ? attr_path(c, items->v[i], at) : items->v[i];
        int r = sort_cmp(c, k, bk, cs);
        if (want_max ? r > 0 : r < 0) best = i, bk = k;
    }
    return items->v[best];
}
static jval f_min(ctx *c, jval v, args *a) { return minmax(c, v, a, 0); }
static jval f_max(ctx *c, jval v, args *a) { return minmax(c, v, a, 1); }

static jval f_sum(ctx *c, jval v, args *a) {
    int has_attr;
    jval at = arg(a, 0, "attribute", v_none(), &has_attr);
    jval acc = arg(a, 1, "start", v_int(0), NULL);
    jlist *items = iter_items(c, v);
    for (size_t i = 0; i < items->n; i++)
        acc = arith(c, OP_ADD, acc, has_attr && at.t != T_NONE ? attr_path(c, items->v[i], at) : items->v[i]);
    return acc;
}

static jval f_indent(ctx *c, jval v, args *a) {
    jval w = arg(a, 0, "width", v_int(4), NULL);
    const jstr *pad = w.t == T_STR ? w.u.s : NULL;
    sbuf pb = {0};
    sb_put(c, &pb, "", 0);
    if (!pad) {
        int64_t n = want_int(c, w, "width");
        if (n > 1024) rerr(c, "ValueError", "indent width %lld is too large", (long long)n);
        for (int64_t i = 0; i < n; i++) sb_puts(c, &pb, " ");
        pad = mk_jstr(c, pb.p, pb.n);
    }
    int first = truthy(arg(a, 1, "first", v_bool(0), NULL)), blank = truthy(arg(a, 2, "blank", v_bool(0), NULL));
    if (v.t != T_STR) rerr(c, "TypeError", "unsupported operand type(s) for +=: '%s' and 'str'", type_name(v));
    const jstr *s = v.u.s;
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    size_t i = 0;
    int line = 0;
    while (i <= s->n) {
        size_t j = i;
        while (j < s->n && s->p[j] != '\n') j++;
        int empty = j == i;
        if ((line > 0 || first) && (blank || !empty)) sb_put(c, &b, pad->p, pad->n);
        sb_put(c, &b, s->p + i, j - i);
        if (j >= s->n) break;
        sb_puts(c, &b, "\n");
        i = j + 1;
        line++;
    }
    return v_sbuf(c, &b);
}

static jval f_escape(ctx *c, jval v, args *a) {
    const jstr *s = to_jstr(c, v);
    sbuf b = {0};
    sb_put(c, &b, "", 0);
    for (size_t i = 0; i < s->n; i++) {
        switch (s->p[i]) {
        case '&': sb_puts(c, &b, "&amp;"); break;
        case '<': sb_puts(c, &b, "&lt;"); break;
        case '>': sb_puts(c, &b, "&gt;"); break;
        case '"': sb_puts(c, &b, "&#34;"); break;
        case '\'': sb_puts(c, &b, "&#39;"); break;
        default: sb_put(c, &b, s->p + i, 1);
        }
    }
    return v_sbuf(c, &b);
}

/* jinja2 counts runs of word characters (\w: letters, digits, '_'). */
static jval f_wordcount(ctx *c, jval v, args *a) {
    const jstr *s = to_jstr(c, v);
    int64_t n = 0;
    int in_word = 0;
    for (size_t i = 0; i < s->n; i = u8_next(s->p, s->n, i)) {
        int32_t cp = u8_decode(s->p, s->n, i);
        utf8proc_category_t cat = cp < 0 ? UTF8PROC_CATEGORY_CN : utf8proc_category(cp);
        int w = cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
                (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
        if (w && !in_word) n++;
        in_word = w;
    }
    return v_int(n);
}

/* value|format(*args) is value % args; with keyword arguments, value % kwargs. */
static jval f_format(ctx *c, jval v, args *a) {
    const jstr *fmt = to_jstr(c, v);
    if (a->n_kw && a->n_pos) rerr(c, "FilterArgumentError", "can't handle positional and keyword arguments at the same time");
    if (a->n_kw) {
        jval d = v_dict(c, 0, T_DICT);
        for (int k = 0; k < a->n_kw; k++) dict_set_s(c, d.u.d, a->kw_names[k], a->kw[k]);
        return percent_format(c, fmt, d);
    }
    jval t = v_list(c, (size_t)a->n_pos);
    for (int k = 0; k < a->n_pos; k++) t.u.l->v[t.u.l->n++] = a->pos[k];
    t.u.l->is_tuple = 1;
    return percent_format(c, fmt, t);
}

static jval f_attr(ctx *c, jval v, args *a) {
    if (a->n_pos < 1) rerr(c, "TypeError", "attr needs a name");
    return get_attr(c, v, want_str(c, a->pos[0], "attribute name")->p);
}

typedef struct filter_def {
    const char *name;
    filter_fn fn;
} filter_def;

static const filter_def k_filters[] = {
    {"abs", f_abs},           {"attr", f_attr},         {"capitalize", f_capitalize}, {"count", f_length},
    {"d", f_default},         {"default", f_default},   {"dictsort", f_dictsort},     {"e", f_escape},
    {"escape", f_escape},     {"first", f_first},       {"float", f_float},           {"format", f_format},         {"indent", f_indent},
    {"int", f_int},           {"items", f_items},       {"join", f_join},             {"last", f_last},
    {"length", f_length},     {"list", f_list},         {"lower", f_lower},           {"map", f_map},
    {"max", f_max},           {"min", f_min},           {"reject", f_reject},         {"rejectattr", f_rejectattr},
    {"replace", f_replace},   {"reverse", f_reverse},   {"round", f_round},           {"safe", f_safe},
    {"select", f_select},     {"selectattr", f_selectattr}, {"sort", f_sort},         {"string", f_string},
    {"sum", f_sum},           {"title", f_title},       {"tojson", f_tojson},         {"trim", f_trim},
    {"unique", f_unique},     {"upper", f_upper},       {"wordcount", f_wordcount},
};

static int find_filter(const char *name) {
    for (size_t i = 0; i < sizeof k_filters / sizeof *k_filters; i++)
        if (!strcmp(k_filters[i].name, name)) return (int)i;
    return -1;
}

static jval apply_filter(ctx *c, const char *name, jval v, args *a) {
    int k = find_filter(name);
    if (k < 0) rerr(c, "TemplateRuntimeError", "No filter named '%s' found.", name);
    tick(c, 1);
    return k_filters[k].fn(c, v, a);
}

/* ---- tests */

typedef int (*test_fn)(ctx *c, jval v, args *a);

static jval arg1(ctx *c, args *a, const char *test) {
    if (a->n_pos < 1 && a->n_kw < 1) rerr(c, "TypeError", "the '%s' test needs an argument", test);
    return a->n_pos ? a->pos[0] : a->kw[0];
}

static int t_defined(ctx *c, jval v, args *a) { return v.t != T_UNDEF; }
static int t_undefined(ctx *c, jval v, args *a) { return v.t == T_UNDEF; }
static int t_none(ctx *c, jval v, args *a) { return v.t == T_NONE; }
static int t_boolean(ctx *c, jval v, args *a) { return v.t == T_BOOL; }
static int t_true(ctx *c, jval v, args *a) { return v.t == T_BOOL && v.u.b; }
static int t_false(ctx *c, jval v, args *a) { return v.t == T_BOOL && !v.u.b; }
static int t_integer(ctx *c, jval v, args *a) { return v.t == T_INT; }
static int t_float(ctx *c, jval v, args *a) { return v.t == T_FLOAT; }
static int t_number(ctx *c, jval v, args *a) { return is_num(v); }
static int t_string(ctx *c, jval v, args *a) { return v.t == T_STR; }
static int t_mapping(ctx *c, jval v, args *a) { return v.t == T_DICT; }
static int t_iterable(ctx *c, jval v, args *a) { return v.t == T_LIST || v.t == T_DICT || v.t == T_STR || v.t == T_UNDEF; }
static int t_sequence(ctx *c, jval v, args *a) { return v.t == T_LIST || v.t == T_DICT || v.t == T_STR || v.t == T_UNDEF; }
static int t_callable(ctx *c, jval v, args *a) { return v.t == T_MACRO || v.t == T_FUNC; }
static int t_eq(ctx *c, jval v, args *a) { return v_eq(c, v, arg1(c, a, "eq")); }
static int t_ne(ctx *c, jval v, args *a) { return !v_eq(c, v, arg1(c, a, "ne")); }
static int t_lt(ctx *c, jval v, args *a) { int k = v_cmp(c, v, arg1(c, a, "lt"), OP_LT); return k == -1; }
static int t_le(ctx *c, jval v, args *a) { int k = v_cmp(c, v, arg1(c, a, "le"), OP_LE); return k == -1 || k == 0; }
static int t_gt(ctx *c, jval v, args *a) { int k = v_cmp(c, v, arg1(c, a, "gt"), OP_GT); return k == 1; }
static int t_ge(ctx *c, jval v, args *a) { int k = v_cmp(c, v, arg1(c, a, "ge"), OP_GE); return k == 1 || k == 0; }
static int t_in(ctx *c, jval v, args *a) { return contains(c, arg1(c, a, "in"), v); }
static int t_odd(ctx *c, jval v, args *a) { return (want_int(c, v, "odd's value") & 1) != 0; }
static int t_even(ctx *c, jval v, args *a) { return (want_int(c, v, "even's value") & 1) == 0; }
static int t_divisibleby(ctx *c, jval v, args *a) {
    int64_t d = want_int(c, arg1(c, a, "divisibleby"), "divisibleby's argument");
    if (d == 0) rerr(c, "ZeroDivisionError", "integer division or modulo by zero");
    if (d == -1) return 1;
    return want_int(c, v, "divisibleby's value") % d == 0;
}
static int t_sameas(ctx *c, jval v, args *a) {
    jval o = arg1(c, a, "sameas");
    if (v.t != o.t) return 0;
    switch (v.t) {
    case T_NONE: case T_UNDEF: return 1;
    case T_BOOL: return v.u.b == o.u.b;
    case T_INT: return v.u.i == o.u.i;
    case T_FLOAT: return v.u.f == o.u.f;
    case T_STR: return v.u.s == o.u.s;
    case T_LIST: return v.u.l == o.u.l;
    case T_DICT: case T_NS: return v.u.d == o.u.d;
    case T_MACRO: return v.u.m == o.u.m;
    case T_LOOP: return v.u.lp == o.u.lp;
    default: return v.u.fn == o.u.fn;
    }
}
static int t_lower(ctx *c, jval v, args *a) { return v.t == T_STR && str_pred(c, v.u.s, 4).u.b; }
static int t_upper(ctx *c, jval v, args *a) { return v.t == T_STR && str_pred(c, v.u.s, 5).u.b; }
static int t_filter(ctx *c, jval v, args *a) { return v.t == T_STR && find_filter(v.u.s->p) >= 0; }
static int t_test(ctx *c, jval v, args *a) { return v.t == T_STR && find_test(v.u.s->p) >= 0; }

typedef struct test_def {
    const char *name;
    test_fn fn;
} test_def;

static const test_def k_tests[] = {
    {"boolean", t_boolean}, {"callable", t_callable}, {"defined", t_defined}, {"divisibleby", t_divisibleby},
    {"eq", t_eq},           {"equalto", t_eq},        {"even", t_even},       {"false", t_false},
    {"filter", t_filter},   {"float", t_float},       {"ge", t_ge},           {"greaterthan", t_gt},
    {"gt", t_gt},           {"in", t_in},             {"integer", t_integer}, {"iterable", t_iterable},
    {"le", t_le},           {"lessthan", t_lt},       {"lower", t_lower},     {"lt", t_lt},
    {"mapping", t_mapping}, {"ne", t_ne},             {"none", t_none},       {"number", t_number},
    {"odd", t_odd},         {"sameas", t_sameas},     {"sequence", t_sequence}, {"string", t_string},
    {"test", t_test},       {"true", t_true},         {"undefined", t_undefined}, {"upper", t_upper},
};

static int find_test(const char *name) {
    for (size_t i = 0; i < sizeof k_tests / sizeof *k_tests; i++)
        if (!strcmp(k_tests[i].name, name)) return (int)i;
    return -1;
}

static int apply_test(ctx *c, const char *name, jval v, args *a) {
    int k = find_test(name);
    if (k < 0) rerr(c, "TemplateRuntimeError", "No test named '%s' found.", name);
    tick(c, 1);
    return k_tests[k].fn(c, v, a);
}

/* ---- globals */

static jval g_raise(ctx *c, jval self, args *a) {
    jval m = arg(a, 0, "message", v_cstr(c, ""), NULL);
    const jstr *s = to_jstr(c, m);
    rerr(c, "TemplateError", "%s", s->p);
}

static jval g_range(ctx *c, jval self, args *a) {
    int64_t start = 0, stop, step = 1;
    if (a->n_pos < 1 || a->n_pos > 3) rerr(c, "TypeError", "range expected 1 to 3 arguments, got %d", a->n_pos);
    if (a->n_pos == 1) stop = want_int(c, a->pos[0], "range's argument");
    else {
        start = want_int(c, a->pos[0], "range's argument");
        stop = want_int(c, a->pos[1], "range's argument");
        if (a->n_pos == 3) step = want_int(c, a->pos[2], "range's argument");
    }
    if (step == 0) rerr(c, "ValueError", "range() arg 3 must not be zero");
    double count = ceil(((double)stop - (double)start) / (double)step);
    if (count < 0) count = 0;
    /* jinja2's sandbox refuses ranges over 100000 items (MAX_RANGE) */
    if (count > 100000) rerr(c, "OverflowError", "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    jval r = v_list(c, (size_t)count);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) r.u.l->v[r.u.l->n++] = v_int(i);
    tick(c, r.u.l->n / 16);
    return r;
}

static jval g_namespace(ctx *c, jval self, args *a) {
    jval ns = v_dict(c, 0, T_NS);
    for (int i = 0; i < a->n_pos; i++) {
        if (a->pos[i].t != T_DICT) rerr(c, "TypeError", "namespace() takes mappings and keyword arguments");
        for (size_t k = 0; k < a->pos[i].u.d->n; k++) dict_set(c, ns.u.d, a->pos[i].u.d->k[k], a->pos[i].u.d->v[k]);
    }
    for (int k = 0; k < a->n_kw; k++) dict_set_s(c, ns.u.d, a->kw_names[k], a->kw[k]);
    return ns;
}

static jval g_dict(ctx *c, jval self, args *a) {
    jval d = g_namespace(c, self, a);
    d.t = T_DICT;
    return d;
}

static jval g_strftime_now(ctx *c, jval self, args *a) {
    const jstr *fmt = want_str(c, arg(a, 0, "format", v_cstr(c, "%Y-%m-%d"), NULL), "strftime_now's format");
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char buf[512];
    size_t n = fmt->n < 200 ? strftime(buf, sizeof buf, fmt->p, &tm) : 0;
    return v_str(c, buf, n);
}

/* ---------------------------------------------------------------- API */

void pam_jinja_limits_default(pam_jinja_limits *l) {
    l->max_output_bytes = (size_t)16 << 20;
    l->max_memory_bytes = (size_t)256 << 20;
    l->max_steps = 20 * 1000 * 1000;
    l->max_depth = 200;
}

static void set_err(char *err, size_t cap, const char *msg) {
    if (err && cap) snprintf(err, cap, "%s", msg);
}

pam_status pam_jinja_parse(const char *src, size_t len, pam_jinja **out, char *err, size_t err_cap) {
    char dummy[8];
    if (!err || !err_cap) err = dummy, err_cap = sizeof dummy;
    err[0] = '\0';
    *out = NULL;
    if (!src && len) {
        set_err(err, err_cap, "TemplateError: no template text");
        return PAM_ERR_INVALID;
    }
    pam_jinja *t = calloc(1, sizeof *t);
    if (!t) {
        set_err(err, err_cap, "out of memory");
        return PAM_ERR_NOMEM;
    }
    /* The tree is a small multiple of the source; the limit only stops a
     * pathological input from taking the machine. */
    t->ar.limit = (len + 4096) * 64 + ((size_t)1 << 20);
    parser *p = calloc(1, sizeof *p);
    if (!p) {
        free(t);
        set_err(err, err_cap, "out of memory");
        return PAM_ERR_NOMEM;
    }
    p->ar = &t->ar;
    p->err = err;
    p->err_cap = err_cap;
    int rc = setjmp(p->jb);
    if (rc) {
        free(p);
        arena_free(&t->ar);
        free(t);
        return rc == 2 ? PAM_ERR_NOMEM : PAM_ERR_INVALID;
    }
    lex(p, src ? src : "", len);
    t->root = parse_seq(p, NULL, 0, NULL, 0);
    for (int k = 0; k < p->n_unknown; k++)
        if (!p->unknown[k].soft)
            passert(p, p->unknown[k].line, p->unknown[k].is_test ? "No test named '%s'." : "No filter named '%s'.",
                    p->unknown[k].name);
    free(p);
    *out = t;
    return PAM_OK;
}

void pam_jinja_free(pam_jinja *t) {
    if (!t) return;
    arena_free(&t->ar);
    free(t);
}

static void add_global(ctx *c, const char *name, builtin_fn fn) {
    scope_set(c, c->sc, name, v_func(c, name, v_none(), fn));
}

static pam_status render(const pam_jinja *t, const json_t *vars, const pam_jinja_limits *limits, char **out,
                         size_t *out_len, char *err, size_t err_cap) {
    err[0] = '\0';
    *out = NULL;
    if (out_len) *out_len = 0;
    if (vars && !json_is_object(vars)) {
        set_err(err, err_cap, "TemplateError: the template's variables must be a JSON object");
        return PAM_ERR_INVALID;
    }
    ctx *c = calloc(1, sizeof *c);
    if (!c) {
        set_err(err, err_cap, "out of memory");
        return PAM_ERR_NOMEM;
    }
    if (limits) c->lim = *limits;
    else pam_jinja_limits_default(&c->lim);
    c->ar.limit = c->lim.max_memory_bytes;
    c->err = err;
    c->err_cap = err_cap;
    if (setjmp(c->jb)) {
        arena_free(&c->ar);
        free(c);
        return PAM_ERR_INVALID;
    }
    c->sc = new_scope(c, NULL);
    add_global(c, "raise_exception", g_raise);
    add_global(c, "range", g_range);
    add_global(c, "namespace", g_namespace);
    add_global(c, "dict", g_dict);
    add_global(c, "strftime_now", g_strftime_now);
    if (vars) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)vars, k, x) scope_set(c, c->sc, k, from_json(c, x, 0));
    }
    c->sc = new_scope(c, c->sc);
    sbuf o = {0};
    sb_put(c, &o, "", 0);
    c->out = &o;
    exec_seq(c, t->root);
    char *r = malloc(o.n + 1);
    if (!r) {
        arena_free(&c->ar);
        free(c);
        set_err(err, err_cap, "out of memory");
        return PAM_ERR_NOMEM;
    }
    memcpy(r, o.p, o.n);
    r[o.n] = '\0';
    *out = r;
    if (out_len) *out_len = o.n;
    arena_free(&c->ar);
    free(c);
    return PAM_OK;
}

pam_status pam_jinja_render(const pam_jinja *t, const json_t *vars, const pam_jinja_limits *limits, char **out,
                            size_t *out_len, char *err, size_t err_cap) {
    char dummy[8];
    if (!err || !err_cap) return render(t, vars, limits, out, out_len, dummy, sizeof dummy);
    return render(t, vars, limits, out, out_len, err, err_cap);
}
