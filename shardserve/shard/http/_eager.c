/* The compiled twin of eager.py's _HostTask.start (Python 3.11), for the common case:
 * the connection's host task exists and is not being cancelled.
 *
 * Starter(host, enter_task, leave_task) is a callable bound to one _HostTask.  Called
 * with a request's coroutine it runs the coroutine's first step as the reference does
 * (in a copy of the current context, with the host entered as the loop's current task)
 * but through PyIter_Send, so that a coroutine that finishes at once (nearly every
 * request) raises no StopIteration, and with no Python frame of its own.  What the
 * reference does after the step, other than returning None for a request finished with
 * the host untouched, is the reference's: host._retire() for a host that must not be
 * shared any more, host.suspended(...) for a coroutine that waits.  With no host task
 * or a host being cancelled it calls host.start(coro), the reference itself.
 *
 * Multi-phase initialisation, heap types and module state only, like the other twins
 * (it is used on 3.11 only: 3.12+ has eager tasks in asyncio).  tests/test_eager.py
 * runs against it and against the reference; CI runs valgrind over those tests.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_twins.h"

#define NAMES(X) X(task) X(loop) X(start) X(cancelling) X(_retire) X(suspended)

typedef struct {
#define FIELD(name) PyObject *name;
    NAMES(FIELD)
#undef FIELD
    PyTypeObject *starter_type;
    attr_cache c_task;
} eager_state;

typedef struct {
    PyObject_HEAD
    PyObject *host;  /* the connection's _HostTask */
    PyObject *loop;  /* its loop */
    PyObject *enter; /* asyncio.tasks._enter_task */
    PyObject *leave; /* asyncio.tasks._leave_task */
    vectorcallfunc vectorcall;
} Starter;

static inline eager_state *state_of(PyTypeObject *type)
{
    return (eager_state *)PyType_GetModuleState(type);
}

/* task.cancelling(): 0 or more, or -1 with an error. */
static Py_ssize_t cancelling(eager_state *st, PyObject *task)
{
    PyObject *result = call_method(st->cancelling, &task, 1);
    if (result == NULL)
        return -1;
    Py_ssize_t count = PyLong_AsSsize_t(result);
    Py_DECREF(result);
    return count;
}

/* Enter the host, run one step of ``coro`` in ``context``, leave the host.  The
 * outcome of PyIter_Send, or PYGEN_ERROR where entering or leaving failed. */
static PySendResult first_step(Starter *self, PyObject *task, PyObject *coro, PyObject *context,
                               PyObject **yielded)
{
    PyObject *args[2] = {self->loop, task};
    PyObject *entered = PyObject_Vectorcall(self->enter, args, 2, NULL);
    if (entered == NULL)
        return PYGEN_ERROR;
    Py_DECREF(entered);
    PySendResult outcome = PYGEN_ERROR;
    *yielded = NULL;
    if (PyContext_Enter(context) == 0) {
        outcome = PyIter_Send(coro, Py_None, yielded);
        if (PyContext_Exit(context) < 0 && outcome != PYGEN_ERROR) {
            Py_CLEAR(*yielded);
            outcome = PYGEN_ERROR;
        }
    }
    /* The reference leaves in a ``finally``: the step's error waits while the host is
     * left, and an error in leaving replaces it. */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *left = PyObject_Vectorcall(self->leave, args, 2, NULL);
    if (left == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        Py_CLEAR(*yielded);
        return PYGEN_ERROR;
    }
    Py_DECREF(left);
    PyErr_Restore(type, value, traceback);
    return outcome;
}

static PyObject *starter_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames)
{
    Starter *self = (Starter *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "start() takes exactly one argument, the coroutine");
        return NULL;
    }
    eager_state *st = state_of(Py_TYPE(self));
    PyObject *coro = args[0];
    PyObject *task = get_attr(&st->c_task, self->host, st->task);
    if (task == NULL)
        return NULL;
    Py_ssize_t count = task == Py_None ? 1 : cancelling(st, task);
    if (count != 0) { /* no host, a host being cancelled, or an error: the reference */
        Py_DECREF(task);
        if (count < 0)
            return NULL;
        return PyObject_CallMethodOneArg(self->host, st->start, coro);
    }
    PyObject *context = PyContext_CopyCurrent();
    if (context == NULL) {
        Py_DECREF(task);
        return NULL;
    }
    Py_ssize_t references = Py_REFCNT(task);
    PyObject *yielded;
    PySendResult outcome = first_step(self, task, coro, context, &yielded);
    PyObject *result = NULL;
    if (outcome == PYGEN_RETURN) {
        Py_DECREF(yielded); /* (the coroutine's return value) */
        /* Finished: keep the host unless the request kept a reference to its task
         * or asked to cancel it (then nobody may share it). */
        count = Py_REFCNT(task) > references ? 1 : cancelling(st, task);
        if (count > 0)
            result = PyObject_CallMethodNoArgs(self->host, st->_retire);
        else if (count == 0)
            result = Py_NewRef(Py_None);
        if (result != NULL) {
            Py_DECREF(result);
            result = Py_NewRef(Py_None);
        }
    }
    else if (outcome == PYGEN_NEXT) {
        PyObject *call[5] = {self->host, task, coro, context, yielded};
        result = PyObject_VectorcallMethod(st->suspended, call, 5, NULL);
        Py_DECREF(yielded);
    }
    Py_DECREF(context);
    Py_DECREF(task);
    return result;
}

static PyObject *starter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *host, *enter, *leave;
    static char *keywords[] = {"host", "enter_task", "leave_task", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:Starter", keywords, &host, &enter,
                                     &leave))
        return NULL;
    if (!PyCallable_Check(enter) || !PyCallable_Check(leave)) {
        PyErr_SetString(PyExc_TypeError, "enter_task and leave_task must be callable");
        return NULL;
    }
    PyObject *loop = PyObject_GetAttr(host, state_of(type)->loop);
    if (loop == NULL)
        return NULL;
    Starter *self = (Starter *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(loop);
        return NULL;
    }
    self->host = Py_NewRef(host);
    self->loop = loop;
    self->enter = Py_NewRef(enter);
    self->leave = Py_NewRef(leave);
    self->vectorcall = starter_vectorcall;
    return (PyObject *)self;
}

static int starter_traverse(Starter *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->host);
    Py_VISIT(self->loop);
    Py_VISIT(self->enter);
    Py_VISIT(self->leave);
    return 0;
}

static int starter_clear(Starter *self)
{
    Py_CLEAR(self->host);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->enter);
    Py_CLEAR(self->leave);
    return 0;
}

static void starter_dealloc(Starter *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    starter_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyMemberDef starter_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Starter, vectorcall), READONLY, NULL},
    {"host", T_OBJECT, offsetof(Starter, host), READONLY, NULL},
    {NULL},
};

static PyType_Slot starter_slots[] = {
    {Py_tp_new, starter_new},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, starter_traverse},
    {Py_tp_clear, starter_clear},
    {Py_tp_dealloc, starter_dealloc},
    {Py_tp_members, starter_members},
    {Py_tp_doc, "Starter(host, enter_task, leave_task): _HostTask.start with a compiled "
                "path for a first step on an idle host."},
    {0, NULL},
};

static PyType_Spec starter_spec = {
    .name = "shardserve.shard.http._eager.Starter",
    .basicsize = sizeof(Starter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = starter_slots,
};

/* The module ----------------------------------------------------------------------- */

static int eager_exec(PyObject *module)
{
    eager_state *st = PyModule_GetState(module);
#define INTERN(name)                                                                       \
    if ((st->name = PyUnicode_InternFromString(#name)) == NULL)                            \
        return -1;
    NAMES(INTERN)
#undef INTERN
    st->starter_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &starter_spec, NULL);
    if (st->starter_type == NULL)
        return -1;
    return PyModule_AddType(module, st->starter_type);
}

static int eager_traverse(PyObject *module, visitproc visit, void *arg)
{
    eager_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define VISIT(name) Py_VISIT(st->name);
    NAMES(VISIT)
#undef VISIT
    Py_VISIT(st->starter_type);
    return 0;
}

static int eager_clear(PyObject *module)
{
    eager_state *st = PyModule_GetState(module);
    if (st == NULL)
        return 0;
#define CLEAR(name) Py_CLEAR(st->name);
    NAMES(CLEAR)
#undef CLEAR
    Py_CLEAR(st->starter_type);
    return 0;
}

static void eager_free(void *module)
{
    eager_clear((PyObject *)module);
}

static PyModuleDef_Slot eager_slots[] = {TWIN_MODULE_SLOTS(eager_exec)};

static struct PyModuleDef eager_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shardserve.shard.http._eager",
    .m_doc = "The compiled twin of eager.py's _HostTask.start (Python 3.11).",
    .m_size = sizeof(eager_state),
    .m_slots = eager_slots,
    .m_traverse = eager_traverse,
    .m_clear = eager_clear,
    .m_free = eager_free,
};

PyMODINIT_FUNC PyInit__eager(void)
{
    return PyModuleDef_Init(&eager_module);
}
