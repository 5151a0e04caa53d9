/*
 * mindvideo.engine._host_loop: the fused guided sampler update and the sampling loop over float32 host buffers.
 *
 * The C twin of engine/host_loop_numpy.py: same functions, signatures, checks, error messages and arithmetic, in
 * the same order (see engine/host_loop_numpy.py and engine/schedule.py for the maths):
 *
 *     m  = m_neg + g*(m_pos - m_neg)                  (m = m_pos unguided)
 *     d  = p*x + q*m;  x <- a*x + b*m + c*d + e*state + n*z;  state <- d
 *
 * Buffers are float32; each element is evaluated in double and rounded once when stored, so the update adds
 * no rounding of its own beyond storing x and state in float32. Data are reached through the buffer protocol, so
 * building needs no numpy headers; at run time the module calls numpy.empty / numpy.zeros for its own arrays.
 * Stochastic steps (DDIM eta > 0, LCM) read row i of a precomputed step_noise buffer (K, B, ...) or call
 * variance_noise(i); single_pass runs B model rows with no guidance mix (a student: g is bound into denoise).
 * The GIL is released around every pass over the data and held while calling back into Python (denoise,
 * variance_noise, callback). Build with -ffp-contract=off so the compiler does not fuse multiply-adds that the
 * numpy twin rounds separately.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define NUM_COEFFICIENTS 7
#define COEFFICIENT_NAMES "('a', 'b', 'c', 'e', 'p', 'q', 'n')"
#define FIX_FLOAT32 "pass np.ascontiguousarray(value, dtype=np.float32)"
#define FIX_LATENT_SHAPE "match the latents' shape"
#define FIX_EPS_SHAPE "denoise(x, t, cond) must return eps shaped like x; with guidance_scale > 1, cond stacks 2B rows"
#define FIX_STEP_NOISE "pass step_noise=mindvideo.sampling.step_noise(generator, latents.shape, steps).numpy()"

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define ALWAYS_INLINE static __forceinline
#else
#define ALWAYS_INLINE static inline
#endif

typedef struct {
    PyObject *user_error; /* mindvideo.errors.MindVideoError */
    PyObject *np_empty;   /* numpy.empty */
    PyObject *np_zeros;   /* numpy.zeros */
} ModuleState;

typedef struct {
    double a, b, c, e, p, q, n;
} Coefficients;

/* ------------------------------------------------------------------------------------------------ the maths */

ALWAYS_INLINE void
update_body(float *x, const float *mp, const float *mn, double g, Coefficients k, float *state, const float *z,
            Py_ssize_t len, const int guided, const int stateful, const int noisy)
{
    for (Py_ssize_t i = 0; i < len; i++) {
        const double xi = x[i];
        const double m = guided ? (double)mn[i] + g * ((double)mp[i] - (double)mn[i]) : (double)mp[i];
        double y = k.a * xi + k.b * m;
        if (stateful) {
            const double d = k.p * xi + k.q * m;
            y = y + k.c * d;
            y = y + k.e * (double)state[i];
            state[i] = (float)d;
        }
        if (noisy)
            y = y + k.n * (double)z[i];
        x[i] = (float)y;
    }
}

/* One fused step over `len` floats; mn, state and z are NULL when unguided / not stateful / not noisy. Each
 * combination gets its own specialised (and vectorised) loop. No Python API: call it without the GIL. */
static void
fused_update_kernel(float *x, const float *mp, const float *mn, double g, Coefficients k, float *state,
                    const float *z, Py_ssize_t len)
{
    switch ((mn != NULL) | (state != NULL) << 1 | (z != NULL) << 2) {
    case 0: update_body(x, mp, mn, g, k, state, z, len, 0, 0, 0); break;
    case 1: update_body(x, mp, mn, g, k, state, z, len, 1, 0, 0); break;
    case 2: update_body(x, mp, mn, g, k, state, z, len, 0, 1, 0); break;
    case 3: update_body(x, mp, mn, g, k, state, z, len, 1, 1, 0); break;
    case 4: update_body(x, mp, mn, g, k, state, z, len, 0, 0, 1); break;
    case 5: update_body(x, mp, mn, g, k, state, z, len, 1, 0, 1); break;
    case 6: update_body(x, mp, mn, g, k, state, z, len, 0, 1, 1); break;
    default: update_body(x, mp, mn, g, k, state, z, len, 1, 1, 1); break;
    }
}

/* dst[r*len + i] = s*src[i] for each of `copies` row blocks (the model input, duplicated when guided). */
static void
scale_into(float *dst, const float *src, double s, Py_ssize_t len, int copies)
{
    for (int r = 0; r < copies; r++, dst += len) {
        if (s == 1.0) {
            memcpy(dst, src, (size_t)len * sizeof(float));
            continue;
        }
        for (Py_ssize_t i = 0; i < len; i++)
            dst[i] = (float)(s * (double)src[i]);
    }
}

static int
is_stateful(const double *row)
{
    return row[2] != 0.0 || row[3] != 0.0 || row[4] != 0.0 || row[5] != 0.0;
}

static Coefficients
to_coefficients(const double *row)
{
    Coefficients k = {row[0], row[1], row[2], row[3], row[4], row[5], row[6]};
    return k;
}

/* ------------------------------------------------------------------------------------------------ checks */

/* Raise MindVideoError(what, found, fix). Steals `what` and `found` (either may be NULL after a failed
 * PyUnicode_FromFormat, whose error is then left in place). */
static void
raise_user_error(ModuleState *st, PyObject *what, PyObject *found, const char *fix)
{
    if (what != NULL && found != NULL) {
        PyObject *exc = PyObject_CallFunction(st->user_error, "OOs", what, found, fix);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
    }
    Py_XDECREF(what);
    Py_XDECREF(found);
}

static PyObject *
shape_tuple(const Py_buffer *view, Py_ssize_t first)
{
    PyObject *shape = PyTuple_New(view->ndim);
    for (int i = 0; shape != NULL && i < view->ndim; i++) {
        PyObject *dim = PyLong_FromSsize_t(i == 0 && first >= 0 ? first : view->shape[i]);
        if (dim == NULL)
            Py_CLEAR(shape);
        else
            PyTuple_SET_ITEM(shape, i, dim);
    }
    return shape;
}

static const char *
type_name(PyObject *obj)
{
    const char *name = Py_TYPE(obj)->tp_name, *dot = strrchr(name, '.');
    return dot != NULL ? dot + 1 : name;
}

static int
is_native_float32(const Py_buffer *view)
{
    const char *f = view->format != NULL ? view->format : "B";
#if PY_LITTLE_ENDIAN
    const int little_ok = strcmp(f, "<f") == 0;
#else
    const int little_ok = strcmp(f, ">f") == 0;
#endif
    return view->itemsize == 4 && (strcmp(f, "f") == 0 || strcmp(f, "=f") == 0 || strcmp(f, "@f") == 0 || little_ok);
}

static int
same_shape(const Py_buffer *a, const Py_buffer *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

static void
raise_not_float32(ModuleState *st, const char *name, PyObject *found)
{
    raise_user_error(st, PyUnicode_FromFormat("expected %s as a C-contiguous float32 array", name), found,
                     FIX_FLOAT32);
}

/* A C-contiguous float32 view of `obj`, checked like host_loop_numpy.py:check_float32 (same messages): writable if
 * asked, and shaped like `like` when given. Returns 0, or -1 with an exception set and no view held. */
static int
get_float32(ModuleState *st, PyObject *obj, const char *name, Py_buffer *view, int writable, const Py_buffer *like,
            const char *fix)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_FULL_RO) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            raise_not_float32(st, name, PyUnicode_FromFormat("%s (no buffer interface)", type_name(obj)));
        }
        return -1;
    }
    if (!is_native_float32(view)) {
        PyObject *format = PyUnicode_FromString(view->format != NULL ? view->format : "B");
        raise_not_float32(st, name, format != NULL ? PyUnicode_FromFormat("buffer format %R", format) : NULL);
        Py_XDECREF(format);
    }
    else if (!PyBuffer_IsContiguous(view, 'C'))
        raise_not_float32(st, name, PyUnicode_FromString("a non-contiguous view"));
    else if (writable && view->readonly)
        raise_user_error(st, PyUnicode_FromFormat("expected %s as a writable float32 array", name),
                         PyUnicode_FromString("a read-only buffer"), "pass a writable copy (np.array(value))");
    else if (like != NULL && !same_shape(view, like)) {
        PyObject *want = shape_tuple(like, -1), *got = shape_tuple(view, -1);
        raise_user_error(st, want != NULL ? PyUnicode_FromFormat("expected %s of shape %R", name, want) : NULL,
                         got != NULL ? PyUnicode_FromFormat("shape %R", got) : NULL, fix);
        Py_XDECREF(want);
        Py_XDECREF(got);
    }
    else
        return 0;
    PyBuffer_Release(view);
    return -1;
}

/* The 7 coefficients of one step from any sequence of numbers (a StepCoefficients, a plan row). */
static int
parse_coefficients(ModuleState *st, PyObject *obj, double *row)
{
    PyObject *seq = PySequence_Fast(obj, "coefficients must be a sequence of 7 numbers (plan.step(i))");
    if (seq == NULL)
        return -1;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count != NUM_COEFFICIENTS) {
        raise_user_error(st, PyUnicode_FromFormat("expected %d step coefficients %s", NUM_COEFFICIENTS,
                                                  COEFFICIENT_NAMES),
                         PyUnicode_FromFormat("%zd values", count), "pass plan.step(i)");
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        row[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (row[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ fused_update */

/* The views one fused_update call holds; NULL-able ones are only taken when the step needs them. */
typedef struct {
    Py_buffer x, mp, mn, state, noise;
    int have_x, have_mp, have_mn, have_state, have_noise;
} UpdateViews;

static void
release_update_views(UpdateViews *v)
{
    if (v->have_noise) PyBuffer_Release(&v->noise);
    if (v->have_state) PyBuffer_Release(&v->state);
    if (v->have_mn) PyBuffer_Release(&v->mn);
    if (v->have_mp) PyBuffer_Release(&v->mp);
    if (v->have_x) PyBuffer_Release(&v->x);
}

static int
take_float32(ModuleState *st, PyObject *obj, const char *name, Py_buffer *view, int *have, int writable,
             const Py_buffer *like)
{
    *have = get_float32(st, obj, name, view, writable, like, FIX_LATENT_SHAPE) == 0;
    return *have ? 0 : -1;
}

/* Check every argument (in host_loop_numpy.py's order) before anything is written. 0, or -1 with views released. */
static int
get_update_views(ModuleState *st, UpdateViews *v, PyObject *x, PyObject *mp, PyObject *mn, const double *row,
                 PyObject *state, PyObject *noise)
{
    memset(v, 0, sizeof(*v));
    if (take_float32(st, x, "x", &v->x, &v->have_x, 1, NULL) < 0
        || take_float32(st, mp, "eps_pos", &v->mp, &v->have_mp, 0, &v->x) < 0
        || (mn != Py_None && take_float32(st, mn, "eps_neg", &v->mn, &v->have_mn, 0, &v->x) < 0))
        goto fail;
    if (is_stateful(row)) {
        if (state == Py_None) {
            raise_user_error(st, PyUnicode_FromString("expected a state buffer for a multistep step"),
                             PyUnicode_FromString("state=None"), "pass np.zeros_like(x) and keep it across steps");
            goto fail;
        }
        if (take_float32(st, state, "state", &v->state, &v->have_state, 1, &v->x) < 0)
            goto fail;
    }
    if (row[6] != 0.0) {
        if (noise == Py_None) {
            raise_user_error(st, PyUnicode_FromString("expected a noise draw for a stochastic step (DDIM eta > 0)"),
                             PyUnicode_FromString("noise=None"), "pass standard normal float32 noise shaped like x");
            goto fail;
        }
        if (take_float32(st, noise, "noise", &v->noise, &v->have_noise, 0, &v->x) < 0)
            goto fail;
    }
    return 0;
fail:
    release_update_views(v);
    return -1;
}

PyDoc_STRVAR(fused_update_doc,
"fused_update(x, eps_pos, eps_neg, guidance_scale, coefficients, state=None, noise=None) -> None\n--\n\n"
"One guided sampler step in place on x (and state); the C twin of mindvideo.engine.host_loop_numpy.fused_update.");

static PyObject *
py_fused_update(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "eps_pos", "eps_neg", "guidance_scale", "coefficients", "state", "noise", NULL};
    ModuleState *st = PyModule_GetState(module);
    PyObject *x, *mp, *mn, *coefficients, *state = Py_None, *noise = Py_None;
    double g, row[NUM_COEFFICIENTS];
    UpdateViews v;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOdO|OO:fused_update", kwlist, &x, &mp, &mn, &g,
                                     &coefficients, &state, &noise)
        || parse_coefficients(st, coefficients, row) < 0
        || get_update_views(st, &v, x, mp, mn, row, state, noise) < 0)
        return NULL;
    const Coefficients k = to_coefficients(row);
    Py_BEGIN_ALLOW_THREADS
    fused_update_kernel(v.x.buf, v.mp.buf, v.have_mn ? v.mn.buf : NULL, g, k, v.have_state ? v.state.buf : NULL,
                        v.have_noise ? v.noise.buf : NULL, v.x.len / (Py_ssize_t)sizeof(float));
    Py_END_ALLOW_THREADS
    release_update_views(&v);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------------ run_loop */

/* Everything one run owns. Views are held from setup to the end; `loop_clear` releases whatever was taken. */
typedef struct {
    PyObject *x, *x_in, *state, *timesteps, *scale_obj, *coef_obj;
    Py_buffer xv, inv, sv, scale, coef, nv;
    int have_xv, have_inv, have_sv, have_scale, have_coef, have_nv;
    Py_ssize_t steps, len, noise_rows; /* S; floats in B rows; 1 + the last noisy step (0: none) */
    int guided, stateful, stochastic;
    double g;
} Loop;

static void
loop_clear(Loop *L)
{
    if (L->have_xv) PyBuffer_Release(&L->xv);
    if (L->have_inv) PyBuffer_Release(&L->inv);
    if (L->have_sv) PyBuffer_Release(&L->sv);
    if (L->have_scale) PyBuffer_Release(&L->scale);
    if (L->have_coef) PyBuffer_Release(&L->coef);
    if (L->have_nv) PyBuffer_Release(&L->nv);
    Py_XDECREF(L->x_in);
    Py_XDECREF(L->state);
    Py_XDECREF(L->timesteps);
    Py_XDECREF(L->scale_obj);
    Py_XDECREF(L->coef_obj);
}

/* plan.timesteps.tolist(), plan.input_scale (S,) and plan.coefficients (S, 7), both C-contiguous float64. */
static int
loop_read_plan(Loop *L, PyObject *plan)
{
    PyObject *ts = PyObject_GetAttrString(plan, "timesteps");
    if (ts == NULL)
        return -1;
    L->timesteps = PyObject_CallMethod(ts, "tolist", NULL);
    Py_DECREF(ts);
    if (L->timesteps == NULL || (L->scale_obj = PyObject_GetAttrString(plan, "input_scale")) == NULL
        || (L->coef_obj = PyObject_GetAttrString(plan, "coefficients")) == NULL)
        return -1;
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (PyObject_GetBuffer(L->scale_obj, &L->scale, flags) < 0)
        return -1;
    L->have_scale = 1;
    if (PyObject_GetBuffer(L->coef_obj, &L->coef, flags) < 0)
        return -1;
    L->have_coef = 1;
    L->steps = PyList_Check(L->timesteps) ? PyList_GET_SIZE(L->timesteps) : -1;
    if (L->steps < 1 || strcmp(L->scale.format, "d") != 0 || strcmp(L->coef.format, "d") != 0
        || L->scale.ndim != 1 || L->scale.shape[0] != L->steps || L->coef.ndim != 2
        || L->coef.shape[0] != L->steps || L->coef.shape[1] != NUM_COEFFICIENTS) {
        PyErr_SetString(PyExc_TypeError, "plan must be a SamplingPlan (timesteps (S,), input_scale (S,) float64, "
                                         "coefficients (S, 7) float64)");
        return -1;
    }
    const double *coef = L->coef.buf;
    for (Py_ssize_t i = 0; i < L->steps; i++) {
        L->stateful |= is_stateful(coef + i * NUM_COEFFICIENTS);
        if (coef[i * NUM_COEFFICIENTS + 6] != 0.0) {
            L->stochastic = 1;
            L->noise_rows = i + 1;
        }
    }
    return 0;
}

/* A new float32 numpy array (numpy.empty or numpy.zeros) of `shape` and a writable view of it. */
static PyObject *
new_array(PyObject *factory, PyObject *shape, Py_buffer *view, int *have)
{
    PyObject *array = shape != NULL ? PyObject_CallFunction(factory, "Os", shape, "float32") : NULL;
    if (array != NULL && PyObject_GetBuffer(array, view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        Py_CLEAR(array);
    *have = array != NULL;
    return array;
}

/* The step_noise buffer (K, *latents.shape) float32 with K >= noise_rows, checked like host_loop_numpy.py:_check_run. */
static int
loop_take_step_noise(ModuleState *st, Loop *L, PyObject *step_noise, PyObject *shape)
{
    if (get_float32(st, step_noise, "step_noise", &L->nv, 0, NULL, NULL) < 0)
        return -1;
    L->have_nv = 1;
    const Py_buffer *x = &L->xv, *n = &L->nv;
    int ok = n->ndim == x->ndim + 1 && n->shape[0] >= L->noise_rows;
    for (int i = 0; ok && i < x->ndim; i++)
        ok = n->shape[i + 1] == x->shape[i];
    if (ok)
        return 0;
    PyObject *got = shape_tuple(n, -1);
    raise_user_error(st, PyUnicode_FromFormat("expected step_noise of shape (K,) + %R with K >= %zd", shape,
                                              L->noise_rows),
                     got != NULL ? PyUnicode_FromFormat("shape %R", got) : NULL, FIX_STEP_NOISE);
    Py_XDECREF(got);
    return -1;
}

static int
loop_setup(ModuleState *st, Loop *L, PyObject *plan, PyObject *latents, PyObject *variance_noise,
           PyObject *step_noise)
{
    Py_buffer lat;
    if (get_float32(st, latents, "latents", &lat, 0, NULL, NULL) < 0)
        return -1;
    PyObject *shape = shape_tuple(&lat, -1), *in_shape = NULL;
    L->len = lat.len / (Py_ssize_t)sizeof(float);
    if (shape != NULL && (lat.ndim < 1 || L->len == 0))
        raise_user_error(st, PyUnicode_FromString("expected non-empty latents (B, C, F, h, w)"),
                         PyUnicode_FromFormat("shape %R", shape),
                         "pass the initial noise times plan.init_noise_sigma");
    else if (shape != NULL && (L->x = new_array(st->np_empty, shape, &L->xv, &L->have_xv)) != NULL) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(L->xv.buf, lat.buf, (size_t)lat.len);
        Py_END_ALLOW_THREADS
        in_shape = shape_tuple(&lat, L->guided ? 2 * lat.shape[0] : lat.shape[0]);
        L->x_in = new_array(st->np_empty, in_shape, &L->inv, &L->have_inv);
    }
    PyBuffer_Release(&lat);
    if (L->x_in == NULL || loop_read_plan(L, plan) < 0)
        goto done;
    if (step_noise != Py_None && variance_noise != Py_None) {
        raise_user_error(st, PyUnicode_FromString("expected one noise source, step_noise or variance_noise"),
                         PyUnicode_FromString("both"), "pass the precomputed step_noise only");
        goto done;
    }
    if (step_noise != Py_None) {
        if (loop_take_step_noise(st, L, step_noise, shape) < 0)
            goto done;
    }
    else if (L->stochastic && variance_noise == Py_None) {
        raise_user_error(st, PyUnicode_FromString("expected step_noise or variance_noise for a stochastic plan "
                                                  "(DDIM eta > 0, LCM)"),
                         PyUnicode_FromString("step_noise=None, variance_noise=None"), FIX_STEP_NOISE);
        goto done;
    }
    if (L->stateful)
        L->state = new_array(st->np_zeros, shape, &L->sv, &L->have_sv);
done:
    Py_XDECREF(shape);
    Py_XDECREF(in_shape);
    return PyErr_Occurred() ? -1 : 0;
}

/* Step i: model input, denoise (GIL held), optional noise draw, fused update (GIL released), callback. */
static int
loop_step(ModuleState *st, Loop *L, Py_ssize_t i, PyObject *denoise, PyObject *cond, PyObject *variance_noise,
          PyObject *callback)
{
    const double *row = (const double *)L->coef.buf + i * NUM_COEFFICIENTS;
    const double scale = ((const double *)L->scale.buf)[i];
    PyObject *t = PyList_GET_ITEM(L->timesteps, i), *eps_obj = NULL, *noise_obj = NULL, *result;
    Py_buffer eps, noise;
    const float *z = NULL;
    int have_eps = 0, have_noise = 0, rc = -1;

    Py_BEGIN_ALLOW_THREADS
    scale_into(L->inv.buf, L->xv.buf, scale, L->len, L->guided ? 2 : 1);
    Py_END_ALLOW_THREADS
    eps_obj = PyObject_CallFunctionObjArgs(denoise, L->x_in, t, cond, NULL);
    if (eps_obj == NULL || get_float32(st, eps_obj, "denoise output", &eps, 0, &L->inv, FIX_EPS_SHAPE) < 0)
        goto done;
    have_eps = 1;
    if (row[6] != 0.0 && L->have_nv)
        z = (const float *)L->nv.buf + i * L->len; /* row i of the precomputed (K, B, ...) buffer */
    else if (row[6] != 0.0) {
        noise_obj = PyObject_CallFunction(variance_noise, "n", i);
        if (noise_obj == NULL
            || get_float32(st, noise_obj, "variance_noise(step)", &noise, 0, &L->xv, FIX_LATENT_SHAPE) < 0)
            goto done;
        have_noise = 1;
        z = noise.buf;
    }
    const float *e = eps.buf;
    const Coefficients k = to_coefficients(row);
    Py_BEGIN_ALLOW_THREADS
    fused_update_kernel(L->xv.buf, L->guided ? e + L->len : e, L->guided ? e : NULL, L->g, k,
                        is_stateful(row) ? L->sv.buf : NULL, z, L->len);
    Py_END_ALLOW_THREADS
    if (callback != Py_None) {
        result = PyObject_CallFunction(callback, "nOO", i, t, L->x);
        if (result == NULL)
            goto done;
        Py_DECREF(result);
    }
    rc = 0;
done:
    if (have_noise) PyBuffer_Release(&noise);
    if (have_eps) PyBuffer_Release(&eps);
    Py_XDECREF(noise_obj);
    Py_XDECREF(eps_obj);
    return rc;
}

PyDoc_STRVAR(run_loop_doc,
"run_loop(denoise, plan, latents, cond, *, guidance_scale=1.0, variance_noise=None, callback=None, "
"step_noise=None, single_pass=False) -> ndarray\n--\n\n"
"Run every step of plan from latents; the C twin of mindvideo.engine.host_loop_numpy.run_loop.");

static PyObject *
py_run_loop(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"denoise",  "plan",       "latents",     "cond", "guidance_scale", "variance_noise",
                             "callback", "step_noise", "single_pass", NULL};
    ModuleState *st = PyModule_GetState(module);
    PyObject *denoise, *plan, *latents, *cond, *variance_noise = Py_None, *callback = Py_None, *step_noise = Py_None;
    double guidance_scale = 1.0;
    int single_pass = 0;
    Loop L;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|$dOOOp:run_loop", kwlist, &denoise, &plan, &latents, &cond,
                                     &guidance_scale, &variance_noise, &callback, &step_noise, &single_pass))
        return NULL;
    memset(&L, 0, sizeof(L));
    L.guided = guidance_scale > 1.0 && !single_pass;
    L.g = guidance_scale;
    if (loop_setup(st, &L, plan, latents, variance_noise, step_noise) < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < L.steps; i++)
        if (loop_step(st, &L, i, denoise, cond, variance_noise, callback) < 0)
            goto fail;
    loop_clear(&L);
    return L.x; /* the reference the run owned */
fail:
    loop_clear(&L);
    Py_XDECREF(L.x);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------ module */

static PyMethodDef sampler_methods[] = {
    {"fused_update", (PyCFunction)(void (*)(void))py_fused_update, METH_VARARGS | METH_KEYWORDS, fused_update_doc},
    {"run_loop", (PyCFunction)(void (*)(void))py_run_loop, METH_VARARGS | METH_KEYWORDS, run_loop_doc},
    {NULL, NULL, 0, NULL},
};

static int
sampler_exec(PyObject *module)
{
    ModuleState *st = PyModule_GetState(module);
    PyObject *errors = PyImport_ImportModule("mindvideo.errors"), *numpy = NULL;
    if (errors == NULL || (st->user_error = PyObject_GetAttrString(errors, "MindVideoError")) == NULL
        || (numpy = PyImport_ImportModule("numpy")) == NULL
        || (st->np_empty = PyObject_GetAttrString(numpy, "empty")) == NULL
        || (st->np_zeros = PyObject_GetAttrString(numpy, "zeros")) == NULL) {
        Py_XDECREF(errors);
        Py_XDECREF(numpy);
        return -1;
    }
    Py_DECREF(errors);
    Py_DECREF(numpy);
    return 0;
}

static int
sampler_traverse(PyObject *module, visitproc visit, void *arg)
{
    ModuleState *st = PyModule_GetState(module);
    Py_VISIT(st->user_error);
    Py_VISIT(st->np_empty);
    Py_VISIT(st->np_zeros);
    return 0;
}

static int
sampler_clear(PyObject *module)
{
    ModuleState *st = PyModule_GetState(module);
    Py_CLEAR(st->user_error);
    Py_CLEAR(st->np_empty);
    Py_CLEAR(st->np_zeros);
    return 0;
}

static void
sampler_free(void *module)
{
    sampler_clear((PyObject *)module);
}

static PyModuleDef_Slot sampler_slots[] = {
    {Py_mod_exec, sampler_exec},
    {0, NULL},
};

static struct PyModuleDef sampler_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mindvideo.engine._host_loop",
    .m_doc = "Fused guided sampler update and sampling loop over float32 host buffers (see host_loop_numpy.py).",
    .m_size = sizeof(ModuleState),
    .m_methods = sampler_methods,
    .m_slots = sampler_slots,
    .m_traverse = sampler_traverse,
    .m_clear = sampler_clear,
    .m_free = sampler_free,
};

PyMODINIT_FUNC
PyInit__host_loop(void)
{
    return PyModuleDef_Init(&sampler_module);
}
