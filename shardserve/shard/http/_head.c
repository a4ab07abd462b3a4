/* The compiled twin of head.py's split_head, for the heads nearly every client sends.
 *
 * split_head(head, request_line, field_size, fields) returns what the reference
 * returns for a head it takes, and None for any other head (errors included): the
 * reference then parses that one, so every error message and every rare form has one
 * implementation, in Python.  It takes: a request line "METHOD SP /target SP HTTP/1.x"
 * with one of eight common methods (not CONNECT), an origin-form ASCII target
 * without tabs; fields whose names are tokens, each of Host, Content-Length,
 * Transfer-Encoding and Connection at most once; only the bytes a head may hold,
 * CRLF line ends, and the limits the reference applies.
 *
 * Multi-phase initialisation and per-module state only (interned method, version and
 * field-name objects): it loads in every interpreter, own-GIL subinterpreters
 * included.  The input is only read; every object built is owned or released on
 * every path.  tests/test_head_split.py holds it to the reference (hypothesis, and
 * under valgrind in CI); tests/fuzz/ feeds it through the parser with atheris.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_twins.h"

#define REQUEST_LINE_EXTRA 16 /* parser.py's: method, spaces and version */

static const char *const METHODS[] = {
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
};
#define N_METHODS (sizeof(METHODS) / sizeof(METHODS[0]))

/* Field names sent often enough to keep one object of each (lower-case). */
static const char *const NAMES[] = {
    "host", "content-length", "transfer-encoding", "connection", "upgrade",
    "user-agent", "accept", "accept-encoding", "accept-language", "content-type",
    "cookie", "referer", "origin", "cache-control", "pragma", "authorization",
    "x-forwarded-for", "x-forwarded-proto", "x-real-ip", "forwarded", "if-none-match",
    "if-modified-since", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest",
    "sec-fetch-user", "upgrade-insecure-requests", "priority", "dnt", "te", "range",
    "expect", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform",
};
#define N_NAMES (sizeof(NAMES) / sizeof(NAMES[0]))
/* The first five are the kinds the parser acts on, in this order. */
enum { HOST = 0, CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, UPGRADE, N_KINDS };

typedef struct {
    PyObject *methods[N_METHODS]; /* str */
    PyObject *version_11;         /* "1.1" */
    PyObject *version_10;         /* "1.0" */
    PyObject *names[N_NAMES];     /* bytes */
} head_state;

/* Bytes a head may hold anywhere: HTAB, LF, CR, SP, VCHAR, obs-text. */
static int allowed(unsigned char c)
{
    return c == 9 || c == 10 || c == 13 || (c >= 0x20 && c != 0x7f);
}

/* tchar (RFC 9110 5.6.2). */
static int tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* The lower-cased name as a bytes object (new reference), and its kind (or -1). */
static PyObject *field_name(head_state *st, const unsigned char *raw, Py_ssize_t len, int *kind)
{
    *kind = -1;
    for (size_t i = 0; i < N_NAMES; i++) {
        const char *known = NAMES[i];
        if ((Py_ssize_t)strlen(known) != len)
            continue;
        Py_ssize_t j = 0;
        while (j < len && lower(raw[j]) == (unsigned char)known[j])
            j++;
        if (j == len) {
            if (i < N_KINDS)
                *kind = (int)i;
            return Py_NewRef(st->names[i]);
        }
    }
    PyObject *name = PyBytes_FromStringAndSize(NULL, len);
    if (name == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(name);
    for (Py_ssize_t j = 0; j < len; j++)
        out[j] = (char)lower(raw[j]);
    return name;
}

static PyObject *split_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "split_head(head: bytes, request_line, field_size, fields)");
        return NULL;
    }
    Py_ssize_t request_line = PyLong_AsSsize_t(args[1]);
    Py_ssize_t field_size = PyLong_AsSsize_t(args[2]);
    Py_ssize_t fields = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    head_state *st = PyModule_GetState(module);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);

    /* The bytes, and the line structure: every CR starts a CRLF, every LF ends one. */
    Py_ssize_t count = 0, line0_end = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (!allowed(c) || c == '\n')
            Py_RETURN_NONE;
        if (c == '\r') {
            if (i + 1 >= n || p[i + 1] != '\n')
                Py_RETURN_NONE;
            if (count == 0)
                line0_end = i;
            count++;
            i++;
        }
    }
    if (count > fields)
        Py_RETURN_NONE;

    /* The request line: exactly two spaces. */
    const unsigned char *sp1 = memchr(p, ' ', line0_end);
    if (sp1 == NULL)
        Py_RETURN_NONE;
    const unsigned char *sp2 = memchr(sp1 + 1, ' ', line0_end - (sp1 + 1 - p));
    if (sp2 == NULL || memchr(sp2 + 1, ' ', line0_end - (sp2 + 1 - p)) != NULL)
        Py_RETURN_NONE;
    Py_ssize_t method_len = sp1 - p;
    PyObject *method = NULL;
    for (size_t i = 0; i < N_METHODS; i++) {
        if ((Py_ssize_t)strlen(METHODS[i]) == method_len && memcmp(p, METHODS[i], method_len) == 0) {
            method = st->methods[i];
            break;
        }
    }
    if (method == NULL)
        Py_RETURN_NONE;
    const unsigned char *version = sp2 + 1;
    Py_ssize_t version_len = p + line0_end - version;
    PyObject *http_version;
    if (version_len == 8 && memcmp(version, "HTTP/1.1", 8) == 0)
        http_version = st->version_11;
    else if (version_len == 8 && memcmp(version, "HTTP/1.0", 8) == 0)
        http_version = st->version_10;
    else
        Py_RETURN_NONE;
    const unsigned char *target = sp1 + 1;
    Py_ssize_t target_len = sp2 - target;
    if (n > request_line && (target_len > request_line || line0_end > request_line + REQUEST_LINE_EXTRA))
        Py_RETURN_NONE;
    if (target_len == 0 || target[0] != '/')
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < target_len; i++) {
        if (target[i] == '\t' || target[i] >= 0x80)
            Py_RETURN_NONE;
    }

    PyObject *headers = PyList_New(count);
    PyObject *found[N_KINDS - 1] = {NULL, NULL, NULL, NULL}; /* host ... connection */
    PyObject *target_obj = NULL, *result = NULL;
    int upgrade = 0;
    if (headers == NULL)
        return NULL;
    Py_ssize_t start = line0_end + 2;
    for (Py_ssize_t index = 0; index < count; index++) {
        const unsigned char *line = p + start;
        const unsigned char *end = memchr(line, '\r', n - start);
        Py_ssize_t line_len = end == NULL ? n - start : end - line;
        start += line_len + 2;
        if (n > field_size && line_len > field_size)
            goto fallback;
        const unsigned char *colon = memchr(line, ':', line_len);
        if (colon == NULL || colon == line)
            goto fallback;
        Py_ssize_t name_len = colon - line;
        for (Py_ssize_t j = 0; j < name_len; j++) {
            if (!tchar(line[j]))
                goto fallback;
        }
        const unsigned char *value = colon + 1, *value_end = line + line_len;
        while (value < value_end && (*value == ' ' || *value == '\t'))
            value++;
        while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t'))
            value_end--;
        int kind;
        PyObject *name = field_name(st, line, name_len, &kind);
        if (name == NULL)
            goto error;
        PyObject *value_obj = PyBytes_FromStringAndSize((const char *)value, value_end - value);
        if (value_obj == NULL) {
            Py_DECREF(name);
            goto error;
        }
        PyObject *pair = PyTuple_Pack(2, name, value_obj);
        Py_DECREF(name);
        if (pair == NULL) {
            Py_DECREF(value_obj);
            goto error;
        }
        PyList_SET_ITEM(headers, index, pair);
        if (kind == UPGRADE) {
            upgrade = 1;
        } else if (kind >= 0) {
            if (found[kind] != NULL) { /* repeated: the reference joins or refuses */
                Py_DECREF(value_obj);
                goto fallback;
            }
            found[kind] = value_obj; /* (owns the reference) */
            continue;
        }
        Py_DECREF(value_obj);
    }
    target_obj = PyBytes_FromStringAndSize((const char *)target, target_len);
    if (target_obj == NULL)
        goto error;
    result = PyTuple_Pack(
        9, method, target_obj, http_version, headers, found[HOST] ? found[HOST] : Py_None,
        found[CONTENT_LENGTH] ? found[CONTENT_LENGTH] : Py_None,
        found[TRANSFER_ENCODING] ? found[TRANSFER_ENCODING] : Py_None,
        found[CONNECTION] ? found[CONNECTION] : Py_None, upgrade ? Py_True : Py_False);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(target_obj);
    Py_DECREF(headers);
    for (int k = 0; k < N_KINDS - 1; k++)
        Py_XDECREF(found[k]);
    return result;
}

static PyMethodDef head_methods[] = {
    {"split_head", (PyCFunction)(void (*)(void))split_head, METH_FASTCALL,
     "split_head(head, request_line, field_size, fields) -> the reference's tuple, or None"},
    {NULL, NULL, 0, NULL},
};

static int head_exec(PyObject *module)
{
    head_state *st = PyModule_GetState(module);
    for (size_t i = 0; i < N_METHODS; i++) {
        st->methods[i] = PyUnicode_InternFromString(METHODS[i]);
        if (st->methods[i] == NULL)
            return -1;
    }
    st->version_11 = PyUnicode_InternFromString("1.1");
    st->version_10 = PyUnicode_InternFromString("1.0");
    if (st->version_11 == NULL || st->version_10 == NULL)
        return -1;
    for (size_t i = 0; i < N_NAMES; i++) {
        st->names[i] = PyBytes_FromString(NAMES[i]);
        if (st->names[i] == NULL)
            return -1;
    }
    return 0;
}

static int head_traverse(PyObject *module, visitproc visit, void *arg)
{
    head_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
    for (size_t i = 0; i < N_METHODS; i++)
        Py_VISIT(st->methods[i]);
    Py_VISIT(st->version_11);
    Py_VISIT(st->version_10);
    for (size_t i = 0; i < N_NAMES; i++)
        Py_VISIT(st->names[i]);
    return 0;
}

static int head_clear(PyObject *module)
{
    head_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
    for (size_t i = 0; i < N_METHODS; i++)
        Py_CLEAR(st->methods[i]);
    Py_CLEAR(st->version_11);
    Py_CLEAR(st->version_10);
    for (size_t i = 0; i < N_NAMES; i++)
        Py_CLEAR(st->names[i]);
    return 0;
}

static void head_free(void *module)
{
    head_clear((PyObject *)module);
}

static PyModuleDef_Slot head_slots[] = {TWIN_MODULE_SLOTS(head_exec)};

static struct PyModuleDef head_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shardserve.shard.http._head",
    .m_doc = "The compiled twin of head.py's split_head.",
    .m_size = sizeof(head_state),
    .m_methods = head_methods,
    .m_slots = head_slots,
    .m_traverse = head_traverse,
    .m_clear = head_clear,
    .m_free = head_free,
};

PyMODINIT_FUNC PyInit__head(void)
{
    return PyModuleDef_Init(&head_module);
}
