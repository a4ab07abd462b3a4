/* The compiled twins of scope.py's two per-request functions, for the common case.
 *
 * Twins(reference_request_scope, reference_account, buckets, method_slots, other_slot,
 * perf_counter) holds the references; its ``request_scope`` and ``account`` take the
 * references' arguments and do what they do when they are sure to (below), and
 * otherwise call the reference with the same arguments: every rule (percent-decoding,
 * the 400 for a non-ASCII target, --root-path, proxy headers, the access log,
 * --limit-max-requests) has one implementation, in Python, and nothing is changed
 * before the choice is made.
 *
 * request_scope: no --root-path, a target path of ASCII without '%', a dict lifespan
 * state.  The scope is the template's copy with the request's items set, as the
 * reference builds it (same keys, same order, same objects).  On a connection whose
 * proxy headers are trusted, proxy.py's apply_proxy_headers then runs as in the
 * reference, unless no field is named in its PROXY_HEADERS (it would change nothing).
 *
 * account: no access log and no --limit-max-requests; an int status whose class's
 * slot exists, a float start time.  The latency bucket is bisect_left's; the elapsed
 * time is perf_counter()'s, as the reference reads it.
 *
 * Multi-phase initialisation, heap types and module state only: it loads in every
 * interpreter, own-GIL subinterpreters included.  tests/test_scope_twins.py holds it
 * to the references; CI runs the HTTP suite with and without it, and valgrind over it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

#include "_twins.h"

#define NAMES(X)                                                                           \
    X(root_path) X(lifespan_state) X(http_version) X(method) X(path) X(raw_path)           \
    X(query_string) X(headers) X(state) X(access_log) X(requests_left) X(counters)         \
    X(started) X(status) X(scope) X(latency) X(latency_sum) X(responses) X(trusted)

typedef struct {
#define FIELD(name) PyObject *name;
    NAMES(FIELD)
#undef FIELD
    PyObject *one;
    PyTypeObject *twins_type;
#define CACHE(name) attr_cache c_##name;
    NAMES(CACHE)
#undef CACHE
} scope_state;

typedef struct {
    PyObject_HEAD
    PyObject *reference_scope;
    PyObject *reference_account;
    PyObject *buckets; /* tuple of float upper bounds, ascending */
    PyObject *method_slots; /* dict: method -> the row's offset in responses */
    PyObject *other_slot;
    PyObject *perf_counter;
    PyObject *apply_proxy_headers;
    PyObject *proxy_headers; /* frozenset of the names apply_proxy_headers acts on */
} Twins;

static inline scope_state *state_of(PyObject *self)
{
    return (scope_state *)PyType_GetModuleState(Py_TYPE(self));
}

/* Attribute as a new reference, or NULL with the error cleared. */
static PyObject *get_or_clear(attr_cache *cache, PyObject *obj, PyObject *name)
{
    PyObject *value = get_attr(cache, obj, name);
    if (value == NULL)
        PyErr_Clear();
    return value;
}
#define attr(obj, name) get_or_clear(&st->c_##name, obj, st->name)

/* request_scope ------------------------------------------------------------------- */

/* Whether trusted proxy headers may change the scope: 1 if a field is named in
 * PROXY_HEADERS (or the fields are not a list of pairs), 0 if none is, -1 on error. */
static int names_proxy_header(Twins *self, PyObject *headers)
{
    if (!PyList_CheckExact(headers))
        return 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *field = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(field) || PyTuple_GET_SIZE(field) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(field, 0)))
            return 1; /* (then the reference decides; bytes hash without running code) */
        int found = PySet_Contains(self->proxy_headers, PyTuple_GET_ITEM(field, 0));
        if (found != 0)
            return found;
    }
    return 0;
}

/* The scope, 0 when the reference must build it, or -1 on error. */
static int fast_scope(Twins *self, scope_state *st, PyObject *const *args, PyObject **out)
{
    PyObject *template = args[0], *shard_state = args[1], *trusted = args[2],
             *method = args[3], *raw_path = args[4], *query = args[5], *version = args[6],
             *headers = args[7];
    if ((trusted != Py_False && trusted != Py_True) || !PyDict_CheckExact(template) ||
        !PyBytes_CheckExact(raw_path))
        return 0;
    Py_ssize_t length = PyBytes_GET_SIZE(raw_path);
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(raw_path);
    for (Py_ssize_t i = 0; i < length; i++) {
        if (bytes[i] >= 0x80 || bytes[i] == '%')
            return 0;
    }
    PyObject *root_path = attr(shard_state, root_path);
    int plain = root_path != NULL && PyUnicode_CheckExact(root_path) &&
                PyUnicode_GET_LENGTH(root_path) == 0;
    Py_XDECREF(root_path);
    if (!plain)
        return 0;
    PyObject *lifespan_state = attr(shard_state, lifespan_state);
    if (lifespan_state == NULL)
        return 0;
    if (!PyDict_CheckExact(lifespan_state)) {
        Py_DECREF(lifespan_state);
        return 0;
    }
    PyObject *path = NULL, *scope = NULL, *state = NULL;
    path = PyUnicode_DecodeASCII((const char *)bytes, length, NULL);
    state = PyDict_Copy(lifespan_state);
    Py_DECREF(lifespan_state);
    scope = path == NULL || state == NULL ? NULL : PyDict_Copy(template);
    if (scope == NULL || PyDict_SetItem(scope, st->http_version, version) < 0 ||
        PyDict_SetItem(scope, st->method, method) < 0 ||
        PyDict_SetItem(scope, st->path, path) < 0 ||
        PyDict_SetItem(scope, st->raw_path, raw_path) < 0 ||
        PyDict_SetItem(scope, st->query_string, query) < 0 ||
        PyDict_SetItem(scope, st->headers, headers) < 0 ||
        PyDict_SetItem(scope, st->state, state) < 0) {
        Py_XDECREF(path);
        Py_XDECREF(state);
        Py_XDECREF(scope);
        return -1;
    }
    Py_DECREF(path);
    Py_DECREF(state);
    if (trusted == Py_True) {
        int proxied = names_proxy_header(self, headers);
        PyObject *applied = NULL, *proxies = NULL;
        if (proxied > 0 && (proxies = get_attr(&st->c_trusted, shard_state, st->trusted)) != NULL)
            applied = PyObject_CallFunctionObjArgs(self->apply_proxy_headers, scope, headers,
                                                   proxies, NULL);
        Py_XDECREF(proxies);
        if (proxied < 0 || (proxied > 0 && applied == NULL)) {
            Py_DECREF(scope);
            return -1;
        }
        Py_XDECREF(applied);
    }
    *out = scope;
    return 1;
}

static PyObject *twins_request_scope(Twins *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs == 8) {
        PyObject *scope = NULL;
        int taken = fast_scope(self, state_of((PyObject *)self), args, &scope);
        if (taken < 0)
            return NULL;
        if (taken)
            return scope;
    }
    return PyObject_Vectorcall(self->reference_scope, args, nargs, NULL);
}

/* account ------------------------------------------------------------------------- */

/* Add one to list[index]. */
static int increment(scope_state *st, PyObject *list, Py_ssize_t index)
{
    PyObject *count = PyList_GET_ITEM(list, index);
    PyObject *more = PyNumber_Add(count, st->one);
    if (more == NULL)
        return -1;
    PyList_SET_ITEM(list, index, more);
    Py_DECREF(count);
    return 0;
}

/* 1: counted; 0: the reference must; -1: error. */
static int fast_account(Twins *self, scope_state *st, PyObject *shard_state, PyObject *cycle)
{
    int result = 0;
    PyObject *access_log = NULL, *left = NULL, *counters = NULL, *started = NULL,
             *status = NULL, *scope = NULL, *latency = NULL, *total = NULL,
             *responses = NULL, *now = NULL, *sum = NULL;
    access_log = attr(shard_state, access_log);
    left = attr(shard_state, requests_left);
    if (access_log != Py_False || left != Py_None)
        goto out;
    counters = attr(shard_state, counters);
    started = attr(cycle, started);
    status = attr(cycle, status);
    scope = attr(cycle, scope);
    if (counters == NULL || started == NULL || !PyFloat_CheckExact(started) ||
        status == NULL || !PyLong_CheckExact(status) || scope == NULL ||
        !PyDict_CheckExact(scope))
        goto out;
    latency = attr(counters, latency);
    total = attr(counters, latency_sum);
    responses = attr(counters, responses);
    if (latency == NULL || !PyList_CheckExact(latency) || total == NULL ||
        !PyFloat_CheckExact(total) || responses == NULL || !PyList_CheckExact(responses))
        goto out;
    /* The status class's slot. */
    PyObject *method = PyDict_GetItemWithError(scope, st->method);
    if (method == NULL || !PyUnicode_CheckExact(method)) {
        PyErr_Clear(); /* (a str hashes without running code: nothing borrowed goes) */
        goto out;
    }
    PyObject *row = PyDict_GetItemWithError(self->method_slots, method); /* (hashable str) */
    if (row == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            goto out;
        }
        row = self->other_slot;
    }
    int overflow;
    long code = PyLong_AsLongAndOverflow(status, &overflow);
    long offset = PyLong_AsLong(row);
    if (overflow || code < 0 || offset < 0 || PyErr_Occurred()) {
        PyErr_Clear();
        goto out;
    }
    Py_ssize_t slot = offset + code / 100;
    Py_ssize_t buckets = PyTuple_GET_SIZE(self->buckets);
    if (slot >= PyList_GET_SIZE(responses) || PyList_GET_SIZE(latency) != buckets + 1)
        goto out;

    /* Taken: count, as the reference does. */
    result = -1;
    now = PyObject_CallNoArgs(self->perf_counter);
    if (now == NULL || !PyFloat_CheckExact(now)) {
        if (now != NULL)
            PyErr_SetString(PyExc_TypeError, "perf_counter() did not return a float");
        goto out;
    }
    double elapsed = PyFloat_AS_DOUBLE(now) - PyFloat_AS_DOUBLE(started);
    Py_ssize_t bucket = 0; /* bisect_left: the first bound >= elapsed */
    while (bucket < buckets && PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(self->buckets, bucket)) < elapsed)
        bucket++;
    if (increment(st, latency, bucket) < 0)
        goto out;
    sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(total) + elapsed);
    if (sum == NULL || set_attr(&st->c_latency_sum, counters, st->latency_sum, sum) < 0)
        goto out;
    if (increment(st, responses, slot) < 0)
        goto out;
    result = 1;
out:
    Py_XDECREF(access_log);
    Py_XDECREF(left);
    Py_XDECREF(counters);
    Py_XDECREF(started);
    Py_XDECREF(status);
    Py_XDECREF(scope);
    Py_XDECREF(latency);
    Py_XDECREF(total);
    Py_XDECREF(responses);
    Py_XDECREF(now);
    Py_XDECREF(sum);
    return result;
}

static PyObject *twins_account(Twins *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs == 2) {
        int taken = fast_account(self, state_of((PyObject *)self), args[0], args[1]);
        if (taken < 0)
            return NULL;
        if (taken)
            Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(self->reference_account, args, nargs, NULL);
}

/* Twins --------------------------------------------------------------------------- */

static PyMethodDef twins_methods[] = {
    {"request_scope", (PyCFunction)(void (*)(void))twins_request_scope, METH_FASTCALL,
     "request_scope(template, state, trusted, method, raw_path, query, http_version, "
     "headers): scope.py's, compiled for the common case."},
    {"account", (PyCFunction)(void (*)(void))twins_account, METH_FASTCALL,
     "account(state, cycle): scope.py's, compiled for the common case."},
    {NULL},
};

static PyObject *twins_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *reference_scope, *reference_account, *buckets, *method_slots, *other_slot,
        *perf_counter, *apply_proxy_headers, *proxy_headers;
    static char *keywords[] = {"reference_request_scope", "reference_account", "buckets",
                               "method_slots", "other_slot", "perf_counter",
                               "apply_proxy_headers", "proxy_headers", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO!O!O!OOO!:Twins", keywords,
                                     &reference_scope, &reference_account, &PyTuple_Type,
                                     &buckets, &PyDict_Type, &method_slots, &PyLong_Type,
                                     &other_slot, &perf_counter, &apply_proxy_headers,
                                     &PyFrozenSet_Type, &proxy_headers))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(buckets); i++) {
        if (!PyFloat_CheckExact(PyTuple_GET_ITEM(buckets, i))) {
            PyErr_SetString(PyExc_TypeError, "buckets must be floats");
            return NULL;
        }
    }
    Twins *self = (Twins *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->reference_scope = Py_NewRef(reference_scope);
    self->reference_account = Py_NewRef(reference_account);
    self->buckets = Py_NewRef(buckets);
    self->method_slots = Py_NewRef(method_slots);
    self->other_slot = Py_NewRef(other_slot);
    self->perf_counter = Py_NewRef(perf_counter);
    self->apply_proxy_headers = Py_NewRef(apply_proxy_headers);
    self->proxy_headers = Py_NewRef(proxy_headers);
    return (PyObject *)self;
}

static int twins_traverse(Twins *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->reference_scope);
    Py_VISIT(self->reference_account);
    Py_VISIT(self->buckets);
    Py_VISIT(self->method_slots);
    Py_VISIT(self->other_slot);
    Py_VISIT(self->perf_counter);
    Py_VISIT(self->apply_proxy_headers);
    Py_VISIT(self->proxy_headers);
    return 0;
}

static int twins_clear(Twins *self)
{
    Py_CLEAR(self->reference_scope);
    Py_CLEAR(self->reference_account);
    Py_CLEAR(self->buckets);
    Py_CLEAR(self->method_slots);
    Py_CLEAR(self->other_slot);
    Py_CLEAR(self->perf_counter);
    Py_CLEAR(self->apply_proxy_headers);
    Py_CLEAR(self->proxy_headers);
    return 0;
}

static void twins_dealloc(Twins *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    twins_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyType_Slot twins_slots[] = {
    {Py_tp_new, twins_new},
    {Py_tp_methods, twins_methods},
    {Py_tp_traverse, twins_traverse},
    {Py_tp_clear, twins_clear},
    {Py_tp_dealloc, twins_dealloc},
    {Py_tp_doc, "Twins(reference_request_scope, reference_account, buckets, method_slots, "
                "other_slot, perf_counter, apply_proxy_headers, proxy_headers): scope.py's per-request functions, compiled "
                "for the common case."},
    {0, NULL},
};

static PyType_Spec twins_spec = {
    .name = "shardserve.shard.http._scope.Twins",
    .basicsize = sizeof(Twins),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = twins_slots,
};

/* The module ------------------------------------------------------------------------ */

static int scope_exec(PyObject *module)
{
    scope_state *st = PyModule_GetState(module);
#define INTERN(name)                                                                       \
    if ((st->name = PyUnicode_InternFromString(#name)) == NULL)                            \
        return -1;
    NAMES(INTERN)
#undef INTERN
    if ((st->one = PyLong_FromLong(1)) == NULL)
        return -1;
    st->twins_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &twins_spec, NULL);
    if (st->twins_type == NULL)
        return -1;
    return PyModule_AddType(module, st->twins_type);
}

static int scope_traverse(PyObject *module, visitproc visit, void *arg)
{
    scope_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define VISIT(name) Py_VISIT(st->name);
    NAMES(VISIT)
#undef VISIT
    Py_VISIT(st->one);
    Py_VISIT(st->twins_type);
    return 0;
}

static int scope_clear(PyObject *module)
{
    scope_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define CLEAR(name) Py_CLEAR(st->name);
    NAMES(CLEAR)
#undef CLEAR
    Py_CLEAR(st->one);
    Py_CLEAR(st->twins_type);
    return 0;
}

static void scope_free(void *module)
{
    scope_clear((PyObject *)module);
}

static PyModuleDef_Slot scope_slots[] = {TWIN_MODULE_SLOTS(scope_exec)};

static struct PyModuleDef scope_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shardserve.shard.http._scope",
    .m_doc = "The compiled twins of scope.py's request_scope and account.",
    .m_size = sizeof(scope_state),
    .m_slots = scope_slots,
    .m_traverse = scope_traverse,
    .m_clear = scope_clear,
    .m_free = scope_free,
};

PyMODINIT_FUNC PyInit__scope(void)
{
    return PyModuleDef_Init(&scope_module);
}
