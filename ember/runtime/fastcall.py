"""A tiny CPython extension that calls a model's ``ember_main`` with less overhead than ctypes.

Through ctypes, a call spends most of its time outside the model: ``ndarray.ctypes.data``
(about a microsecond per array) and ctypes' argument conversion. The shim takes the arrays
themselves, reads each one's data pointer in C, drops the GIL and calls the entry point.

It is built once per Python version from the C below (needs Python.h and a C compiler)
and cached next to compiled models. When it cannot be built or loaded, ``load()`` returns
None and the runtime keeps using ctypes; ``EMBER_NO_FASTCALL=1`` forces that path.

    call(fn, dims, ins, outs, consts, ws) -> int
        fn, dims, consts, ws: addresses (ints); ins, outs: tuples or lists whose items are
        numpy arrays (C-contiguous) or addresses. Returns ember_main's code, or
        -1000 - k when item k of ins (k >= 0) is an array that is not C-contiguous.

    Runner(fn, consts, in_types, in_ranks, out_types) -> runner
        The whole numpy call in C for the shapes seen last: ``runner(arrays)`` checks types,
        dtypes (numpy type numbers), contiguity and shapes, allocates the outputs, calls the
        entry point and returns the list of outputs; it returns None (and does nothing) when
        anything differs from what it was primed with, or when another thread is inside it,
        and the caller takes the general path. ``runner.prime(shapes, dims, out_shapes, ws,
        keep)`` sets those shapes: ``dims`` and ``ws`` are addresses that ``keep`` keeps alive.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

from . import cache

SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

typedef int (*ember_main_t)(const int64_t *, void *const *, void *const *, void *const *, char *);

static int pointer_of(PyObject *o, void **out) {
  if (Py_TYPE(o) == &PyArray_Type) {
    if (!PyArray_IS_C_CONTIGUOUS((PyArrayObject *)o)) return 1;
    *out = PyArray_DATA((PyArrayObject *)o);
    return 0;
  }
  if (PyLong_Check(o)) {
    *out = PyLong_AsVoidPtr(o);
    return PyErr_Occurred() ? -1 : 0;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(o, &view, PyBUF_C_CONTIGUOUS) != 0) return -1;
  *out = view.buf;
  PyBuffer_Release(&view);
  return 0;
}

static int fill(PyObject *seq, void **ptrs, Py_ssize_t cap, Py_ssize_t *n, const char *what) {
  PyObject *fast = PySequence_Fast(seq, what);
  if (!fast) return -1;
  Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
  if (len > cap) { Py_DECREF(fast); PyErr_Format(PyExc_ValueError, "too many %s", what); return -1; }
  PyObject **items = PySequence_Fast_ITEMS(fast);
  for (Py_ssize_t k = 0; k < len; k++) {
    int r = pointer_of(items[k], &ptrs[k]);
    if (r != 0) { Py_DECREF(fast); return r < 0 ? -1 : (int)(2 + k); }
  }
  *n = len;
  Py_DECREF(fast);
  return 0;
}

#define CAP 256
static PyObject *call(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 6) { PyErr_SetString(PyExc_TypeError, "call takes 6 arguments"); return NULL; }
  void *fn = PyLong_AsVoidPtr(args[0]), *dims = PyLong_AsVoidPtr(args[1]);
  void *consts = PyLong_AsVoidPtr(args[4]), *ws = PyLong_AsVoidPtr(args[5]);
  if (PyErr_Occurred()) return NULL;
  void *ins[CAP], *outs[CAP];
  Py_ssize_t nin = 0, nout = 0;
  int r = fill(args[2], ins, CAP, &nin, "inputs");
  if (r < 0) return NULL;
  if (r > 0) return PyLong_FromLong(-1000 - (r - 2));
  r = fill(args[3], outs, CAP, &nout, "outputs");
  if (r < 0) return NULL;
  if (r > 0) { PyErr_SetString(PyExc_ValueError, "output array is not C-contiguous"); return NULL; }
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = ((ember_main_t)fn)((const int64_t *)dims, ins, outs, (void *const *)consts, (char *)ws);
  Py_END_ALLOW_THREADS
  return PyLong_FromLong(rc);
}

/* -- Runner: one model's numpy call, entirely in C, for the last shapes seen */
#define RMAX 16    /* inputs / outputs */
#define RRANK 8    /* dims per tensor */
typedef struct {
  PyObject_HEAD
  ember_main_t fn; void *consts;
  int nin, nout, primed, busy;
  int in_type[RMAX], in_rank[RMAX], out_type[RMAX], out_rank[RMAX];
  npy_intp in_shape[RMAX][RRANK], out_shape[RMAX][RRANK];
  void *dims, *ws;
  PyObject *keep;
} Runner;

static void runner_dealloc(Runner *r) { Py_XDECREF(r->keep); Py_TYPE(r)->tp_free((PyObject *)r); }

static int int_tuple(PyObject *t, int *out, int n, const char *what) {
  if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != n) {
    PyErr_Format(PyExc_ValueError, "%s: expected a tuple of %d ints", what, n); return -1; }
  for (int k = 0; k < n; k++) {
    long v = PyLong_AsLong(PyTuple_GET_ITEM(t, k));
    if (v == -1 && PyErr_Occurred()) return -1;
    out[k] = (int)v;
  }
  return 0;
}

static PyObject *runner_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  PyObject *fn, *consts, *in_types, *in_ranks, *out_types;
  if (!PyArg_ParseTuple(args, "OOOOO", &fn, &consts, &in_types, &in_ranks, &out_types)) return NULL;
  Py_ssize_t nin = PyTuple_Check(in_types) ? PyTuple_GET_SIZE(in_types) : -1;
  Py_ssize_t nout = PyTuple_Check(out_types) ? PyTuple_GET_SIZE(out_types) : -1;
  if (nin < 0 || nout < 0 || nin > RMAX || nout > RMAX) {
    PyErr_SetString(PyExc_ValueError, "Runner: too many inputs or outputs"); return NULL; }
  Runner *r = (Runner *)type->tp_alloc(type, 0);
  if (!r) return NULL;
  r->fn = (ember_main_t)PyLong_AsVoidPtr(fn); r->consts = PyLong_AsVoidPtr(consts);
  r->nin = (int)nin; r->nout = (int)nout;
  if (PyErr_Occurred() || int_tuple(in_types, r->in_type, r->nin, "in_types") ||
      int_tuple(in_ranks, r->in_rank, r->nin, "in_ranks") ||
      int_tuple(out_types, r->out_type, r->nout, "out_types")) { Py_DECREF(r); return NULL; }
  for (int k = 0; k < r->nin; k++)
    if (r->in_rank[k] > RRANK) { Py_DECREF(r); PyErr_SetString(PyExc_ValueError, "Runner: rank too high"); return NULL; }
  return (PyObject *)r;
}

static int shape_tuple(PyObject *t, npy_intp *out, int *rank) {
  if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) > RRANK) {
    PyErr_SetString(PyExc_ValueError, "Runner.prime: a shape is a tuple of at most 8 ints"); return -1; }
  *rank = (int)PyTuple_GET_SIZE(t);
  for (int d = 0; d < *rank; d++) {
    out[d] = (npy_intp)PyLong_AsSsize_t(PyTuple_GET_ITEM(t, d));
    if (out[d] == -1 && PyErr_Occurred()) return -1;
  }
  return 0;
}

static PyObject *runner_prime(Runner *r, PyObject *args) {
  PyObject *shapes, *dims, *outs, *ws, *keep;
  if (!PyArg_ParseTuple(args, "OOOOO", &shapes, &dims, &outs, &ws, &keep)) return NULL;
  if (r->busy) Py_RETURN_FALSE;
  if (!PyTuple_Check(shapes) || PyTuple_GET_SIZE(shapes) != r->nin || !PyTuple_Check(outs) ||
      PyTuple_GET_SIZE(outs) != r->nout) {
    PyErr_SetString(PyExc_ValueError, "Runner.prime: one shape per input and per output"); return NULL; }
  r->primed = 0;
  for (int k = 0; k < r->nin; k++) {
    int rank;
    if (shape_tuple(PyTuple_GET_ITEM(shapes, k), r->in_shape[k], &rank)) return NULL;
    if (rank != r->in_rank[k]) { PyErr_SetString(PyExc_ValueError, "Runner.prime: input rank"); return NULL; }
  }
  for (int k = 0; k < r->nout; k++)
    if (shape_tuple(PyTuple_GET_ITEM(outs, k), r->out_shape[k], &r->out_rank[k])) return NULL;
  r->dims = PyLong_AsVoidPtr(dims); r->ws = PyLong_AsVoidPtr(ws);
  if (PyErr_Occurred()) return NULL;
  Py_INCREF(keep); Py_XSETREF(r->keep, keep);
  r->primed = 1;
  Py_RETURN_TRUE;
}

static PyObject *runner_call(Runner *r, PyObject *args, PyObject *kw) {
  /* one positional argument: a tuple or list of arrays */
  if (!r->primed || r->busy || kw || PyTuple_GET_SIZE(args) != 1) Py_RETURN_NONE;
  PyObject *seq = PyTuple_GET_ITEM(args, 0);
  PyObject **items; Py_ssize_t n;
  if (PyTuple_Check(seq)) { items = &PyTuple_GET_ITEM(seq, 0); n = PyTuple_GET_SIZE(seq); }
  else if (PyList_Check(seq)) { items = PySequence_Fast_ITEMS(seq); n = PyList_GET_SIZE(seq); }
  else Py_RETURN_NONE;
  if (n != r->nin) Py_RETURN_NONE;
  void *ins[RMAX], *outs[RMAX];
  for (int k = 0; k < r->nin; k++) {
    PyObject *o = items[k];
    if (Py_TYPE(o) != &PyArray_Type) Py_RETURN_NONE;
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != r->in_type[k] || !PyArray_IS_C_CONTIGUOUS(a)) Py_RETURN_NONE;
    npy_intp *sh = PyArray_DIMS(a);
    for (int d = 0; d < r->in_rank[k]; d++) if (sh[d] != r->in_shape[k][d]) Py_RETURN_NONE;
    ins[k] = PyArray_DATA(a);
  }
  PyObject *result = PyList_New(r->nout);
  if (!result) return NULL;
  for (int k = 0; k < r->nout; k++) {
    PyObject *o = PyArray_SimpleNew(r->out_rank[k], r->out_shape[k], r->out_type[k]);
    if (!o) { Py_DECREF(result); return NULL; }
    PyList_SET_ITEM(result, k, o);
    outs[k] = PyArray_DATA((PyArrayObject *)o);
  }
  int rc;
  r->busy = 1;   /* the workspace is this runner's: other threads take the general path */
  Py_BEGIN_ALLOW_THREADS
  rc = r->fn((const int64_t *)r->dims, ins, outs, (void *const *)r->consts, (char *)r->ws);
  Py_END_ALLOW_THREADS
  r->busy = 0;
  if (rc != 0) { Py_DECREF(result); return PyErr_Format(PyExc_RuntimeError, "native model returned error code %d", rc); }
  return result;
}

static PyMethodDef runner_methods[] = {
  {"prime", (PyCFunction)runner_prime, METH_VARARGS, "set the shapes the fast path serves"},
  {NULL, NULL, 0, NULL}};

static PyTypeObject RunnerType = {
  PyVarObject_HEAD_INIT(NULL, 0)
  .tp_name = "_ember_fastcall.Runner", .tp_basicsize = sizeof(Runner),
  .tp_flags = Py_TPFLAGS_DEFAULT, .tp_new = runner_new, .tp_dealloc = (destructor)runner_dealloc,
  .tp_call = (ternaryfunc)runner_call, .tp_methods = runner_methods,
};

static PyMethodDef methods[] = {
  {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL, "call ember_main"},
  {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ember_fastcall", NULL, -1, methods};
PyMODINIT_FUNC PyInit__ember_fastcall(void) {
  import_array();
  if (PyType_Ready(&RunnerType) < 0) return NULL;
  PyObject *m = PyModule_Create(&module);
  if (!m) return NULL;
  Py_INCREF(&RunnerType);
  if (PyModule_AddObject(m, "Runner", (PyObject *)&RunnerType) < 0) { Py_DECREF(m); return NULL; }
  return m;
}
"""

_lock = threading.Lock()
_state: dict = {}


def _build() -> Path | None:
    include = sysconfig.get_paths().get("include")
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not include or not (Path(include) / "Python.h").exists() or not cc:
        return None
    try:
        import numpy as np
        np_include = np.get_include()
    except ImportError:
        return None
    tag = sysconfig.get_config_var("EXT_SUFFIX") or sys.version
    k = cache.key(SOURCE, tag, sys.version, cc, np.__version__)
    so = cache.entry(k, ".fastcall.so")
    if so.exists():
        return so
    with tempfile.TemporaryDirectory(prefix="ember-fastcall-") as tmp:
        src, out = Path(tmp) / "fastcall.c", Path(tmp) / "fastcall.so"
        src.write_text(SOURCE)
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", f"-I{include}", f"-I{np_include}", str(src), "-o", str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        cache.atomic_write(so, out.read_bytes())
    return so


def load():
    """The shim module, or None when it cannot be had here (then use ctypes)."""
    if os.environ.get("EMBER_NO_FASTCALL") == "1":
        return None
    with _lock:
        if "mod" not in _state:
            _state["mod"] = None
            try:
                so = _build()
                if so is not None:
                    loader = importlib.machinery.ExtensionFileLoader("_ember_fastcall", str(so))
                    spec = importlib.util.spec_from_file_location("_ember_fastcall", str(so), loader=loader)
                    mod = importlib.util.module_from_spec(spec)
                    loader.exec_module(mod)
                    _state["mod"] = mod
            except Exception:  # no compiler, no headers, an odd platform: ctypes still works
                _state["mod"] = None
        return _state["mod"]
