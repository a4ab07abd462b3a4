/* The compiled twin of the read method loop.py's LeanSocketTransport registers for a
 * plain (not buffered) protocol: CPython's _SelectorSocketTransport
 * ._read_ready__data_received, the reference, which runs when this module is not built.
 *
 * read_ready(transport) is called by the loop when the socket is readable (the
 * transport registers it with itself as the argument).  It does what the reference
 * does, in its order: nothing once the connection is lost; one recv(); nothing if the
 * socket had nothing after all (EAGAIN, EINTR); on an error, transport._fatal_error
 * with the OSError (the same subclass: ConnectionResetError...) and the reference's
 * message; on end of file, transport._read_ready__on_eof(); else
 * protocol.data_received(data), any exception from it (but SystemExit and
 * KeyboardInterrupt, which propagate) going to transport._fatal_error.  Each read
 * takes at most READ_SIZE bytes (the reference: max_size, 256 KiB; more waiting is
 * read when the loop comes round again), into a buffer on the stack, so that the
 * bytes object made is only as large as what arrived.
 *
 * Multi-phase initialisation and module state only, like the other twins: it loads in
 * own-GIL subinterpreters.  tests/test_lean_transport.py runs against it and the
 * reference; CI runs valgrind over those tests.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sys/socket.h>

#include "_twins.h"

#define READ_SIZE 65536

#define NAMES(X)                                                                           \
    X(_conn_lost) X(_sock_fd) X(_protocol) X(data_received) X(_fatal_error)                \
    X(_read_ready__on_eof)

typedef struct {
#define FIELD(name) PyObject *name;
    NAMES(FIELD)
#undef FIELD
    PyObject *read_error;    /* the reference's messages */
    PyObject *protocol_error;
} transport_state;

#if PY_VERSION_HEX < 0x030C0000
/* (3.12's PyErr_GetRaisedException) */
static PyObject *PyErr_GetRaisedException(void)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}
#endif

/* transport._fatal_error(exception, message), the exception taken from the error
 * indicator.  NULL (the error set) or a new reference to its result. */
static PyObject *fatal_error(transport_state *st, PyObject *transport, PyObject *message)
{
    PyObject *exception = PyErr_GetRaisedException();
    PyObject *result = PyObject_VectorcallMethod(
        st->_fatal_error, (PyObject *[]){transport, exception, message},
        3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(exception);
    return result;
}

static PyObject *read_ready(PyObject *module, PyObject *transport)
{
    transport_state *st = PyModule_GetState(module);
    PyObject *attributes = PyObject_GenericGetDict(transport, NULL);
    if (attributes == NULL)
        return NULL;
    PyObject *result = NULL;
    PyObject *lost = PyDict_GetItemWithError(attributes, st->_conn_lost);
    PyObject *fd = lost == NULL ? NULL : PyDict_GetItemWithError(attributes, st->_sock_fd);
    PyObject *protocol =
        fd == NULL ? NULL : PyDict_GetItemWithError(attributes, st->_protocol);
    if (protocol == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "not a socket transport");
        goto done;
    }
    int is_lost = PyObject_IsTrue(lost);
    if (is_lost != 0) {
        result = is_lost < 0 ? NULL : Py_NewRef(Py_None);
        goto done;
    }
    long descriptor = PyLong_AsLong(fd);
    if (descriptor == -1 && PyErr_Occurred())
        goto done;
    char buffer[READ_SIZE];
    ssize_t n = recv((int)descriptor, buffer, READ_SIZE, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        PyErr_SetFromErrno(PyExc_OSError);
        result = fatal_error(st, transport, st->read_error);
        goto done;
    }
    if (n == 0) {
        result = PyObject_VectorcallMethod(st->_read_ready__on_eof, &transport,
                                           1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        goto done;
    }
    PyObject *data = PyBytes_FromStringAndSize(buffer, n);
    if (data == NULL)
        goto done;
    Py_INCREF(protocol); /* (held through the call: it may replace itself) */
    result = PyObject_VectorcallMethod(st->data_received, (PyObject *[]){protocol, data},
                                       2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(protocol);
    Py_DECREF(data);
    if (result == NULL && !PyErr_ExceptionMatches(PyExc_SystemExit) &&
        !PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        result = fatal_error(st, transport, st->protocol_error);
done:
    Py_DECREF(attributes);
    if (result == NULL)
        return NULL;
    Py_DECREF(result); /* (None, as the reference returns, whatever the calls returned) */
    Py_RETURN_NONE;
}

static PyMethodDef transport_methods[] = {
    {"read_ready", read_ready, METH_O,
     "Read what the socket has and hand it to the protocol (a transport's read method)."},
    {NULL},
};

static int transport_exec(PyObject *module)
{
    transport_state *st = PyModule_GetState(module);
#define INTERN(name)                                                                       \
    if ((st->name = PyUnicode_InternFromString(#name)) == NULL)                            \
        return -1;
    NAMES(INTERN)
#undef INTERN
    st->read_error = PyUnicode_FromString("Fatal read error on socket transport");
    st->protocol_error =
        PyUnicode_FromString("Fatal error: protocol.data_received() call failed.");
    if (st->read_error == NULL || st->protocol_error == NULL)
        return -1;
    return PyModule_AddIntConstant(module, "READ_SIZE", READ_SIZE);
}

static int transport_traverse(PyObject *module, visitproc visit, void *arg)
{
    transport_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define VISIT(name) Py_VISIT(st->name);
    NAMES(VISIT)
#undef VISIT
    Py_VISIT(st->read_error);
    Py_VISIT(st->protocol_error);
    return 0;
}

static int transport_clear(PyObject *module)
{
    transport_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define CLEAR(name) Py_CLEAR(st->name);
    NAMES(CLEAR)
#undef CLEAR
    Py_CLEAR(st->read_error);
    Py_CLEAR(st->protocol_error);
    return 0;
}

static void transport_free(void *module)
{
    transport_clear((PyObject *)module);
}

static PyModuleDef_Slot transport_slots[] = {TWIN_MODULE_SLOTS(transport_exec)};

static struct PyModuleDef transport_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shardserve.shard.http._transport",
    .m_doc = "The compiled twin of LeanSocketTransport's read method (shard/loop.py).",
    .m_size = sizeof(transport_state),
    .m_methods = transport_methods,
    .m_slots = transport_slots,
    .m_traverse = transport_traverse,
    .m_clear = transport_clear,
    .m_free = transport_free,
};

PyMODINIT_FUNC PyInit__transport(void)
{
    return PyModuleDef_Init(&transport_module);
}
