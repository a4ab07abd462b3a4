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

/* Attributes read or written by name, fast where the name is a __slots__ member: what
 * CPython's own specialised LOAD_ATTR_SLOT does.  The first access through a cache
 * finds the member descriptor on the object's class and notes the class's version tag
 * and the member's offset; later accesses to objects whose class has that tag (the
 * same class, unchanged since: CPython zeroes a class's tag when anything in it or its
 * bases changes, and never gives a tag to two classes of one interpreter) take the
 * slot at that offset.  Anything else (another class, a class changed since, a
 * __getattribute__ of its own, an empty slot) goes through PyObject_GetAttr or
 * PyObject_SetAttr, which also raise the errors.  One cache per name in each module's
 * state (per interpreter); no cache where there is no GIL to guard it. */
typedef struct {
    unsigned int version; /* 0: nothing cached */
    int writable;         /* the class sets attributes the generic way too */
    Py_ssize_t offset;
} attr_cache;

static inline void attr_cache_learn(attr_cache *cache, PyTypeObject *type, PyObject *name)
{
#ifndef Py_GIL_DISABLED
    cache->version = 0;
    if (type->tp_getattro != PyObject_GenericGetAttr)
        return;
    PyObject *descr = _PyType_Lookup(type, name); /* (borrowed; gives the class a tag) */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
        return;
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type == T_OBJECT_EX && type->tp_version_tag != 0) {
        cache->offset = member->offset;
        cache->writable =
            type->tp_setattro == PyObject_GenericSetAttr && !(member->flags & READONLY);
        cache->version = type->tp_version_tag;
    }
#endif
}

/* The object's slot for the cached name, or NULL when the cache does not apply. */
static inline PyObject **cached_slot(attr_cache *cache, PyObject *obj)
{
    if (cache->version == 0 || Py_TYPE(obj)->tp_version_tag != cache->version)
        return NULL;
    return (PyObject **)((char *)obj + cache->offset);
}

/* getattr(obj, name): a new reference, or NULL with an error set. */
static inline PyObject *get_attr(attr_cache *cache, PyObject *obj, PyObject *name)
{
    PyObject **slot = cached_slot(cache, obj);
    if (slot != NULL && *slot != NULL)
        return Py_NewRef(*slot);
    attr_cache_learn(cache, Py_TYPE(obj), name);
    return PyObject_GetAttr(obj, name);
}

/* setattr(obj, name, value): 0, or -1 with an error set. */
static inline int set_attr(attr_cache *cache, PyObject *obj, PyObject *name, PyObject *value)
{
    PyObject **slot = cached_slot(cache, obj);
    if (slot != NULL && cache->writable) {
        PyObject *old = *slot;
        *slot = Py_NewRef(value);
        Py_XDECREF(old);
        return 0;
    }
    attr_cache_learn(cache, Py_TYPE(obj), name);
    return PyObject_SetAttr(obj, name, value);
}

/* args[0].name(*args[1:]), as PyObject_VectorcallMethod calls it, without looking the
 * name up twice: where the object has no __dict__ to shadow the class and the class
 * finds attributes the generic way, a method descriptor found on the class is called
 * with args[0] as self. */
static inline PyObject *call_method(PyObject *name, PyObject *const *args, Py_ssize_t nargs)
{
    PyTypeObject *type = Py_TYPE(args[0]);
    if (type->tp_dictoffset == 0 && type->tp_getattro == PyObject_GenericGetAttr) {
        PyObject *method = _PyType_Lookup(type, name); /* (borrowed) */
        if (method != NULL &&
            PyType_HasFeature(Py_TYPE(method), Py_TPFLAGS_METHOD_DESCRIPTOR)) {
            Py_INCREF(method);
            PyObject *result = PyObject_Vectorcall(method, args, nargs, NULL);
            Py_DECREF(method);
            return result;
        }
    }
    return PyObject_VectorcallMethod(name, args, nargs, NULL);
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
