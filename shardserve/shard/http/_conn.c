/* Compiled twins of the per-request path from llhttp to the request cycle: the llhttp
 * callbacks of HttptoolsParser (parser_httptools.py) and HttpConnection's per-request
 * methods (protocol.py).  One Python frame each was most of what a request cost
 * between the parser and the app.
 *
 * ParserTwins(parser_class, globals, interned_methods) and ConnTwins(connection_class,
 * cycle_class, counters_class, parse_error, request_scope, account, perf_counter) hold
 * what their twins share; their attributes are Twin descriptors put in place of the
 * methods of the same names (install_compiled_callbacks, install_compiled_connection).
 * Each does what its reference, <class>.reference_<name>, does (the same attributes set,
 * in the same order, the same calls made, the same errors) for the common case, and
 * calls the reference for anything else, deciding before it changes anything:
 *
 * - feed: no head arriving in pieces (what llhttp stopping means is the reference's
 *   feed_failed).
 * - on_url: the target in one piece, within --limit-request-line.
 * - on_header: a field within --limit-request-field-size, its name at most 32 bytes,
 *   not Transfer-Encoding, not a second Host (a new Host value still goes through
 *   framing's check_host, looked up in the module's globals).
 * - on_headers_complete: the head began the read (its version is read there, as the
 *   reference does), HTTP/1.1 with a Host, no Transfer-Encoding, a method among
 *   INTERNED_METHODS other than CONNECT, within --limit-request-fields.
 * - on_message_complete: always.
 * - data_received: always (it only counts, marks and calls: parser.feed, reject for a
 *   ParseError, and each ready cycle's run() through the connection's start).
 * - on_request: no --limit-concurrency, no --limit-request-body, no exchange running
 *   (else it is pipelined), an origin-form target.  The scope comes from scope.py's
 *   request_scope (itself a twin), the cycle is made as RequestCycle.__init__ makes it.
 * - on_request_end: nobody waits for the request's body.
 * - response_done: account (the one given) is always called first; the rest in C
 *   when the connection goes on to wait for the next request (kept alive, nothing
 *   pipelined, rejected or still arriving, reading not paused), else the reference's
 *   rest, HttpConnection.after_response.
 *
 * Objects of another class (a subclass too) go to the reference.  Multi-phase
 * initialisation, heap types and module state only: it loads in every interpreter,
 * own-GIL subinterpreters included.  tests/test_parser_twins.py and
 * tests/test_conn_twins.py hold it to the references; CI runs the HTTP suite with and
 * without it, and valgrind over those tests.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_twins.h"

/* protocol.py's timer kinds; cycle.py's request states. */
enum { NO_TIMER = 0, IDLE = 1, READING_HEAD = 2 };
enum { BODY_MORE = 0, BODY_ENDED = 1 };
enum { NOT_STARTED = 0 };

#define CONN_SLOTS(X)                                                                      \
    X(state) X(counters) X(parser) X(scope_template) X(trusted) X(cycle) X(parsing)        \
    X(pipeline) X(closed) X(draining) X(read_paused) X(timer) X(timer_since) X(rejection)  \
    X(body_limit) X(start) X(ready) X(feeding)
#define CYCLE_SLOTS(X)                                                                     \
    X(conn) X(scope) X(keep_alive) X(task) X(started) X(request) X(body) X(waiter)         \
    X(state) X(expect_checked)
#define COUNTER_SLOTS(X) X(bytes_in)
/* HttptoolsParser's (parser_httptools.py), and its "parser" (P_parser: the name is
 * among CONN_SLOTS's already). */
#define PARSER_SLOTS(X)                                                                    \
    X(sink) X(limits) X(field_size) X(url) X(headers) X(host) X(last_host)               \
    X(transfer_encoding) X(in_head) X(in_message) X(head_bytes) X(chunk) X(_on_request_end)
#define ENUMERATE(name) C_##name,
enum { CONN_SLOTS(ENUMERATE) N_CONN };
#undef ENUMERATE
#define ENUMERATE(name) Y_##name,
enum { CYCLE_SLOTS(ENUMERATE) N_CYCLE };
#undef ENUMERATE
#define ENUMERATE(name) K_##name,
enum { COUNTER_SLOTS(ENUMERATE) N_COUNTER };
#undef ENUMERATE
/* PythonParser's (parser_python.py), besides sink, limits, state and last_host. */
#define PYTHON_SLOTS(X) X(buf) X(scanned) X(line_seen) X(upgrade) X(on_request_end)
#define ENUMERATE(name) Q_##name,
enum { PYTHON_SLOTS(ENUMERATE) Q_sink, Q_limits, Q_state, Q_last_host, N_PYTHON };
#undef ENUMERATE
#define ENUMERATE(name) P_##name,
enum { PARSER_SLOTS(ENUMERATE) P_parser, N_PARSER };
#undef ENUMERATE

/* Names: slots, attributes and methods. */
#define NAMES(X)                                                                           \
    CONN_SLOTS(X) X(conn) X(scope) X(keep_alive) X(task) X(started) X(request) X(body)     \
    X(waiter) X(expect_checked) X(bytes_in) X(feed) X(reject) X(status) X(reason) X(run)   \
    X(now) X(limit_concurrency) X(after_response) PARSER_SLOTS(X) X(request_line) X(fields) \
    X(get_method) X(should_keep_alive) X(on_request) X(check_host) X(feed_data)            \
    X(feed_failed) X(_LLHTTP_STOPPED) PYTHON_SLOTS(X) X(split_fast) X(_switch)

typedef struct {
#define FIELD(name) PyObject *name;
    NAMES(FIELD)
#undef FIELD
    PyObject *empty; /* b"" */
    PyObject *http11; /* "1.1" */
    PyObject *small[3]; /* 0, 1, 2 */
    PyTypeObject *twins_type;
    PyTypeObject *parser_twins_type;
    PyTypeObject *python_twins_type;
    PyTypeObject *twin_type;
    PyTypeObject *bound_type;
    attr_cache c_now, c_limit_concurrency, c_request_line, c_fields, c_field_size, c_task;
} conn_state;


typedef struct {
    PyObject_HEAD
    slot_table conn, cycle, counters;
    PyObject *parse_error;   /* parser.ParseError */
    PyObject *request_scope; /* scope.request_scope */
    PyObject *account;       /* scope.account */
    PyObject *perf_counter;  /* time.perf_counter */
    PyObject *references;    /* tuple: the four reference functions */
    PyObject *twins[4];      /* the descriptors */
} ConnTwins;

typedef struct Bound Bound;

/* A twin's compiled path: a new reference, or NULL with an error raised, or NULL
 * without one: not taken (nothing was changed), the reference's turn.  ``owner`` is
 * the ConnTwins or ParserTwins that made it. */
typedef PyObject *(*twin_fn)(conn_state *st, PyObject *owner, PyObject *self,
                             PyObject *const *args, Py_ssize_t nargs);

static PyObject *call_twin(conn_state *st, PyObject *name, PyObject *const *args,
                           Py_ssize_t nargs);

/* One descriptor: a twin method. */
typedef struct {
    PyObject_HEAD
    PyObject *owner;     /* its ConnTwins or ParserTwins */
    PyObject *cls;       /* the one class whose objects it takes (not subclasses) */
    PyObject *reference; /* the Python method it mirrors */
    twin_fn function;
    Py_ssize_t nargs; /* arguments after self */
    vectorcallfunc vectorcall;
} Twin;

/* A twin bound to one connection. */
struct Bound {
    PyObject_HEAD
    Twin *twin;
    PyObject *conn;
    vectorcallfunc vectorcall;
};

#define CONN(obj, name) (*(PyObject **)((char *)(obj) + tw->conn.offsets[C_##name]))
#define CYC(obj, name) (*(PyObject **)((char *)(obj) + tw->cycle.offsets[Y_##name]))
#define CNT(obj, name) (*(PyObject **)((char *)(obj) + tw->counters.offsets[K_##name]))

static inline conn_state *state_of(PyTypeObject *type)
{
    return (conn_state *)PyType_GetModuleState(type);
}

/* An exact int equal to ``value``. */
static inline int is_small(PyObject *obj, long value)
{
    return small_int(obj) == value;
}

static inline PyObject *unset(const char *name)
{
    PyErr_Format(PyExc_AttributeError, "connection slot %s is not set", name);
    return NULL;
}

/* conn.timer = IDLE; conn.timer_since = conn.state.now */
static int idle(conn_state *st, ConnTwins *tw, PyObject *conn)
{
    PyObject *state = CONN(conn, state);
    if (state == NULL) {
        unset("state");
        return -1;
    }
    store(&CONN(conn, timer), st->small[IDLE]);
    PyObject *now = get_attr(&st->c_now, state, st->now);
    if (now == NULL)
        return -1;
    store(&CONN(conn, timer_since), now);
    Py_DECREF(now);
    return 0;
}

/* data_received(data) ------------------------------------------------------------- */

static PyObject *twin_data_received(conn_state *st, PyObject *owner, PyObject *conn,
                                    PyObject *const *args, Py_ssize_t nargs)
{
    ConnTwins *tw = (ConnTwins *)owner;
    PyObject *data = args[0];
    PyObject *counters = CONN(conn, counters);
    PyObject *parser = CONN(conn, parser);
    if (!PyBytes_CheckExact(data) || counters == NULL || parser == NULL ||
        (PyObject *)Py_TYPE(counters) != tw->counters.type || CNT(counters, bytes_in) == NULL)
        return NULL; /* (not taken: the caller calls the reference) */
    PyObject *size = PyLong_FromSsize_t(PyBytes_GET_SIZE(data));
    if (size == NULL)
        return NULL;
    PyObject *total = PyNumber_Add(CNT(counters, bytes_in), size);
    Py_DECREF(size);
    if (total == NULL)
        return NULL;
    store(&CNT(counters, bytes_in), total);
    Py_DECREF(total);
    if (is_small(CONN(conn, timer), IDLE)) {
        PyObject *state = CONN(conn, state);
        if (state == NULL)
            return unset("state");
        store(&CONN(conn, timer), st->small[READING_HEAD]);
        PyObject *now = get_attr(&st->c_now, state, st->now);
        if (now == NULL)
            return NULL;
        store(&CONN(conn, timer_since), now);
        Py_DECREF(now);
    }
    store(&CONN(conn, feeding), Py_True);
    parser = CONN(conn, parser);
    if (parser == NULL)
        return unset("parser");
    Py_INCREF(parser);
    PyObject *feed_args[2] = {parser, data};
    PyObject *fed = call_twin(st, st->feed, feed_args, 2);
    Py_DECREF(parser);
    if (fed == NULL) {
        if (!PyErr_ExceptionMatches(tw->parse_error))
            return NULL;
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyErr_NormalizeException(&type, &value, &traceback);
        Py_XDECREF(type);
        Py_XDECREF(traceback);
        PyObject *status = value ? PyObject_GetAttr(value, st->status) : NULL;
        PyObject *reason = status ? PyObject_GetAttr(value, st->reason) : NULL;
        if (reason == NULL) {
            Py_XDECREF(value);
            Py_XDECREF(status);
            return NULL;
        }
        /* reject runs as in the reference's ``except ParseError`` clause: with the
         * ParseError handled, so that an error it raises has it as __context__. */
        PyObject *handled = PyErr_GetHandledException();
        PyErr_SetHandledException(value);
        PyObject *call[3] = {conn, status, reason};
        fed = PyObject_VectorcallMethod(st->reject, call, 3, NULL);
        PyErr_SetHandledException(handled);
        Py_XDECREF(handled);
        Py_DECREF(value);
        Py_DECREF(status);
        Py_DECREF(reason);
        if (fed == NULL)
            return NULL;
    }
    Py_DECREF(fed);
    for (;;) {
        PyObject *cycle = CONN(conn, ready);
        if (cycle == NULL)
            return unset("ready");
        if (cycle == Py_None)
            break;
        Py_INCREF(cycle);
        store(&CONN(conn, ready), Py_None);
        PyObject *coro = call_twin(st, st->run, &cycle, 1);
        PyObject *start = CONN(conn, start);
        PyObject *task = NULL;
        if (coro != NULL && start == NULL)
            unset("start");
        else if (coro != NULL) {
            Py_INCREF(start);
            task = PyObject_CallOneArg(start, coro);
            Py_DECREF(start);
        }
        Py_XDECREF(coro);
        int failed = task == NULL || set_attr(&st->c_task, cycle, st->task, task) < 0;
        Py_XDECREF(task);
        Py_DECREF(cycle);
        if (failed)
            return NULL;
    }
    store(&CONN(conn, feeding), Py_False);
    Py_RETURN_NONE;
}

/* on_request(method, target, http_version, headers, keep_alive) -------------------- */

/* A new cycle, as RequestCycle.__init__(conn, scope, keep_alive) makes it. */
static PyObject *new_cycle(conn_state *st, ConnTwins *tw, PyObject *conn, PyObject *scope,
                           PyObject *keep_alive)
{
    PyObject *started = PyObject_CallNoArgs(tw->perf_counter);
    if (started == NULL)
        return NULL;
    PyTypeObject *type = (PyTypeObject *)tw->cycle.type;
    PyObject *cycle = type->tp_alloc(type, 0);
    if (cycle == NULL) {
        Py_DECREF(started);
        return NULL;
    }
    CYC(cycle, conn) = Py_NewRef(conn);
    CYC(cycle, scope) = Py_NewRef(scope);
    CYC(cycle, keep_alive) = Py_NewRef(keep_alive);
    CYC(cycle, started) = started;
    CYC(cycle, request) = Py_NewRef(st->small[BODY_MORE]);
    CYC(cycle, body) = Py_NewRef(st->empty);
    CYC(cycle, waiter) = Py_NewRef(Py_None);
    CYC(cycle, state) = Py_NewRef(st->small[NOT_STARTED]);
    CYC(cycle, expect_checked) = Py_NewRef(Py_False);
    return cycle;
}

static PyObject *twin_on_request(conn_state *st, PyObject *owner, PyObject *conn,
                                 PyObject *const *args, Py_ssize_t nargs)
{
    ConnTwins *tw = (ConnTwins *)owner;
    PyObject *target = args[1];
    PyObject *state = CONN(conn, state);
    PyObject *keep_alive = args[4];
    if (state == NULL || CONN(conn, body_limit) != Py_None || CONN(conn, cycle) != Py_None ||
        CONN(conn, scope_template) == NULL || CONN(conn, trusted) == NULL ||
        !PyBytes_CheckExact(target) || PyBytes_GET_SIZE(target) == 0 ||
        PyBytes_AS_STRING(target)[0] != '/')
        return NULL;
    PyObject *limit = get_attr(&st->c_limit_concurrency, state, st->limit_concurrency);
    if (limit == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_DECREF(limit);
    if (limit != Py_None)
        return NULL;

    /* Taken. */
    Py_INCREF(state);
    PyObject *scope = NULL, *cycle = NULL;
    store(&CONN(conn, timer), st->small[NO_TIMER]);
    const char *text = PyBytes_AS_STRING(target);
    Py_ssize_t size = PyBytes_GET_SIZE(target);
    const char *mark = memchr(text, '?', size);
    PyObject *raw_path, *query;
    if (mark == NULL) {
        raw_path = Py_NewRef(target);
        query = Py_NewRef(st->empty);
    }
    else {
        raw_path = PyBytes_FromStringAndSize(text, mark - text);
        query = PyBytes_FromStringAndSize(mark + 1, size - (mark - text) - 1);
    }
    if (raw_path != NULL && query != NULL) {
        PyObject *call[8] = {CONN(conn, scope_template), state, CONN(conn, trusted),
                             args[0], raw_path, query, args[2], args[3]};
        Py_INCREF(call[0]);
        Py_INCREF(call[2]);
        scope = PyObject_Vectorcall(tw->request_scope, call, 8, NULL);
        Py_DECREF(call[0]);
        Py_DECREF(call[2]);
    }
    Py_XDECREF(raw_path);
    Py_XDECREF(query);
    Py_DECREF(state);
    if (scope == NULL)
        return NULL; /* (a ParseError, raised as the reference raises it) */
    cycle = new_cycle(st, tw, conn, scope, keep_alive);
    Py_DECREF(scope);
    if (cycle == NULL)
        return NULL;
    store(&CONN(conn, parsing), cycle);
    if (CONN(conn, cycle) == Py_None) {
        store(&CONN(conn, cycle), cycle);
        store(&CONN(conn, ready), cycle);
        Py_DECREF(cycle);
        Py_RETURN_NONE;
    }
    /* (request_scope ran code that started an exchange: finish as the reference.) */
    PyErr_SetString(PyExc_RuntimeError, "an exchange began while a request was parsed");
    Py_DECREF(cycle);
    return NULL;
}

/* on_request_end() ------------------------------------------------------------------ */

static PyObject *twin_on_request_end(conn_state *st, PyObject *owner, PyObject *conn,
                                     PyObject *const *args, Py_ssize_t nargs)
{
    ConnTwins *tw = (ConnTwins *)owner;
    PyObject *cycle = CONN(conn, parsing);
    if (cycle == NULL || (PyObject *)Py_TYPE(cycle) != tw->cycle.type ||
        CYC(cycle, waiter) != Py_None || CONN(conn, cycle) == NULL)
        return NULL;
    Py_INCREF(cycle);
    store(&CONN(conn, parsing), Py_None);
    store(&CYC(cycle, request), st->small[BODY_ENDED]);
    Py_DECREF(cycle);
    if (CONN(conn, cycle) == Py_None && idle(st, tw, conn) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* response_done(cycle) -------------------------------------------------------------- */

static PyObject *twin_response_done(conn_state *st, PyObject *owner, PyObject *conn,
                                    PyObject *const *args, Py_ssize_t nargs)
{
    ConnTwins *tw = (ConnTwins *)owner;
    PyObject *cycle = args[0];
    PyObject *state = CONN(conn, state);
    if (state == NULL)
        return NULL;
    PyObject *call[2] = {state, cycle};
    Py_INCREF(state);
    PyObject *result = PyObject_Vectorcall(tw->account, call, 2, NULL);
    Py_DECREF(state);
    if (result == NULL)
        return NULL;
    Py_DECREF(result);
    /* The rest, in C when the connection simply waits for its next request. */
    PyObject *pipeline = CONN(conn, pipeline);
    PyObject *rejection = CONN(conn, rejection);
    if (CONN(conn, cycle) == cycle && (PyObject *)Py_TYPE(cycle) == tw->cycle.type &&
        CYC(cycle, keep_alive) == Py_True && CONN(conn, draining) == Py_False &&
        CONN(conn, closed) == Py_False && CONN(conn, parsing) == Py_None &&
        CONN(conn, read_paused) == Py_False && pipeline != NULL &&
        PyObject_Length(pipeline) == 0 && rejection != NULL && PyBytes_CheckExact(rejection) &&
        PyBytes_GET_SIZE(rejection) == 0) {
        store(&CONN(conn, cycle), Py_None);
        if (idle(st, tw, conn) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (PyErr_Occurred())
        return NULL; /* (from PyObject_Length) */
    PyObject *rest[2] = {conn, cycle};
    return PyObject_VectorcallMethod(st->after_response, rest, 2, NULL);
}

/* HttptoolsParser's llhttp callbacks ------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    slot_table parser;
    PyObject *globals;          /* parser_httptools's: check_host is looked up there */
    PyObject *interned_methods; /* parser.INTERNED_METHODS: bytes -> str */
    PyObject *twins[5];
} ParserTwins;

#define PRS(obj, name) (*(PyObject **)((char *)(obj) + pt->parser.offsets[P_##name]))

/* An exact int attribute of ``obj`` (limits are ints), or -1 (error cleared). */
static Py_ssize_t int_attr(attr_cache *cache, PyObject *obj, PyObject *name)
{
    PyObject *value = obj == NULL ? NULL : get_attr(cache, obj, name);
    Py_ssize_t result = -1;
    if (value != NULL && PyLong_CheckExact(value))
        result = PyLong_AsSsize_t(value);
    Py_XDECREF(value);
    if (result < 0)
        PyErr_Clear();
    return result;
}

/* feed(data): no head arriving in pieces.  When llhttp stops (an error, an upgrade),
 * what that means is the reference's feed_failed. */
static PyObject *twin_feed(conn_state *st, PyObject *owner, PyObject *self,
                           PyObject *const *args, Py_ssize_t nargs)
{
    ParserTwins *pt = (ParserTwins *)owner;
    PyObject *data = args[0];
    PyObject *in_message = PRS(self, in_message);
    if (PRS(self, in_head) != Py_False || !PyBool_Check(in_message) || !PyBytes_CheckExact(data) ||
        PRS(self, parser) == NULL)
        return NULL;
    /* Unless a body is still arriving, this read starts with a request line. */
    store(&PRS(self, chunk), in_message == Py_True ? Py_None : data);
    PyObject *llhttp = Py_NewRef(PRS(self, parser));
    PyObject *fed = call_method(st->feed_data, (PyObject *[]){llhttp, data}, 2);
    Py_DECREF(llhttp);
    if (fed != NULL)
        return fed;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *stopped = PyDict_GetItemWithError(pt->globals, st->_LLHTTP_STOPPED);
    if (stopped == NULL || !PyErr_GivenExceptionMatches(type, stopped)) {
        if (stopped == NULL && PyErr_Occurred()) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            return NULL;
        }
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *call[3] = {self, data, value};
    PyObject *result = PyObject_VectorcallMethod(st->feed_failed, call, 3, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return result;
}

/* on_url(url): the target, in one piece, within --limit-request-line. */
static PyObject *twin_on_url(conn_state *st, PyObject *owner, PyObject *self,
                             PyObject *const *args, Py_ssize_t nargs)
{
    ParserTwins *pt = (ParserTwins *)owner;
    PyObject *url = args[0];
    if (PRS(self, in_head) != Py_False || !PyBytes_CheckExact(url))
        return NULL;
    Py_ssize_t limit = int_attr(&st->c_request_line, PRS(self, limits), st->request_line);
    if (limit < 0 || PyBytes_GET_SIZE(url) > limit)
        return NULL;
    store(&PRS(self, in_head), Py_True);
    store(&PRS(self, head_bytes), st->small[0]);
    store(&PRS(self, url), url);
    Py_RETURN_NONE;
}

/* on_header(name, value): a field of the head within --limit-request-field-size, not
 * Transfer-Encoding, not a second Host. */
static PyObject *twin_on_header(conn_state *st, PyObject *owner, PyObject *self,
                                PyObject *const *args, Py_ssize_t nargs)
{
    ParserTwins *pt = (ParserTwins *)owner;
    PyObject *name = args[0], *value = args[1];
    PyObject *field_size = PRS(self, field_size);
    if (PRS(self, in_head) != Py_True || !PyBytes_CheckExact(name) ||
        !PyBytes_CheckExact(value) || field_size == NULL || !PyLong_CheckExact(field_size) ||
        PRS(self, headers) == NULL || !PyList_CheckExact(PRS(self, headers)))
        return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(field_size);
    Py_ssize_t name_size = PyBytes_GET_SIZE(name), value_size = PyBytes_GET_SIZE(value);
    if (limit < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (name_size + value_size > limit)
        return NULL;
    const char *raw = PyBytes_AS_STRING(name);
    /* (bytes.lower(): ASCII letters only) */
    char lowered[32];
    if (name_size > (Py_ssize_t)sizeof(lowered))
        return NULL; /* (a long name: rare, the reference's) */
    for (Py_ssize_t i = 0; i < name_size; i++) {
        char c = raw[i];
        lowered[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    int is_host = name_size == 4 && memcmp(lowered, "host", 4) == 0;
    if ((is_host && PRS(self, host) != Py_False) ||
        (name_size == 17 && memcmp(lowered, "transfer-encoding", 17) == 0))
        return NULL;
    /* llhttp drops the whitespace before a value but keeps what follows it. */
    const char *text = PyBytes_AS_STRING(value);
    Py_ssize_t end = value_size;
    while (end > 0 && (text[end - 1] == ' ' || text[end - 1] == '\t'))
        end--;

    /* Taken. */
    PyObject *field = PyTuple_New(2);
    if (field == NULL)
        return NULL;
    PyObject *lower = PyBytes_FromStringAndSize(lowered, name_size);
    PyObject *stripped = end == value_size ? Py_NewRef(value)
                                           : PyBytes_FromStringAndSize(text, end);
    if (lower == NULL || stripped == NULL) {
        Py_XDECREF(lower);
        Py_XDECREF(stripped);
        Py_DECREF(field);
        return NULL;
    }
    PyTuple_SET_ITEM(field, 0, lower);
    PyTuple_SET_ITEM(field, 1, stripped);
    if (is_host) {
        store(&PRS(self, host), Py_True);
        PyObject *last = PRS(self, last_host);
        int same = last != NULL && PyBytes_CheckExact(last) &&
                   PyBytes_GET_SIZE(last) == end && memcmp(PyBytes_AS_STRING(last), text, end) == 0;
        if (!same) { /* (a new Host value: once per connection, as a rule) */
            PyObject *check_host = PyDict_GetItemWithError(pt->globals, st->check_host);
            if (check_host == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_NameError, "name 'check_host' is not defined");
                Py_DECREF(field);
                return NULL;
            }
            Py_INCREF(check_host);
            PyObject *checked = PyObject_CallOneArg(check_host, stripped);
            Py_DECREF(check_host);
            if (checked == NULL) {
                Py_DECREF(field);
                return NULL;
            }
            Py_DECREF(checked);
            store(&PRS(self, last_host), stripped);
        }
    }
    PyObject *headers = PRS(self, headers); /* (again: check_host ran Python code) */
    int appended = headers == NULL ? -1 : PyList_Append(headers, field);
    Py_DECREF(field);
    if (appended < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "parser slot headers is not set");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* on_headers_complete(): a head that arrived whole at the start of a read, HTTP/1.1
 * with its Host, no Transfer-Encoding, not CONNECT, a common method. */
static PyObject *twin_on_headers_complete(conn_state *st, PyObject *owner, PyObject *self,
                                          PyObject *const *args, Py_ssize_t nargs)
{
    ParserTwins *pt = (ParserTwins *)owner;
    PyObject *headers = PRS(self, headers), *url = PRS(self, url), *chunk = PRS(self, chunk);
    PyObject *llhttp = PRS(self, parser), *sink = PRS(self, sink);
    if (headers == NULL || !PyList_CheckExact(headers) || url == NULL ||
        !PyBytes_CheckExact(url) || chunk == NULL || !PyBytes_CheckExact(chunk) ||
        llhttp == NULL || sink == NULL || PRS(self, host) != Py_True ||
        PRS(self, transfer_encoding) != Py_None)
        return NULL;
    Py_ssize_t fields = int_attr(&st->c_fields, PRS(self, limits), st->fields);
    if (fields < 0 || PyList_GET_SIZE(headers) > fields)
        return NULL;
    PyObject *method = call_method(st->get_method, &llhttp, 1);
    if (method == NULL || !PyBytes_CheckExact(method)) {
        PyErr_Clear();
        Py_XDECREF(method);
        return NULL;
    }
    /* The request line llhttp just parsed starts the read: its version is there. */
    Py_ssize_t at = PyBytes_GET_SIZE(method) + PyBytes_GET_SIZE(url) + 1;
    PyObject *name = NULL;
    if (PyBytes_GET_SIZE(chunk) >= at + 11 &&
        memcmp(PyBytes_AS_STRING(chunk) + at, " HTTP/1.1\r\n", 11) == 0)
        name = PyDict_GetItemWithError(pt->interned_methods, method); /* (bytes: no code) */
    Py_DECREF(method);
    if (name == NULL || !PyUnicode_CheckExact(name) ||
        PyUnicode_CompareWithASCIIString(name, "CONNECT") == 0) {
        PyErr_Clear();
        return NULL;
    }

    /* Taken: as the reference, reset for the next head, then pass this one on. */
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    Py_INCREF(name);
    Py_INCREF(url);
    Py_INCREF(headers);
    Py_INCREF(llhttp);
    Py_INCREF(sink);
    store(&PRS(self, chunk), Py_None);
    store(&PRS(self, url), st->empty);
    store(&PRS(self, headers), fresh);
    Py_DECREF(fresh);
    store(&PRS(self, host), Py_False);
    store(&PRS(self, in_head), Py_False);
    store(&PRS(self, in_message), Py_True);
    PyObject *result = NULL;
    PyObject *keep_alive = call_method(st->should_keep_alive, &llhttp, 1);
    if (keep_alive != NULL) {
        PyObject *call[6] = {sink, name, url, st->http11, headers, keep_alive};
        result = call_twin(st, st->on_request, call, 6);
        Py_DECREF(keep_alive);
    }
    Py_DECREF(name);
    Py_DECREF(url);
    Py_DECREF(headers);
    Py_DECREF(llhttp);
    Py_DECREF(sink);
    return result;
}

/* on_message_complete(): always. */
static PyObject *twin_on_message_complete(conn_state *st, PyObject *owner, PyObject *self,
                                          PyObject *const *args, Py_ssize_t nargs)
{
    ParserTwins *pt = (ParserTwins *)owner;
    PyObject *end = PRS(self, _on_request_end);
    if (end == NULL)
        return NULL;
    store(&PRS(self, in_message), Py_False);
    end = PRS(self, _on_request_end);
    if (end == NULL)
        return unset("_on_request_end");
    Py_INCREF(end);
    PyObject *result = PyObject_CallNoArgs(end);
    Py_DECREF(end);
    return result;
}

/* Bound ------------------------------------------------------------------------------ */

/* A twin called on ``obj``: its compiled path if it takes the call, else the reference. */
static PyObject *twin_call(conn_state *st, Twin *twin, PyObject *obj, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == twin->nargs && kwnames == NULL && (PyObject *)Py_TYPE(obj) == twin->cls) {
        Py_INCREF(obj);
        PyObject *result = twin->function(st, twin->owner, obj, args, nargs);
        Py_DECREF(obj);
        if (result != NULL || PyErr_Occurred())
            return result;
        /* (NULL and no error: not taken, nothing changed: the reference's turn) */
    }
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    PyObject *stack[8];
    PyObject **call = total < 8 ? stack : PyMem_New(PyObject *, total + 1);
    if (call == NULL)
        return PyErr_NoMemory();
    call[0] = obj;
    for (Py_ssize_t i = 0; i < total; i++)
        call[i + 1] = args[i];
    PyObject *result = PyObject_Vectorcall(twin->reference, call, nargs + 1, kwnames);
    if (call != stack)
        PyMem_Free(call);
    return result;
}

/* args[0].name(*args[1:]): straight to the twin where the method is one (no bound
 * object made), else _twins.h's call_method.  (Objects with a __dict__ could shadow
 * the method: those take the ordinary way.) */
static PyObject *call_twin(conn_state *st, PyObject *name, PyObject *const *args,
                           Py_ssize_t nargs)
{
    PyTypeObject *type = Py_TYPE(args[0]);
    if (type->tp_dictoffset == 0 && type->tp_getattro == PyObject_GenericGetAttr) {
        PyObject *method = _PyType_Lookup(type, name); /* (borrowed) */
        if (method != NULL && Py_IS_TYPE(method, st->twin_type)) {
            Py_INCREF(method);
            PyObject *result = twin_call(st, (Twin *)method, args[0], args + 1, nargs - 1, NULL);
            Py_DECREF(method);
            return result;
        }
    }
    return call_method(name, args, nargs);
}

static PyObject *bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    Bound *self = (Bound *)callable;
    return twin_call(state_of(Py_TYPE(self)), self->twin, self->conn, args,
                     PyVectorcall_NARGS(nargsf), kwnames);
}

static int bound_traverse(Bound *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->twin);
    Py_VISIT(self->conn);
    return 0;
}

static int bound_clear(Bound *self)
{
    Py_CLEAR(self->twin);
    Py_CLEAR(self->conn);
    return 0;
}

static void bound_dealloc(Bound *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    bound_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef bound_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Bound, vectorcall), READONLY, NULL},
    {"__self__", T_OBJECT, offsetof(Bound, conn), READONLY, NULL},
    {NULL},
};

static PyType_Slot bound_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, bound_traverse},
    {Py_tp_clear, bound_clear},
    {Py_tp_dealloc, bound_dealloc},
    {Py_tp_members, bound_members},
    {Py_tp_doc, "A connection method twin bound to one connection."},
    {0, NULL},
};

static PyType_Spec bound_spec = {
    .name = "shardserve.shard.http._conn.BoundTwin",
    .basicsize = sizeof(Bound),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = bound_slots,
};

/* Twin: the descriptor -------------------------------------------------------------- */

static PyObject *twin_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    conn_state *st = state_of(Py_TYPE(self));
    Bound *bound = PyObject_GC_New(Bound, st->bound_type);
    if (bound == NULL)
        return NULL;
    bound->twin = (Twin *)Py_NewRef(self);
    bound->conn = Py_NewRef(obj);
    bound->vectorcall = bound_vectorcall;
    PyObject_GC_Track(bound);
    return (PyObject *)bound;
}

/* Called through the class, as a function is: Class.method(obj, *args). */
static PyObject *twin_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "a method twin called without its object");
        return NULL;
    }
    return twin_call(state_of(Py_TYPE(callable)), (Twin *)callable, args[0], args + 1,
                     nargs - 1, kwnames);
}

static int twin_traverse(Twin *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->owner);
    Py_VISIT(self->cls);
    Py_VISIT(self->reference);
    return 0;
}

static int twin_clear(Twin *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->cls);
    Py_CLEAR(self->reference);
    return 0;
}

typedef struct {
    const char *name;
    twin_fn function;
    Py_ssize_t nargs;
} twin_def;

/* The twins of ``defs`` for ``cls``, each with the reference cls.reference_<name>. */
static int make_twins(conn_state *st, PyObject *owner, PyObject *cls, const twin_def *defs,
                      int count, PyObject **twins)
{
    for (int i = 0; i < count; i++) {
        PyObject *reference = PyObject_GetAttrString(cls, defs[i].name);
        if (reference == NULL)
            return -1;
        Twin *twin = PyObject_GC_New(Twin, st->twin_type);
        if (twin == NULL) {
            Py_DECREF(reference);
            return -1;
        }
        twin->owner = Py_NewRef(owner);
        twin->cls = Py_NewRef(cls);
        twin->reference = reference;
        twin->function = defs[i].function;
        twin->nargs = defs[i].nargs;
        twin->vectorcall = twin_vectorcall;
        PyObject_GC_Track(twin);
        twins[i] = (PyObject *)twin;
    }
    return 0;
}

static void twin_dealloc(Twin *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    twin_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef twin_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Twin, vectorcall), READONLY, NULL},
    {"reference", T_OBJECT, offsetof(Twin, reference), READONLY, NULL},
    {NULL},
};

static PyType_Slot twin_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, twin_get},
    {Py_tp_traverse, twin_traverse},
    {Py_tp_clear, twin_clear},
    {Py_tp_dealloc, twin_dealloc},
    {Py_tp_members, twin_members},
    {Py_tp_doc, "An HttpConnection method with a compiled path for its common case."},
    {0, NULL},
};

static PyType_Spec twin_spec = {
    .name = "shardserve.shard.http._conn.Twin",
    .basicsize = sizeof(Twin),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = twin_slots,
};

/* ConnTwins ------------------------------------------------------------------------- */

static const twin_def CONN_TWINS[4] = {
    {"reference_data_received", twin_data_received, 1},
    {"reference_on_request", twin_on_request, 5},
    {"reference_on_request_end", twin_on_request_end, 0},
    {"reference_response_done", twin_response_done, 1},
};

static PyObject *twins_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *connection_class, *cycle_class, *counters_class, *parse_error, *request_scope,
        *account, *perf_counter;
    static char *keywords[] = {"connection_class", "cycle_class",   "counters_class",
                               "parse_error",      "request_scope", "account",
                               "perf_counter",     NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOO:ConnTwins", keywords,
                                     &connection_class, &cycle_class, &counters_class,
                                     &parse_error, &request_scope, &account, &perf_counter))
        return NULL;
    if (!PyExceptionClass_Check(parse_error) || !PyCallable_Check(request_scope) ||
        !PyCallable_Check(account) || !PyCallable_Check(perf_counter)) {
        PyErr_SetString(PyExc_TypeError, "ConnTwins: a bad exception class or callable");
        return NULL;
    }
    conn_state *st = state_of(type);
#define NAME(name) st->name,
    PyObject *conn_names[N_CONN] = {CONN_SLOTS(NAME)};
    PyObject *cycle_names[N_CYCLE] = {CYCLE_SLOTS(NAME)};
    PyObject *counter_names[N_COUNTER] = {COUNTER_SLOTS(NAME)};
#undef NAME
    ConnTwins *self = (ConnTwins *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->parse_error = Py_NewRef(parse_error);
    self->request_scope = Py_NewRef(request_scope);
    self->account = Py_NewRef(account);
    self->perf_counter = Py_NewRef(perf_counter);
    if (find_slots(&self->conn, connection_class, conn_names, N_CONN) < 0 ||
        find_slots(&self->cycle, cycle_class, cycle_names, N_CYCLE) < 0 ||
        find_slots(&self->counters, counters_class, counter_names, N_COUNTER) < 0)
        goto error;
    if (make_twins(st, (PyObject *)self, connection_class, CONN_TWINS, 4, self->twins) < 0)
        goto error;
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static int twins_traverse(ConnTwins *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->conn.type);
    Py_VISIT(self->cycle.type);
    Py_VISIT(self->counters.type);
    Py_VISIT(self->parse_error);
    Py_VISIT(self->request_scope);
    Py_VISIT(self->account);
    Py_VISIT(self->perf_counter);
    for (int i = 0; i < 4; i++)
        Py_VISIT(self->twins[i]);
    return 0;
}

static int twins_clear(ConnTwins *self)
{
    Py_CLEAR(self->conn.type);
    Py_CLEAR(self->cycle.type);
    Py_CLEAR(self->counters.type);
    Py_CLEAR(self->parse_error);
    Py_CLEAR(self->request_scope);
    Py_CLEAR(self->account);
    Py_CLEAR(self->perf_counter);
    for (int i = 0; i < 4; i++)
        Py_CLEAR(self->twins[i]);
    return 0;
}

static void twins_dealloc(ConnTwins *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    twins_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef twins_members[] = {
    {"data_received", T_OBJECT, offsetof(ConnTwins, twins[0]), READONLY, NULL},
    {"on_request", T_OBJECT, offsetof(ConnTwins, twins[1]), READONLY, NULL},
    {"on_request_end", T_OBJECT, offsetof(ConnTwins, twins[2]), READONLY, NULL},
    {"response_done", T_OBJECT, offsetof(ConnTwins, twins[3]), READONLY, NULL},
    {NULL},
};

static PyType_Slot twins_slots[] = {
    {Py_tp_new, twins_new},
    {Py_tp_traverse, twins_traverse},
    {Py_tp_clear, twins_clear},
    {Py_tp_dealloc, twins_dealloc},
    {Py_tp_members, twins_members},
    {Py_tp_doc, "ConnTwins(connection_class, cycle_class, counters_class, parse_error, "
                "request_scope, account, perf_counter): compiled twins of the "
                "connection's per-request methods."},
    {0, NULL},
};

static PyType_Spec twins_spec = {
    .name = "shardserve.shard.http._conn.ConnTwins",
    .basicsize = sizeof(ConnTwins),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = twins_slots,
};

/* ParserTwins ----------------------------------------------------------------------- */

static const twin_def PARSER_TWINS[5] = {
    {"reference_feed", twin_feed, 1},
    {"reference_on_url", twin_on_url, 1},
    {"reference_on_header", twin_on_header, 2},
    {"reference_on_headers_complete", twin_on_headers_complete, 0},
    {"reference_on_message_complete", twin_on_message_complete, 0},
};

static PyObject *parser_twins_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *parser_class, *globals, *interned_methods;
    static char *keywords[] = {"parser_class", "globals", "interned_methods", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!O!:ParserTwins", keywords, &parser_class,
                                     &PyDict_Type, &globals, &PyDict_Type, &interned_methods))
        return NULL;
    conn_state *st = state_of(type);
#define NAME(name) st->name,
    PyObject *parser_names[N_PARSER] = {PARSER_SLOTS(NAME) st->parser};
#undef NAME
    ParserTwins *self = (ParserTwins *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->globals = Py_NewRef(globals);
    self->interned_methods = Py_NewRef(interned_methods);
    if (find_slots(&self->parser, parser_class, parser_names, N_PARSER) < 0 ||
        make_twins(st, (PyObject *)self, parser_class, PARSER_TWINS, 5, self->twins) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int parser_twins_traverse(ParserTwins *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->parser.type);
    Py_VISIT(self->globals);
    Py_VISIT(self->interned_methods);
    for (int i = 0; i < 5; i++)
        Py_VISIT(self->twins[i]);
    return 0;
}

static int parser_twins_clear(ParserTwins *self)
{
    Py_CLEAR(self->parser.type);
    Py_CLEAR(self->globals);
    Py_CLEAR(self->interned_methods);
    for (int i = 0; i < 5; i++)
        Py_CLEAR(self->twins[i]);
    return 0;
}

static void parser_twins_dealloc(ParserTwins *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    parser_twins_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef parser_twins_members[] = {
    {"feed", T_OBJECT, offsetof(ParserTwins, twins[0]), READONLY, NULL},
    {"on_url", T_OBJECT, offsetof(ParserTwins, twins[1]), READONLY, NULL},
    {"on_header", T_OBJECT, offsetof(ParserTwins, twins[2]), READONLY, NULL},
    {"on_headers_complete", T_OBJECT, offsetof(ParserTwins, twins[3]), READONLY, NULL},
    {"on_message_complete", T_OBJECT, offsetof(ParserTwins, twins[4]), READONLY, NULL},
    {NULL},
};

static PyType_Slot parser_twins_slots[] = {
    {Py_tp_new, parser_twins_new},
    {Py_tp_traverse, parser_twins_traverse},
    {Py_tp_clear, parser_twins_clear},
    {Py_tp_dealloc, parser_twins_dealloc},
    {Py_tp_members, parser_twins_members},
    {Py_tp_doc, "ParserTwins(parser_class, globals, interned_methods): compiled twins of "
                "HttptoolsParser's llhttp callbacks."},
    {0, NULL},
};

static PyType_Spec parser_twins_spec = {
    .name = "shardserve.shard.http._conn.ParserTwins",
    .basicsize = sizeof(ParserTwins),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = parser_twins_slots,
};

/* PythonParser.feed ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    slot_table parser;
    PyObject *globals; /* parser_python's: split_fast and check_host are looked up there */
    PyObject *twins[1];
} PythonTwins;

#define PYP(obj, name) (*(PyObject **)((char *)(obj) + py->parser.offsets[Q_##name]))

/* A global of the parser's module (borrowed), or NULL with an error. */
static PyObject *global(PyObject *globals, PyObject *name)
{
    PyObject *value = PyDict_GetItemWithError(globals, name);
    if (value == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_NameError, "name %R is not defined", name);
    return value;
}

/* feed(data): one whole request head, without a body, that is all the read holds,
 * while nothing is buffered: an HTTP/1.1 GET-like request on a keep-alive connection.
 * The head is split by split_fast (the compiled splitter, or the reference), as the
 * reference splits it; anything it does not leave plain (framing fields, Connection,
 * Upgrade, CONNECT, HTTP/1.0, no Host) is the reference's. */
static PyObject *twin_python_feed(conn_state *st, PyObject *owner, PyObject *self,
                                  PyObject *const *args, Py_ssize_t nargs)
{
    PythonTwins *py = (PythonTwins *)owner;
    PyObject *data = args[0];
    PyObject *buf = PYP(self, buf), *limits = PYP(self, limits), *sink = PYP(self, sink);
    if (!PyBytes_CheckExact(data) || buf == NULL || !PyBytes_CheckExact(buf) ||
        PyBytes_GET_SIZE(buf) != 0 || !is_small(PYP(self, state), 0) ||
        !is_small(PYP(self, scanned), 0) || PYP(self, line_seen) != Py_False ||
        PYP(self, upgrade) != Py_False || limits == NULL || sink == NULL ||
        PYP(self, on_request_end) == NULL)
        return NULL;
    const char *text = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < 4 || text[0] == '\r' || memcmp(text + size - 4, "\r\n\r\n", 4) != 0)
        return NULL;
    for (const char *cr = text; (cr = memchr(cr, '\r', size - 4 - (cr - text))) != NULL; cr++)
        if (memcmp(cr, "\r\n\r\n", 4) == 0)
            return NULL; /* (a head ends before the read does: a body, or more heads) */
    Py_ssize_t request_line = int_attr(&st->c_request_line, limits, st->request_line);
    Py_ssize_t field_size = int_attr(&st->c_field_size, limits, st->field_size);
    Py_ssize_t fields = int_attr(&st->c_fields, limits, st->fields);
    PyObject *split = PyDict_GetItemWithError(py->globals, st->split_fast);
    if (request_line < 0 || field_size < 0 || fields < 0 || split == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *head = PyBytes_FromStringAndSize(text, size - 4);
    if (head == NULL)
        return NULL;
    PyObject *numbers[3] = {PyLong_FromSsize_t(request_line), PyLong_FromSsize_t(field_size),
                            PyLong_FromSsize_t(fields)};
    PyObject *result = NULL;
    if (numbers[0] != NULL && numbers[1] != NULL && numbers[2] != NULL) {
        PyObject *call[4] = {head, numbers[0], numbers[1], numbers[2]};
        Py_INCREF(split);
        result = PyObject_Vectorcall(split, call, 4, NULL);
        Py_DECREF(split);
    }
    Py_DECREF(head);
    for (int i = 0; i < 3; i++)
        Py_XDECREF(numbers[i]);
    if (result == NULL)
        return PyErr_Occurred() ? NULL : PyErr_NoMemory(); /* (a ParseError, as the reference) */
    /* (method, target, http_version, headers, host, content_length, transfer_encoding,
     *  connection, upgrade) */
    PyObject *method, *version, *host;
    if (!PyTuple_CheckExact(result) || PyTuple_GET_SIZE(result) != 9 ||
        !PyUnicode_CheckExact(method = PyTuple_GET_ITEM(result, 0)) ||
        PyUnicode_CompareWithASCIIString(method, "CONNECT") == 0 ||
        !PyUnicode_CheckExact(version = PyTuple_GET_ITEM(result, 2)) ||
        PyUnicode_CompareWithASCIIString(version, "1.1") != 0 ||
        !PyBytes_CheckExact(host = PyTuple_GET_ITEM(result, 4)) ||
        PyTuple_GET_ITEM(result, 5) != Py_None || PyTuple_GET_ITEM(result, 6) != Py_None ||
        PyTuple_GET_ITEM(result, 7) != Py_None || PyTuple_GET_ITEM(result, 8) != Py_False) {
        Py_DECREF(result); /* (None too: a head the compiled splitter leaves) */
        return NULL;
    }

    /* Taken: as the reference's _head, then the request's end. */
    Py_INCREF(sink);
    PyObject *last = PYP(self, last_host);
    int same = last != NULL && PyBytes_CheckExact(last) &&
               PyBytes_GET_SIZE(last) == PyBytes_GET_SIZE(host) &&
               memcmp(PyBytes_AS_STRING(last), PyBytes_AS_STRING(host), PyBytes_GET_SIZE(host)) == 0;
    PyObject *done = NULL;
    if (!same) {
        PyObject *check_host = global(py->globals, st->check_host);
        Py_XINCREF(check_host);
        PyObject *checked = check_host == NULL ? NULL : PyObject_CallOneArg(check_host, host);
        Py_XDECREF(check_host);
        if (checked == NULL)
            goto finish;
        Py_DECREF(checked);
        store(&PYP(self, last_host), host);
    }
    store(&PYP(self, upgrade), Py_False);
    PyObject *call[6] = {sink, method, PyTuple_GET_ITEM(result, 1), version,
                         PyTuple_GET_ITEM(result, 3), Py_True};
    done = call_twin(st, st->on_request, call, 6);
    if (done == NULL)
        goto finish;
    Py_DECREF(done);
    PyObject *request_end = PYP(self, on_request_end);
    if (request_end == NULL) {
        done = unset("on_request_end");
        goto finish;
    }
    Py_INCREF(request_end);
    done = PyObject_CallNoArgs(request_end);
    Py_DECREF(request_end);
    if (done == NULL)
        goto finish;
    Py_DECREF(done);
    PyObject *state = st->small[0];
    if (PYP(self, upgrade) != Py_False) { /* (not from here: the reference's way on) */
        PyObject *call2[3] = {self, data, NULL};
        call2[2] = PyLong_FromSsize_t(size);
        done = call2[2] == NULL ? NULL
                                : PyObject_VectorcallMethod(st->_switch, call2, 3, NULL);
        Py_XDECREF(call2[2]);
        if (done == NULL)
            goto finish;
        state = done;
    }
    else
        Py_INCREF(state);
    store(&PYP(self, state), state);
    Py_DECREF(state);
    store(&PYP(self, buf), st->empty);
    done = Py_NewRef(Py_None);
finish:
    Py_DECREF(sink);
    Py_DECREF(result);
    return done;
}

static const twin_def PYTHON_TWINS[1] = {
    {"reference_feed", twin_python_feed, 1},
};

static PyObject *python_twins_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *parser_class, *globals;
    static char *keywords[] = {"parser_class", "globals", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!:PythonTwins", keywords, &parser_class,
                                     &PyDict_Type, &globals))
        return NULL;
    conn_state *st = state_of(type);
#define NAME(name) st->name,
    PyObject *names[N_PYTHON] = {PYTHON_SLOTS(NAME) st->sink, st->limits, st->state,
                                 st->last_host};
#undef NAME
    PythonTwins *self = (PythonTwins *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->globals = Py_NewRef(globals);
    if (find_slots(&self->parser, parser_class, names, N_PYTHON) < 0 ||
        make_twins(st, (PyObject *)self, parser_class, PYTHON_TWINS, 1, self->twins) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int python_twins_traverse(PythonTwins *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->parser.type);
    Py_VISIT(self->globals);
    Py_VISIT(self->twins[0]);
    return 0;
}

static int python_twins_clear(PythonTwins *self)
{
    Py_CLEAR(self->parser.type);
    Py_CLEAR(self->globals);
    Py_CLEAR(self->twins[0]);
    return 0;
}

static void python_twins_dealloc(PythonTwins *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    python_twins_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef python_twins_members[] = {
    {"feed", T_OBJECT, offsetof(PythonTwins, twins[0]), READONLY, NULL},
    {NULL},
};

static PyType_Slot python_twins_slots[] = {
    {Py_tp_new, python_twins_new},
    {Py_tp_traverse, python_twins_traverse},
    {Py_tp_clear, python_twins_clear},
    {Py_tp_dealloc, python_twins_dealloc},
    {Py_tp_members, python_twins_members},
    {Py_tp_doc, "PythonTwins(parser_class, globals): a compiled twin of PythonParser.feed "
                "for a read holding one whole request head without a body."},
    {0, NULL},
};

static PyType_Spec python_twins_spec = {
    .name = "shardserve.shard.http._conn.PythonTwins",
    .basicsize = sizeof(PythonTwins),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = python_twins_slots,
};

/* The module ------------------------------------------------------------------------- */

static int conn_exec(PyObject *module)
{
    conn_state *st = PyModule_GetState(module);
#define INTERN(name)                                                                       \
    if ((st->name = PyUnicode_InternFromString(#name)) == NULL)                            \
        return -1;
    NAMES(INTERN)
#undef INTERN
    if ((st->empty = PyBytes_FromStringAndSize("", 0)) == NULL ||
        (st->http11 = PyUnicode_InternFromString("1.1")) == NULL)
        return -1;
    for (int i = 0; i < 3; i++)
        if ((st->small[i] = PyLong_FromLong(i)) == NULL)
            return -1;
    st->bound_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &bound_spec, NULL);
    if (st->bound_type == NULL)
        return -1;
    st->twin_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &twin_spec, NULL);
    if (st->twin_type == NULL)
        return -1;
    st->twins_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &twins_spec, NULL);
    if (st->twins_type == NULL || PyModule_AddType(module, st->twins_type) < 0)
        return -1;
    st->parser_twins_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &parser_twins_spec, NULL);
    if (st->parser_twins_type == NULL || PyModule_AddType(module, st->parser_twins_type) < 0)
        return -1;
    st->python_twins_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &python_twins_spec, NULL);
    if (st->python_twins_type == NULL)
        return -1;
    return PyModule_AddType(module, st->python_twins_type);
}

static int conn_traverse(PyObject *module, visitproc visit, void *arg)
{
    conn_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define VISIT(name) Py_VISIT(st->name);
    NAMES(VISIT)
#undef VISIT
    Py_VISIT(st->empty);
    Py_VISIT(st->http11);
    Py_VISIT(st->parser_twins_type);
    Py_VISIT(st->python_twins_type);
    for (int i = 0; i < 3; i++)
        Py_VISIT(st->small[i]);
    Py_VISIT(st->bound_type);
    Py_VISIT(st->twin_type);
    Py_VISIT(st->twins_type);
    return 0;
}

static int conn_clear(PyObject *module)
{
    conn_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define CLEAR(name) Py_CLEAR(st->name);
    NAMES(CLEAR)
#undef CLEAR
    Py_CLEAR(st->empty);
    Py_CLEAR(st->http11);
    Py_CLEAR(st->parser_twins_type);
    Py_CLEAR(st->python_twins_type);
    for (int i = 0; i < 3; i++)
        Py_CLEAR(st->small[i]);
    Py_CLEAR(st->bound_type);
    Py_CLEAR(st->twin_type);
    Py_CLEAR(st->twins_type);
    return 0;
}

static void conn_free(void *module)
{
    conn_clear((PyObject *)module);
}

static PyModuleDef_Slot conn_slots[] = {TWIN_MODULE_SLOTS(conn_exec)};

static struct PyModuleDef conn_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shardserve.shard.http._conn",
    .m_doc = "Compiled twins of HttpConnection's per-request methods.",
    .m_size = sizeof(conn_state),
    .m_slots = conn_slots,
    .m_traverse = conn_traverse,
    .m_clear = conn_clear,
    .m_free = conn_free,
};

PyMODINIT_FUNC PyInit__conn(void)
{
    return PyModuleDef_Init(&conn_module);
}
