/*
 * fast.c - pyseq._fast: the per-message calls as CPython methods (METH_FASTCALL).
 *
 * The C core is bound through cffi (pyseq._native_ffi).  Measured on the 2-core KVM machine this
 * project targets, a cffi call costs 150-400 ns of argument conversion and a Python-level wrapper
 * ~100 ns more, against ~35 ns for a publish in C.  So pyseq.Ring and pyseq.Reader subclass the
 * two base types here: their publish / forward / poll / read / read_seq are these C methods, which
 * call ring.c on the same structs (allocated by cffi, bound by address) and build a pyseq.Message
 * straight from the reader's copy buffer.  Anything that is not the common case (a record to
 * encode, back-pressure, a timeout, a lap, a closed handle) is handed, untouched, to the Python
 * method named *_slow on the same object, which raises or waits as documented there.
 * Waits release the GIL; the non-blocking calls keep it (a release costs more than they do).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "ring.h"

#define SLICE_NS 100000000LL /* long waits are cut in slices so signals (Ctrl-C) are handled */

static PyObject *call_slow(PyObject *self, const char *name, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *method = PyObject_GetAttrString(self, name);
    if (method == NULL)
        return NULL;
    PyObject *result = PyObject_Vectorcall(method, args, (size_t)nargs, kwnames);
    Py_DECREF(method);
    return result;
}

/* The slow path of a read: self.<name>(status, *args, **kwargs); status is None if the fast path
 * did not run (arguments it does not handle, or a closed reader). */
static PyObject *call_slow_status(PyObject *self, const char *name, int64_t seq, int ran, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *stack[8];
    if (nargs + nk + 1 > 8) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return NULL;
    }
    PyObject *status = ran ? PyLong_FromLongLong(seq) : Py_NewRef(Py_None);
    if (status == NULL)
        return NULL;
    stack[0] = status;
    if (nargs + nk > 0)
        memcpy(stack + 1, args, (size_t)(nargs + nk) * sizeof(PyObject *));
    PyObject *result = call_slow(self, name, stack, nargs + 1, kwnames);
    Py_DECREF(status);
    return result;
}

static int as_u64_range(PyObject *o, long long lo, long long hi, long long *out)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && !(*out == -1 && PyErr_Occurred()) && *out >= lo && *out <= hi;
}

/* The writer's watch interval passed (PYSEQ_EWATCH): run self._watch(), which raises if what the
 * writer depends on is gone; 0 on success, -1 with the exception set. */
static int run_watch(PyObject *self)
{
    PyObject *r = PyObject_CallMethod(self, "_watch", NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* True for a float or int >= 0 (a valid timeout); never leaves an exception set. */
static int nonnegative_number(PyObject *o)
{
    double v;
    if (PyFloat_CheckExact(o))
        v = PyFloat_AS_DOUBLE(o);
    else if (PyLong_CheckExact(o))
        v = PyLong_AsDouble(o);
    else
        return 0;
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return v >= 0;
}

/* ---- Writer base ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    pyseq_writer_t *writer; /* NULL: not a writer, or closed */
    PyObject *keepalive;
} HotWriter;

static PyTypeObject HotReaderType;

static void hotwriter_dealloc(HotWriter *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->keepalive);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int hotwriter_traverse(HotWriter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->keepalive);
    return 0;
}

static int hotwriter_clear(HotWriter *self)
{
    self->writer = NULL;
    Py_CLEAR(self->keepalive);
    return 0;
}

static PyObject *hotwriter_bind(HotWriter *self, PyObject *args)
{
    unsigned long long addr;
    PyObject *keep;
    if (!PyArg_ParseTuple(args, "KO", &addr, &keep))
        return NULL;
    self->writer = (pyseq_writer_t *)(uintptr_t)addr;
    Py_XSETREF(self->keepalive, Py_NewRef(keep));
    Py_RETURN_NONE;
}

static PyObject *hotwriter_unbind(HotWriter *self, PyObject *unused)
{
    (void)unused;
    self->writer = NULL;
    Py_CLEAR(self->keepalive);
    Py_RETURN_NONE;
}

/* publish(msg_type, payload, *, source=0, schema_version=0, timestamp_ns=0, timeout=None) -> sequence */
static PyObject *hotwriter_publish(HotWriter *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    long long msg_type, source = 0, version = 0, ts = 0;
    if (self->writer == NULL || nargs != 2 || !as_u64_range(args[0], 0, 0xFFFF, &msg_type))
        goto slow;
    if (kwnames != NULL) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(key, "source") == 0) {
                if (!as_u64_range(value, 0, 0xFFFFFFFFLL, &source))
                    goto slow;
            } else if (PyUnicode_CompareWithASCIIString(key, "schema_version") == 0) {
                if (!as_u64_range(value, 0, 0xFFFF, &version))
                    goto slow;
            } else if (PyUnicode_CompareWithASCIIString(key, "timestamp_ns") == 0) {
                if (!as_u64_range(value, 0, INT64_MAX, &ts))
                    goto slow;
            } else if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
                if (value != Py_None && !nonnegative_number(value))
                    goto slow;
            } else {
                goto slow;
            }
        }
    }
    PyErr_Clear();
    PyObject *payload = args[1];
    int64_t seq;
    if (PyBytes_CheckExact(payload)) {
        Py_ssize_t n = PyBytes_GET_SIZE(payload);
        if (n > (Py_ssize_t)UINT32_MAX)
            goto slow;
        seq = pyseq_writer_try_publish(self->writer, (uint16_t)msg_type, (uint16_t)version, (uint32_t)source, ts,
                                       PyBytes_AS_STRING(payload), (uint32_t)n);
        if (seq == PYSEQ_EWATCH) {
            if (run_watch((PyObject *)self) < 0)
                return NULL;
            if (self->writer == NULL)
                goto slow;
            seq = pyseq_writer_try_publish(self->writer, (uint16_t)msg_type, (uint16_t)version, (uint32_t)source,
                                           ts, PyBytes_AS_STRING(payload), (uint32_t)n);
        }
    } else {
        Py_buffer view;
        if (!PyObject_CheckBuffer(payload) || PyObject_GetBuffer(payload, &view, PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            goto slow;
        }
        seq = view.len > (Py_ssize_t)UINT32_MAX ? PYSEQ_ETOO_LARGE
              : pyseq_writer_try_publish(self->writer, (uint16_t)msg_type, (uint16_t)version, (uint32_t)source,
                                         ts, view.buf, (uint32_t)view.len);
        PyBuffer_Release(&view);
        if (seq == PYSEQ_EWATCH) { /* the slow path publishes it, after its own watch */
            if (run_watch((PyObject *)self) < 0)
                return NULL;
        }
    }
    if (seq > 0)
        return PyLong_FromLongLong(seq);
slow:
    PyErr_Clear();
    return call_slow((PyObject *)self, "_publish_slow", args, nargs, kwnames);
}

/* ---- Reader base ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    pyseq_reader_t *reader; /* NULL: closed */
    uint8_t *buf;
    uint32_t buf_length;
    const pyseq_idle_t *idle;
    int64_t stale_ns; /* > 0: a wait that finds the writer's heartbeat older than this ends (ESTALE) */
    PyTypeObject *message_type;
    PyObject *keepalive;
} HotReader;

static void hotreader_dealloc(HotReader *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->message_type);
    Py_CLEAR(self->keepalive);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int hotreader_traverse(HotReader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->message_type);
    Py_VISIT(self->keepalive);
    return 0;
}

static int hotreader_clear(HotReader *self)
{
    self->reader = NULL;
    Py_CLEAR(self->message_type);
    Py_CLEAR(self->keepalive);
    return 0;
}

/* _bind(reader_address, buffer_address, buffer_length, idle_address, stale_ns, message_type, keepalive) */
static PyObject *hotreader_bind(HotReader *self, PyObject *args)
{
    unsigned long long reader, buf, idle;
    unsigned int buf_length;
    long long stale_ns;
    PyObject *message_type, *keep;
    if (!PyArg_ParseTuple(args, "KKIKLOO", &reader, &buf, &buf_length, &idle, &stale_ns, &message_type, &keep))
        return NULL;
    if (!PyType_Check(message_type) || !PyType_IsSubtype((PyTypeObject *)message_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "message_type must be a tuple subclass");
        return NULL;
    }
    if (buf_length < PYSEQ_FRAME_LENGTH) {
        PyErr_SetString(PyExc_ValueError, "buffer shorter than a frame header");
        return NULL;
    }
    self->reader = (pyseq_reader_t *)(uintptr_t)reader;
    self->buf = (uint8_t *)(uintptr_t)buf;
    self->buf_length = buf_length;
    self->idle = (const pyseq_idle_t *)(uintptr_t)idle;
    self->stale_ns = stale_ns;
    Py_XSETREF(self->message_type, (PyTypeObject *)Py_NewRef(message_type));
    Py_XSETREF(self->keepalive, Py_NewRef(keep));
    Py_RETURN_NONE;
}

static PyObject *hotreader_unbind(HotReader *self, PyObject *unused)
{
    (void)unused;
    self->reader = NULL;
    Py_RETURN_NONE;
}

/* Message(seq, timestamp_ns, msg_type, schema_version, source, payload) from the copy buffer */
static PyObject *build_message(HotReader *self)
{
    const pyseq_frame_t *f = (const pyseq_frame_t *)self->buf;
    uint32_t length = f->length;
    if (length > self->buf_length - PYSEQ_FRAME_LENGTH)
        length = self->buf_length - PYSEQ_FRAME_LENGTH;
    PyObject *m = self->message_type->tp_alloc(self->message_type, 6);
    if (m == NULL)
        return NULL;
    PyObject *items[6] = {
        PyLong_FromLongLong(f->sequence), PyLong_FromLongLong(f->timestamp_ns), PyLong_FromLong(f->msg_type),
        PyLong_FromLong(f->schema_version), PyLong_FromUnsignedLong(f->source),
        PyBytes_FromStringAndSize((const char *)self->buf + PYSEQ_FRAME_LENGTH, length),
    };
    for (int i = 0; i < 6; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 6; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(m, i, items[i]);
    }
    return m;
}

/* The timeout argument: 1 and *ns >= 0 (or -1 for None: for ever); 0 if it is something else. */
static int parse_timeout(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, long long *ns)
{
    PyObject *t = NULL;
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nk > 1)
        return 0;
    if (nargs == 1)
        t = args[0];
    else if (nk == 1) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0)
            return 0;
        t = args[0];
    }
    if (t == NULL || t == Py_None) {
        *ns = -1;
        return 1;
    }
    double seconds;
    if (PyFloat_CheckExact(t))
        seconds = PyFloat_AS_DOUBLE(t);
    else if (PyLong_CheckExact(t)) {
        seconds = PyLong_AsDouble(t);
        if (seconds == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    } else
        return 0;
    if (!(seconds >= 0) || seconds > 1e9)
        return 0;
    *ns = (long long)(seconds * 1e9);
    return 1;
}

/* Read into the buffer: a sequence, or a status <= 0; NULL with an exception on a signal. */
static int64_t read_waiting(HotReader *self, long long timeout_ns, int *interrupted)
{
    *interrupted = 0;
    int64_t seq = pyseq_reader_poll(self->reader, self->buf, self->buf_length);
    if (seq != PYSEQ_EMPTY || timeout_ns == 0)
        return seq;
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : pyseq_clock_monotonic_ns() + timeout_ns;
    for (;;) {
        int64_t left = timeout_ns < 0 ? SLICE_NS : deadline - pyseq_clock_monotonic_ns();
        if (left <= 0)
            return PYSEQ_EMPTY;
        if (left > SLICE_NS)
            left = SLICE_NS;
        Py_BEGIN_ALLOW_THREADS
        seq = pyseq_reader_read(self->reader, self->buf, self->buf_length, left, self->idle);
        Py_END_ALLOW_THREADS
        if (seq != PYSEQ_EMPTY)
            return seq;
        if (PyErr_CheckSignals() < 0) {
            *interrupted = 1;
            return PYSEQ_EMPTY;
        }
        if (self->reader == NULL) /* closed by another thread meanwhile */
            return PYSEQ_EMPTY;
        const pyseq_ring_header_t *h = self->reader->ring.header;
        if (pyseq_header_writer_gone(h)) {
            seq = pyseq_reader_poll(self->reader, self->buf, self->buf_length); /* the last word */
            return seq != PYSEQ_EMPTY ? seq : PYSEQ_EEND;
        }
        if (self->stale_ns > 0 && pyseq_clock_realtime_ns() - pyseq_header_heartbeat(h) > self->stale_ns)
            return PYSEQ_ESTALE;
    }
}

static PyObject *read_common(HotReader *self, PyObject *const *args, size_t nargsf, PyObject *kwnames,
                             int build, const char *slow_name)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    long long timeout_ns;
    if (self->reader == NULL || !parse_timeout(args, nargs, kwnames, &timeout_ns))
        return call_slow_status((PyObject *)self, slow_name, 0, 0, args, nargs, kwnames);
    int interrupted;
    int64_t seq = read_waiting(self, timeout_ns, &interrupted);
    if (interrupted)
        return NULL;
    if (seq > 0)
        return build ? build_message(self) : PyLong_FromLongLong(seq);
    return call_slow_status((PyObject *)self, slow_name, seq, 1, args, nargs, kwnames);
}

/* read(timeout=None) -> Message */
static PyObject *hotreader_read(HotReader *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return read_common(self, args, nargsf, kwnames, 1, "_read_slow");
}

/* read_seq(timeout=None) -> sequence; the message stays in the reader's buffer */
static PyObject *hotreader_read_seq(HotReader *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return read_common(self, args, nargsf, kwnames, 0, "_read_seq_slow");
}

/* poll() -> Message or None */
static PyObject *hotreader_poll(HotReader *self, PyObject *unused)
{
    (void)unused;
    if (self->reader != NULL) {
        int64_t seq = pyseq_reader_poll(self->reader, self->buf, self->buf_length);
        if (seq > 0)
            return build_message(self);
        if (seq == PYSEQ_EMPTY)
            Py_RETURN_NONE;
        return call_slow_status((PyObject *)self, "_read_slow", seq, 1, NULL, 0, NULL);
    }
    return call_slow_status((PyObject *)self, "_read_slow", 0, 0, NULL, 0, NULL);
}

/* poll_seq() -> sequence, or 0 if nothing is published yet */
static PyObject *hotreader_poll_seq(HotReader *self, PyObject *unused)
{
    (void)unused;
    if (self->reader != NULL) {
        int64_t seq = pyseq_reader_poll(self->reader, self->buf, self->buf_length);
        if (seq >= 0)
            return PyLong_FromLongLong(seq);
        return call_slow_status((PyObject *)self, "_read_seq_slow", seq, 1, NULL, 0, NULL);
    }
    return call_slow_status((PyObject *)self, "_read_seq_slow", 0, 0, NULL, 0, NULL);
}

/* _read_status(timeout_ns) -> sequence or status, no slow path (for the Python layer) */
static PyObject *hotreader_read_status(HotReader *self, PyObject *arg)
{
    long long timeout_ns = PyLong_AsLongLong(arg);
    if (timeout_ns == -1 && PyErr_Occurred())
        return NULL;
    if (self->reader == NULL)
        return PyLong_FromLong(PYSEQ_EMPTY);
    int interrupted;
    int64_t seq = read_waiting(self, timeout_ns, &interrupted);
    if (interrupted)
        return NULL;
    return PyLong_FromLongLong(seq);
}

/* _message() -> the Message in the buffer */
static PyObject *hotreader_message(HotReader *self, PyObject *unused)
{
    (void)unused;
    return build_message(self);
}

/* forward(reader, *, keep_timestamp=False, timeout=None) -> sequence */
static PyObject *hotwriter_forward(HotWriter *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->writer != NULL && nargs == 1 && kwnames == NULL && PyObject_TypeCheck(args[0], &HotReaderType)) {
        HotReader *r = (HotReader *)args[0];
        if (r->reader != NULL && ((const pyseq_frame_t *)r->buf)->sequence > 0) {
            int64_t seq = pyseq_writer_try_forward(self->writer, r->buf, 0);
            if (seq > 0)
                return PyLong_FromLongLong(seq);
            if (seq == PYSEQ_EWATCH && run_watch((PyObject *)self) < 0)
                return NULL;
        }
    }
    return call_slow((PyObject *)self, "_forward_slow", args, nargs, kwnames);
}

static PyMethodDef hotwriter_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))hotwriter_publish, METH_FASTCALL | METH_KEYWORDS,
     "publish(msg_type, payload, *, source=0, schema_version=0, timestamp_ns=0, timeout=None) -> sequence\n\n"
     "Publish one message and return the sequence it was given; publish(record) for a declared record.\n"
     "If a gating reader holds the slot, wait up to timeout seconds (None: until it frees it), then\n"
     "raise BackPressureError."},
    {"forward", (PyCFunction)(void (*)(void))hotwriter_forward, METH_FASTCALL | METH_KEYWORDS,
     "forward(reader, *, keep_timestamp=False, timeout=None) -> sequence\n\n"
     "Publish again the message the reader read last, copied in C (no Python object built)."},
    {"_bind", (PyCFunction)hotwriter_bind, METH_VARARGS, NULL},
    {"_unbind", (PyCFunction)hotwriter_unbind, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef hotreader_methods[] = {
    {"read", (PyCFunction)(void (*)(void))hotreader_read, METH_FASTCALL | METH_KEYWORDS,
     "read(timeout=None) -> Message\n\nThe next message, waiting by the idle strategy (in C, GIL released)\n"
     "up to timeout seconds (None: for ever); pyseq.TimeoutError after it, LappedError if overtaken."},
    {"read_seq", (PyCFunction)(void (*)(void))hotreader_read_seq, METH_FASTCALL | METH_KEYWORDS,
     "read_seq(timeout=None) -> sequence\n\nThe zero-object read: the message is copied into this reader's\n"
     "buffer (see .last, .buffer, Ring.forward) and only its sequence is returned."},
    {"poll", (PyCFunction)hotreader_poll, METH_NOARGS, "poll() -> Message or None"},
    {"poll_seq", (PyCFunction)hotreader_poll_seq, METH_NOARGS,
     "poll_seq() -> sequence, or 0 if nothing is published yet (the message stays in the buffer)"},
    {"_read_status", (PyCFunction)hotreader_read_status, METH_O, NULL},
    {"_message", (PyCFunction)hotreader_message, METH_NOARGS, NULL},
    {"_bind", (PyCFunction)hotreader_bind, METH_VARARGS, NULL},
    {"_unbind", (PyCFunction)hotreader_unbind, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HotWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyseq._fast.HotWriter",
    .tp_basicsize = sizeof(HotWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Base of pyseq.Ring: the per-message write calls in C",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)hotwriter_dealloc,
    .tp_traverse = (traverseproc)hotwriter_traverse,
    .tp_clear = (inquiry)hotwriter_clear,
    .tp_methods = hotwriter_methods,
};

static PyTypeObject HotReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyseq._fast.HotReader",
    .tp_basicsize = sizeof(HotReader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Base of pyseq.Reader: the per-message read calls in C",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)hotreader_dealloc,
    .tp_traverse = (traverseproc)hotreader_traverse,
    .tp_clear = (inquiry)hotreader_clear,
    .tp_methods = hotreader_methods,
};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT, "pyseq._fast", "pyseq's per-message hot calls (see csrc/fast.c)", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    if (PyType_Ready(&HotWriterType) < 0 || PyType_Ready(&HotReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fast_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "HotWriter", (PyObject *)&HotWriterType) < 0 ||
        PyModule_AddObjectRef(m, "HotReader", (PyObject *)&HotReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
