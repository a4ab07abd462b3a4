/* The compiled twin of cycle.py's RequestCycle.send, for the response nearly every
 * app sends: http.response.start with a Content-Length, then one http.response.body
 * that completes it.
 *
 * FastSend(reference, owner, connection_class, counters_class, status_lines, rendered,
 * close_line, socket_transport=None) is a descriptor put in place of RequestCycle.send:
 * ``cycle.send`` gives a bound sender.  Calling it with a message does what the
 * reference would (same bytes written, same attributes set on the cycle, the same
 * calls to the connection) when the message is one it takes, and returns an awaitable
 * that is already done.  For anything else (another
 * class, a paused or closed connection, a status or header not rendered before, no
 * Content-Length, HEAD, HTTP/1.0, a body that does not complete the response,
 * trailers, any error) it returns ``reference(cycle, message)``: the reference's own
 * coroutine, so every rule and every error message has one implementation, in Python.
 * Nothing is changed before it decides.
 *
 * A response for a transport of class socket_transport (loop.py's LeanSocketTransport)
 * is sent as that class's write would send it (send_now), without calling it.
 *
 * Header lines come from the reference's own cache (response.py's _rendered: header
 * tuple -> (line, kind, argument)), which only the reference fills: a header is
 * checked and rendered in Python the first time, and taken from the cache after.
 *
 * Multi-phase initialisation, heap types and module state only: it loads in every
 * interpreter, own-GIL subinterpreters included.  tests/test_fast_send.py holds it to
 * the reference; CI runs the HTTP suite with and without it, and valgrind over it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <sys/socket.h>

#include "_twins.h"

/* cycle.py's states. */
enum { NOT_STARTED = 0, HEAD_PENDING = 1, STREAMING = 2, COMPLETE = 3 };
enum { BODY_MORE = 0 };
/* response.py's header kinds. */
enum { PLAIN = 0, CONTENT_LENGTH = 1 };
/* The reference writes a head and a body this large or larger in two writes. */
#define ONE_WRITE_LIMIT 65536

/* The __slots__ read and written, of RequestCycle, HttpConnection and ShardCounters.
 * They are reached at their offsets, as their member descriptors reach them: found
 * once, when the FastSend is made, to be plain object slots of the classes it is
 * given; objects of any other class (a subclass too) go to the reference. */
#define CYCLE_SLOTS(X)                                                                     \
    X(conn) X(state) X(scope) X(keep_alive) X(status) X(head) X(no_body) X(chunked)       \
    X(remaining) X(request) X(waiter)
#define CONN_SLOTS(X) X(write_paused) X(closed) X(draining) X(transport) X(counters)
#define COUNTER_SLOTS(X) X(bytes_out)
#define ENUMERATE(name) S_##name,
enum { CYCLE_SLOTS(ENUMERATE) N_CYCLE };
enum { CONN_SLOTS(ENUMERATE) N_CONN };
enum { COUNTER_SLOTS(ENUMERATE) N_COUNTER };
#undef ENUMERATE

/* Other names: attributes, methods and message keys. */
#define NAMES(X)                                                                           \
    CYCLE_SLOTS(X) CONN_SLOTS(X) COUNTER_SLOTS(X) X(default_headers) X(write) X(wake)      \
    X(response_done) X(type) X(headers) X(body) X(more_body) X(method) X(http_version)     \
    TRANSPORT_NAMES(X)
/* LeanSocketTransport's attributes (loop.py), read in send_now as its write reads them. */
#define TRANSPORT_NAMES(X) X(_buffer) X(_conn_lost) X(_eof) X(_empty_waiter) X(_sock_fd)

typedef struct {
#define FIELD(name) PyObject *name;
    NAMES(FIELD)
#undef FIELD
    PyObject *crlf;  /* b"\r\n" */
    PyObject *empty; /* b"" */
    PyObject *done;  /* the one Done object */
    PyTypeObject *done_type;
    PyTypeObject *fast_type;
    PyTypeObject *bound_type;
    attr_cache c_state, c_default_headers;
} send_state;


/* FastSend: the descriptor. */
typedef struct {
    PyObject_HEAD
    PyObject *reference;    /* the Python send(cycle, message) */
    PyObject *status_lines; /* dict: int -> status line */
    PyObject *rendered;     /* dict: header tuple -> (line, kind, argument) */
    PyObject *close_line;   /* b"connection: close\r\n" */
    slot_table cycle;       /* of the one class taken fast (not its subclasses) */
    slot_table conn;        /* of its connection class (HttpConnection) */
    slot_table counters;    /* of the counters class (ShardCounters) */
    PyTypeObject *socket_transport; /* loop.py's LeanSocketTransport, or NULL */
} FastSend;

/* A sender bound to one cycle. */
typedef struct {
    PyObject_HEAD
    FastSend *fast;
    PyObject *cycle;
    vectorcallfunc vectorcall;
} BoundSend;

#define SLOT(obj, table, name) (*(PyObject **)((char *)(obj) + (table).offsets[S_##name]))

static inline send_state *state_of(PyTypeObject *type)
{
    return (send_state *)PyType_GetModuleState(type);
}

/* An exact str equal to an ASCII literal. */
static int is_text(PyObject *value, const char *text)
{
    return value != NULL && PyUnicode_CheckExact(value) &&
           PyUnicode_CompareWithASCIIString(value, text) == 0;
}

/* Borrowed dict item, or NULL (the error, if any, cleared). */
static PyObject *item(PyObject *dict, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(dict, key);
    if (value == NULL)
        PyErr_Clear();
    return value;
}

/* Whether a slot holds True (1), False (0) or anything else (-1: not taken). */
static inline int boolean(PyObject *value)
{
    return value == Py_True ? 1 : value == Py_False ? 0 : -1;
}

/* http.response.start, as the reference's _start would take it.
 * 1: done; 0: not taken (nothing changed); -1: error raised. */
static int fast_start(send_state *st, FastSend *fast, PyObject *cycle, PyObject *conn,
                      slot_table *cn, PyObject *message)
{
    PyObject *status = item(message, st->status);
    long code = small_int(status);
    if (code < 200 || code == 204 || code == 304)
        return 0; /* (not an int, or a status that never has a body) */
    PyObject *status_line = item(fast->status_lines, status);
    if (status_line == NULL)
        return 0;
    PyObject *headers = item(message, st->headers);
    Py_ssize_t count = 0;
    if (headers != NULL) {
        if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers))
            return 0;
        count = PySequence_Fast_GET_SIZE(headers);
    }
    PyObject *scope = SLOT(cycle, fast->cycle, scope);
    if (scope == NULL || !PyDict_CheckExact(scope) ||
        !is_text(item(scope, st->http_version), "1.1"))
        return 0;
    PyObject *method = item(scope, st->method);
    if (method == NULL || !PyUnicode_CheckExact(method) || is_text(method, "HEAD"))
        return 0;
    int keep_alive = boolean(SLOT(cycle, fast->cycle, keep_alive));
    int draining = boolean(SLOT(conn, *cn, draining));
    if (keep_alive < 0 || draining < 0)
        return 0;
    keep_alive = keep_alive && !draining;

    /* status line, defaults, the app's lines, maybe close, CRLF */
    PyObject *defaults = NULL;
    PyObject *content_length = NULL; /* borrowed from the cache entry (see below) */
    PyObject *lines = PyList_New(2);
    if (lines == NULL)
        return -1;
    PyList_SET_ITEM(lines, 0, Py_NewRef(status_line));
    PyObject *conn_state = get_attr(&st->c_state, conn, st->state);
    if (conn_state == NULL)
        goto not_taken;
    defaults = get_attr(&st->c_default_headers, conn_state, st->default_headers);
    Py_DECREF(conn_state);
    if (defaults == NULL)
        goto not_taken;
    PyList_SET_ITEM(lines, 1, defaults);
    for (Py_ssize_t i = 0; i < count; i++) {
        /* Pairs of bytes only: hashing them runs no Python code, so nothing borrowed
         * here (the headers, the message's items, the cache's entries) can change or
         * go before it is used or stored. */
        PyObject *header = PySequence_Fast_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(header) || PyTuple_GET_SIZE(header) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(header, 0)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(header, 1)))
            goto not_taken;
        PyObject *entry = item(fast->rendered, header);
        if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
            goto not_taken;
        long kind = small_int(PyTuple_GET_ITEM(entry, 1));
        if (kind == CONTENT_LENGTH)
            content_length = PyTuple_GET_ITEM(entry, 2);
        else if (kind != PLAIN)
            goto not_taken; /* Transfer-Encoding, Connection, Server, Date */
        if (PyList_Append(lines, PyTuple_GET_ITEM(entry, 0)) < 0)
            goto error;
    }
    if (content_length == NULL || !PyLong_CheckExact(content_length))
        goto not_taken;
    if (!keep_alive && PyList_Append(lines, fast->close_line) < 0)
        goto error;
    if (PyList_Append(lines, st->crlf) < 0)
        goto error;

    /* Taken: set what the reference's _start sets.  (Held: a value a slot held
     * before may run code when it goes.) */
    Py_INCREF(content_length);
    Py_INCREF(status);
    store(&SLOT(cycle, fast->cycle, no_body), Py_False);
    store(&SLOT(cycle, fast->cycle, chunked), Py_False);
    store(&SLOT(cycle, fast->cycle, remaining), content_length);
    store(&SLOT(cycle, fast->cycle, keep_alive), keep_alive ? Py_True : Py_False);
    store(&SLOT(cycle, fast->cycle, status), status);
    store(&SLOT(cycle, fast->cycle, head), lines);
    Py_DECREF(content_length);
    Py_DECREF(status);
    Py_DECREF(lines);
    PyObject *pending = PyLong_FromLong(HEAD_PENDING);
    if (pending == NULL)
        return -1;
    store(&SLOT(cycle, fast->cycle, state), pending);
    Py_DECREF(pending);
    return 1;

not_taken:
    PyErr_Clear();
    Py_DECREF(lines);
    return 0;
error:
    Py_DECREF(lines);
    return -1;
}

/* LeanSocketTransport.write's own fast case (loop.py), without its Python frame:
 * when the transport has nothing buffered and is open, one send(2) on its socket.
 * Returns the bytes sent (0 if the transport must take them all: not open, data
 * buffered, the socket full, any error, which its write meets again and reports),
 * or -1 with an error set. */
static Py_ssize_t send_now(send_state *st, PyObject *transport, PyObject *data)
{
    PyObject *attributes = PyObject_GenericGetDict(transport, NULL);
    if (attributes == NULL)
        return -1;
    Py_ssize_t sent = 0;
    PyObject *buffer = item(attributes, st->_buffer);
    PyObject *fd = item(attributes, st->_sock_fd);
    if (buffer == NULL || fd == NULL || item(attributes, st->_eof) != Py_False ||
        item(attributes, st->_empty_waiter) != Py_None ||
        small_int(item(attributes, st->_conn_lost)) != 0)
        goto done;
    Py_ssize_t buffered = PyObject_Length(buffer);
    long descriptor = small_int(fd);
    if (buffered != 0 || descriptor < 0) {
        PyErr_Clear();
        goto done;
    }
    Py_ssize_t n = send((int)descriptor, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                        MSG_NOSIGNAL);
    sent = n < 0 ? 0 : n;
done:
    Py_DECREF(attributes);
    return sent;
}

/* conn.transport.write(data); conn.counters.bytes_out += len(data) */
static int write_counted(send_state *st, FastSend *fast, PyObject *conn, slot_table *cn,
                         PyObject *data)
{
    PyObject *transport = SLOT(conn, *cn, transport);
    PyObject *counters = SLOT(conn, *cn, counters);
    if (transport == NULL || counters == NULL) {
        PyErr_SetString(PyExc_AttributeError, "connection without transport or counters");
        return -1;
    }
    Py_INCREF(counters);
    Py_INCREF(transport); /* (held through the call: write may run any code) */
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    Py_ssize_t sent = Py_TYPE(transport) == fast->socket_transport
                          ? send_now(st, transport, data)
                          : 0;
    if (sent < length) {
        PyObject *rest = sent <= 0 ? Py_NewRef(data)
                                   : PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + sent,
                                                               length - sent);
        PyObject *written =
            rest == NULL || sent < 0 ? NULL
                                     : call_method(st->write, (PyObject *[]){transport, rest}, 2);
        Py_XDECREF(rest);
        if (written == NULL) {
            Py_DECREF(transport);
            Py_DECREF(counters);
            return -1;
        }
        Py_DECREF(written);
    }
    Py_DECREF(transport);
    slot_table *ct = &fast->counters; /* (its class checked before this was taken) */
    PyObject *total = SLOT(counters, *ct, bytes_out);
    if (total == NULL) {
        PyErr_SetString(PyExc_AttributeError, "counters without bytes_out");
        Py_DECREF(counters);
        return -1;
    }
    int result = -1;
    PyObject *size = PyLong_FromSsize_t(length);
    PyObject *sum = size == NULL ? NULL : PyNumber_Add(total, size);
    if (sum != NULL) {
        store(&SLOT(counters, *ct, bytes_out), sum);
        result = 0;
    }
    Py_XDECREF(sum);
    Py_XDECREF(size);
    Py_DECREF(counters);
    return result;
}

/* The one http.response.body of a response whose head is pending, completing its
 * Content-Length.  1: done; 0: not taken (nothing changed); -1: error raised. */
static int fast_body(send_state *st, FastSend *fast, PyObject *cycle, PyObject *conn,
                     slot_table *cn, PyObject *message)
{
    PyObject *body = item(message, st->body);
    if (body == NULL)
        body = st->empty;
    else if (!PyBytes_CheckExact(body))
        return 0;
    PyObject *more_body = item(message, st->more_body);
    if (more_body != NULL && more_body != Py_False)
        return 0;
    Py_ssize_t length = PyBytes_GET_SIZE(body);
    if (length >= ONE_WRITE_LIMIT)
        return 0;
    if (SLOT(cycle, fast->cycle, no_body) != Py_False ||
        SLOT(cycle, fast->cycle, chunked) != Py_False ||
        small_int(SLOT(cycle, fast->cycle, remaining)) != length)
        return 0;
    long request = small_int(SLOT(cycle, fast->cycle, request));
    if (request == NOT_INT)
        return 0;
    if (request == BODY_MORE && SLOT(cycle, fast->cycle, keep_alive) != Py_False)
        return 0; /* (the reference closes after this response: its _close_after) */
    PyObject *head = SLOT(cycle, fast->cycle, head);
    if (head == NULL || !PyList_CheckExact(head))
        return 0;
    Py_ssize_t size = length;
    Py_ssize_t parts = PyList_GET_SIZE(head);
    for (Py_ssize_t i = 0; i < parts; i++) {
        PyObject *part = PyList_GET_ITEM(head, i);
        if (!PyBytes_CheckExact(part))
            return 0;
        size += PyBytes_GET_SIZE(part);
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL)
        return -1;
    char *out = PyBytes_AS_STRING(data);
    for (Py_ssize_t i = 0; i < parts; i++) {
        PyObject *part = PyList_GET_ITEM(head, i);
        memcpy(out, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part));
        out += PyBytes_GET_SIZE(part);
    }
    memcpy(out, PyBytes_AS_STRING(body), length);

    /* Taken: what the reference's _write_body and _complete do, in their order. */
    int result = -1;
    PyObject *number = PyLong_FromLong(0);
    if (number == NULL)
        goto done;
    store(&SLOT(cycle, fast->cycle, remaining), number);
    Py_DECREF(number);
    if ((number = PyLong_FromLong(STREAMING)) == NULL)
        goto done;
    store(&SLOT(cycle, fast->cycle, state), number);
    Py_DECREF(number);
    store(&SLOT(cycle, fast->cycle, head), Py_None);
    if (write_counted(st, fast, conn, cn, data) < 0)
        goto done;
    if ((number = PyLong_FromLong(COMPLETE)) == NULL)
        goto done;
    store(&SLOT(cycle, fast->cycle, state), number);
    Py_DECREF(number);
    PyObject *waiter = SLOT(cycle, fast->cycle, waiter);
    if (waiter != NULL && waiter != Py_None) {
        PyObject *woken = PyObject_CallMethodNoArgs(cycle, st->wake);
        if (woken == NULL)
            goto done;
        Py_DECREF(woken);
    }
    PyObject *finished = call_method(st->response_done, (PyObject *[]){conn, cycle}, 2);
    if (finished == NULL)
        goto done;
    Py_DECREF(finished);
    result = 1;
done:
    Py_DECREF(data);
    return result;
}

/* Done: what a sender returns once it has done everything: awaiting it ends at once. */

static PyObject *done_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *done_next(PyObject *self)
{
    return NULL; /* (no error set: StopIteration, value None) */
}

static void done_dealloc(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free(self);
    Py_DECREF(type);
}

static PyType_Slot done_slots[] = {
    {Py_am_await, done_await},
    {Py_tp_iter, done_await},
    {Py_tp_iternext, done_next},
    {Py_tp_dealloc, done_dealloc},
    {Py_tp_doc, "An awaitable that is already done (a response sent in full)."},
    {0, NULL},
};

static PyType_Spec done_spec = {
    .name = "shardserve.shard.http._send.Done",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = done_slots,
};

/* BoundSend ---------------------------------------------------------------------- */

static PyObject *bound_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    BoundSend *self = (BoundSend *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "send() takes exactly one argument, the message");
        return NULL;
    }
    PyObject *message = args[0];
    PyObject *cycle = self->cycle;
    FastSend *fast = self->fast;
    if ((PyObject *)Py_TYPE(cycle) == fast->cycle.type && PyDict_CheckExact(message)) {
        send_state *st = state_of(Py_TYPE(self));
        PyObject *conn = SLOT(cycle, fast->cycle, conn);
        slot_table *cn = &fast->conn;
        PyObject *counters = NULL;
        if (conn != NULL && (PyObject *)Py_TYPE(conn) == cn->type)
            counters = SLOT(conn, *cn, counters);
        PyObject *type = item(message, st->type);
        if (counters != NULL && (PyObject *)Py_TYPE(counters) == fast->counters.type &&
            type != NULL && SLOT(conn, *cn, write_paused) == Py_False &&
            SLOT(conn, *cn, closed) == Py_False) {
            long state = small_int(SLOT(cycle, fast->cycle, state));
            int taken = 0;
            Py_INCREF(conn);
            if (state == HEAD_PENDING && is_text(type, "http.response.body"))
                taken = fast_body(st, fast, cycle, conn, cn, message);
            else if (state == NOT_STARTED && is_text(type, "http.response.start"))
                taken = fast_start(st, fast, cycle, conn, cn, message);
            Py_DECREF(conn);
            if (taken < 0)
                return NULL;
            if (taken)
                return Py_NewRef(st->done);
        }
    }
    PyObject *call[2] = {cycle, message};
    return PyObject_Vectorcall(fast->reference, call, 2, NULL);
}

static int bound_traverse(BoundSend *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->fast);
    Py_VISIT(self->cycle);
    return 0;
}

static int bound_clear(BoundSend *self)
{
    Py_CLEAR(self->fast);
    Py_CLEAR(self->cycle);
    return 0;
}

static void bound_dealloc(BoundSend *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    bound_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef bound_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(BoundSend, vectorcall), READONLY, NULL},
    {"__self__", T_OBJECT, offsetof(BoundSend, cycle), READONLY, NULL},
    {NULL},
};

static PyType_Slot bound_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, bound_traverse},
    {Py_tp_clear, bound_clear},
    {Py_tp_dealloc, bound_dealloc},
    {Py_tp_members, bound_members},
    {Py_tp_doc, "RequestCycle.send bound to one cycle."},
    {0, NULL},
};

static PyType_Spec bound_spec = {
    .name = "shardserve.shard.http._send.BoundSend",
    .basicsize = sizeof(BoundSend),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = bound_slots,
};

/* FastSend ----------------------------------------------------------------------- */

static PyObject *fast_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *reference, *owner, *connection_class, *counters_class, *status_lines, *rendered,
        *close_line, *socket_transport = Py_None;
    static char *keywords[] = {"reference",    "owner",    "connection_class", "counters_class",
                               "status_lines", "rendered", "close_line",       "socket_transport",
                               NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO!O!O!|O:FastSend", keywords, &reference,
                                     &owner, &connection_class, &counters_class, &PyDict_Type,
                                     &status_lines, &PyDict_Type, &rendered, &PyBytes_Type,
                                     &close_line, &socket_transport))
        return NULL;
    if (socket_transport != Py_None && !PyType_Check(socket_transport)) {
        PyErr_SetString(PyExc_TypeError, "socket_transport must be a class or None");
        return NULL;
    }
    send_state *st = state_of(type);
    PyObject *cycle_names[N_CYCLE] = {
#define NAME(name) st->name,
        CYCLE_SLOTS(NAME)};
    PyObject *conn_names[N_CONN] = {CONN_SLOTS(NAME)};
    PyObject *counter_names[N_COUNTER] = {COUNTER_SLOTS(NAME)};
#undef NAME
    FastSend *self = (FastSend *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->reference = Py_NewRef(reference);
    self->status_lines = Py_NewRef(status_lines);
    self->rendered = Py_NewRef(rendered);
    self->close_line = Py_NewRef(close_line);
    self->socket_transport =
        socket_transport == Py_None ? NULL : (PyTypeObject *)Py_NewRef(socket_transport);
    if (find_slots(&self->cycle, owner, cycle_names, N_CYCLE) < 0 ||
        find_slots(&self->conn, connection_class, conn_names, N_CONN) < 0 ||
        find_slots(&self->counters, counters_class, counter_names, N_COUNTER) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *fast_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    send_state *st = state_of(Py_TYPE(self));
    BoundSend *bound = PyObject_GC_New(BoundSend, st->bound_type);
    if (bound == NULL)
        return NULL;
    bound->fast = (FastSend *)Py_NewRef(self);
    bound->cycle = Py_NewRef(obj);
    bound->vectorcall = bound_vectorcall;
    PyObject_GC_Track(bound);
    return (PyObject *)bound;
}

static int fast_traverse(FastSend *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->reference);
    Py_VISIT(self->cycle.type);
    Py_VISIT(self->conn.type);
    Py_VISIT(self->counters.type);
    Py_VISIT(self->status_lines);
    Py_VISIT(self->rendered);
    Py_VISIT(self->close_line);
    Py_VISIT(self->socket_transport);
    return 0;
}

static int fast_clear(FastSend *self)
{
    Py_CLEAR(self->reference);
    Py_CLEAR(self->cycle.type);
    Py_CLEAR(self->conn.type);
    Py_CLEAR(self->counters.type);
    Py_CLEAR(self->status_lines);
    Py_CLEAR(self->rendered);
    Py_CLEAR(self->close_line);
    Py_CLEAR(self->socket_transport);
    return 0;
}

static void fast_dealloc(FastSend *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    fast_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef fast_members[] = {
    {"reference", T_OBJECT, offsetof(FastSend, reference), READONLY, NULL},
    {NULL},
};

static PyType_Slot fast_slots[] = {
    {Py_tp_new, fast_new},
    {Py_tp_descr_get, fast_get},
    {Py_tp_traverse, fast_traverse},
    {Py_tp_clear, fast_clear},
    {Py_tp_dealloc, fast_dealloc},
    {Py_tp_members, fast_members},
    {Py_tp_doc, "FastSend(reference, owner, connection_class, counters_class, status_lines, "
                "rendered, close_line): "
                "RequestCycle.send with a compiled path for the common response."},
    {0, NULL},
};

static PyType_Spec fast_spec = {
    .name = "shardserve.shard.http._send.FastSend",
    .basicsize = sizeof(FastSend),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = fast_slots,
};

/* The module ----------------------------------------------------------------------- */

static int send_exec(PyObject *module)
{
    send_state *st = PyModule_GetState(module);
#define INTERN(name)                                                                       \
    if ((st->name = PyUnicode_InternFromString(#name)) == NULL)                            \
        return -1;
    NAMES(INTERN)
#undef INTERN
    st->crlf = PyBytes_FromStringAndSize("\r\n", 2);
    st->empty = PyBytes_FromStringAndSize("", 0);
    if (st->crlf == NULL || st->empty == NULL)
        return -1;
    st->done_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &done_spec, NULL);
    if (st->done_type == NULL)
        return -1;
    st->done = PyType_GenericAlloc(st->done_type, 0);
    if (st->done == NULL)
        return -1;
    st->bound_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &bound_spec, NULL);
    if (st->bound_type == NULL)
        return -1;
    st->fast_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &fast_spec, NULL);
    if (st->fast_type == NULL)
        return -1;
    return PyModule_AddType(module, st->fast_type);
}

static int send_traverse(PyObject *module, visitproc visit, void *arg)
{
    send_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define VISIT(name) Py_VISIT(st->name);
    NAMES(VISIT)
#undef VISIT
    Py_VISIT(st->crlf);
    Py_VISIT(st->empty);
    Py_VISIT(st->done);
    Py_VISIT(st->done_type);
    Py_VISIT(st->bound_type);
    Py_VISIT(st->fast_type);
    return 0;
}

static int send_clear(PyObject *module)
{
    send_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define CLEAR(name) Py_CLEAR(st->name);
    NAMES(CLEAR)
#undef CLEAR
    Py_CLEAR(st->crlf);
    Py_CLEAR(st->empty);
    Py_CLEAR(st->done);
    Py_CLEAR(st->done_type);
    Py_CLEAR(st->bound_type);
    Py_CLEAR(st->fast_type);
    return 0;
}

static void send_free(void *module)
{
    send_clear((PyObject *)module);
}

static PyModuleDef_Slot send_slots[] = {TWIN_MODULE_SLOTS(send_exec)};

static struct PyModuleDef send_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shardserve.shard.http._send",
    .m_doc = "The compiled twin of cycle.py's RequestCycle.send, for the common response.",
    .m_size = sizeof(send_state),
    .m_slots = send_slots,
    .m_traverse = send_traverse,
    .m_clear = send_clear,
    .m_free = send_free,
};

PyMODINIT_FUNC PyInit__send(void)
{
    return PyModuleDef_Init(&send_module);
}
