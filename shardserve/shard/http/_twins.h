/* What the compiled twins share (_send.c, _conn.c; the module slots: all of them).
 * Header-only, static: each module still builds, or fails to build, on its own.
 *
 * Twins reach the __slots__ of the classes they mirror at the offsets the classes'
 * member descriptors use, found once when a twin is made (never changed after:
 * nothing to race on where there is no GIL). */

#ifndef SHARDSERVE_TWINS_H
#define SHARDSERVE_TWINS_H

#include <Python.h>
#include <limits.h>
#include <structmember.h>

#define MAX_SLOTS 24

/* Offsets of one class's slots. */
typedef struct {
    PyObject *type; /* the class they belong to (objects of others: the reference) */
    Py_ssize_t offsets[MAX_SLOTS];
} slot_table;

/* Find the offsets of ``names`` in ``type``: 0 when each is a writable object slot
 * (a member descriptor), else -1 with a TypeError. */
static inline int find_slots(slot_table *table, PyObject *type, PyObject **names, int count)
{
    if (!PyType_Check(type)) {
        PyErr_Format(PyExc_TypeError, "%R is not a class", type);
        return -1;
    }
    if (count > MAX_SLOTS) {
        PyErr_SetString(PyExc_SystemError, "find_slots: more slots than MAX_SLOTS");
        return -1;
    }
    for (int i = 0; i < count; i++) {
        PyObject *descr = PyObject_GetAttr(type, names[i]);
        if (descr == NULL) {
            PyErr_Clear();
            descr = Py_NewRef(Py_None);
        }
        int plain = Py_IS_TYPE(descr, &PyMemberDescr_Type);
        if (plain) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            plain = member->type == T_OBJECT_EX && !(member->flags & READONLY);
            table->offsets[i] = member->offset;
        }
        Py_DECREF(descr);
        if (!plain) {
            PyErr_Format(PyExc_TypeError, "%R does not keep %R in __slots__", type, names[i]);
            return -1;
        }
    }
    table->type = Py_NewRef(type);
    return 0;
}

/* Store a new reference in a slot (what the member descriptor's setter does). */
static inline void store(PyObject **slot, PyObject *value)
{
    PyObject *old = *slot;
    *slot = Py_NewRef(value);
    Py_XDECREF(old);
}

#define NOT_INT LONG_MIN

/* The value of an exact int that fits a long, else NOT_INT (then not taken). */
static inline long small_int(PyObject *value)
{
    if (value == NULL || !PyLong_CheckExact(value))
        return NOT_INT;
    int overflow;
    long result = PyLong_AsLongAndOverflow(value, &overflow);
    if (overflow || (result == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return NOT_INT;
    }
    return result;
}

/* Every twin module: multi-phase initialisation, loads in own-GIL subinterpreters,
 * needs no GIL of its own (free-threaded builds). */
#if PY_VERSION_HEX >= 0x030D0000
#define TWIN_MODULE_SLOTS(exec)                                                            \
    {Py_mod_exec, exec},                                                                   \
        {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},              \
        {Py_mod_gil, Py_MOD_GIL_NOT_USED}, {0, NULL}
#elif PY_VERSION_HEX >= 0x030C0000
#define TWIN_MODULE_SLOTS(exec)                                                            \
    {Py_mod_exec, exec},                                                                   \
        {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED}, {0, NULL}
#else
#define TWIN_MODULE_SLOTS(exec) {Py_mod_exec, exec}, {0, NULL}
#endif

#endif
