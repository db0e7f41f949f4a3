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

typedef int (*ember_main_t)(const int64_t *, void *const *, void *const *, void *const *, char *);

static PyTypeObject *ndarray_type = NULL;

/* numpy's array object starts with PyObject_HEAD, then the data pointer, rank, dims,
   strides, base, descr, flags: a layout numpy has kept since 1.7, 2.x included. */
typedef struct { PyObject_HEAD char *data; int nd; Py_ssize_t *dims; Py_ssize_t *strides;
                 PyObject *base; PyObject *descr; int flags; } ember_ndarray;
#define EMBER_C_CONTIGUOUS 0x0001

static int pointer_of(PyObject *o, void **out) {
  if (Py_TYPE(o) == ndarray_type) {
    ember_ndarray *a = (ember_ndarray *)o;
    if (!(a->flags & EMBER_C_CONTIGUOUS)) return 1;
    *out = a->data;
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

static PyObject *init(PyObject *self, PyObject *t) {
  if (!PyType_Check(t)) { PyErr_SetString(PyExc_TypeError, "init takes numpy.ndarray"); return NULL; }
  Py_INCREF(t);
  ndarray_type = (PyTypeObject *)t;
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
  {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL, "call ember_main"},
  {"init", init, METH_O, "register numpy.ndarray"},
  {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ember_fastcall", NULL, -1, methods};
PyMODINIT_FUNC PyInit__ember_fastcall(void) { return PyModule_Create(&module); }
"""

_lock = threading.Lock()
_state: dict = {}


def _build() -> Path | None:
    include = sysconfig.get_paths().get("include")
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not include or not (Path(include) / "Python.h").exists() or not cc:
        return None
    tag = sysconfig.get_config_var("EXT_SUFFIX") or sys.version
    k = cache.key(SOURCE, tag, sys.version, cc)
    so = cache.entry(k, ".fastcall.so")
    if so.exists():
        return so
    with tempfile.TemporaryDirectory(prefix="ember-fastcall-") as tmp:
        src, out = Path(tmp) / "fastcall.c", Path(tmp) / "fastcall.so"
        src.write_text(SOURCE)
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", f"-I{include}", str(src), "-o", str(out)],
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
                import numpy as np
                so = _build()
                if so is not None:
                    loader = importlib.machinery.ExtensionFileLoader("_ember_fastcall", str(so))
                    spec = importlib.util.spec_from_file_location("_ember_fastcall", str(so), loader=loader)
                    mod = importlib.util.module_from_spec(spec)
                    loader.exec_module(mod)
                    mod.init(np.ndarray)
                    _state["mod"] = mod
            except Exception:  # no compiler, no headers, an odd platform: ctypes still works
                _state["mod"] = None
        return _state["mod"]
