/*
 * mindvideo.kernels._attention_cpu: the video UNet's two attentions fused in one pass over float32 host buffers,
 * for inference on the CPU.
 *
 *     temporal_attention(q, k, v, out, scale, threads)
 *         q, k, v: (B*N, heads, F, d); each token's F frames attend to each other.
 *     sparse_causal_attention(q, k, v, out, sources, scale, threads)
 *         q, k, v: (B*F, heads, N, d); sources: int64 (S, F), frame f's queries attend to the keys and values of
 *         frames sources[0][f], ..., sources[S-1][f] of the same clip (mindvideo.kernels.source_frames).
 *
 * q, k, v are 4-D float32 buffers with any strides (numpy views of torch tensors, read in place: no gather, no
 * concatenation); out is a C-contiguous float32 buffer of q's shape. out = softmax(scale * q k^T) v per block.
 *
 * Why: at the demo size the torch forms write and re-read score tensors that fall out of the cache (3.7 MB for the
 * temporal layer at 60 frames on 8x8 latents) through products with an inner size of 8. Here one block's scores
 * (60 x 60 floats: 14 KB) stay in L1 and only the output is written.
 *
 * Layout inside a block: queries run along SIMD lanes. Scores are held transposed, st[j][i] (key j, query i), so
 * the softmax over keys is an elementwise max / exp / sum across rows of 16-lane vectors, and the value product is
 * a broadcast-multiply-add per (key, channel): no horizontal reduction anywhere. Lanes past the last query are
 * padding, computed and thrown away. exp is range-reduced to [-ln2/2, ln2/2] and a degree-7 polynomial.
 *
 * Vectors are GCC/Clang vector extensions (16 floats); on x86-64 Linux the block loop is compiled for AVX-512,
 * AVX2+FMA and the baseline and picked at load time. Blocks are split over up to `threads` POSIX threads (the
 * caller passes torch's intra-op thread count), at least MIN_BLOCKS_PER_THREAD blocks each; the GIL is released
 * while they run. Each block is computed the same way whatever the thread count, so results do not depend on it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC diagnostic ignored "-Wpsabi" /* 64-byte vectors only ever live inside always-inline helpers */

#define LANES 16
#define MAX_SOURCES 8
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) /* GCC + glibc ifunc */
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif
#define INLINE static inline __attribute__((always_inline))

INLINE vf select_vf(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* Assumptions: finite inputs (no attention masks here). A NaN score goes through the x86 float-to-int conversion's
 * "integer indefinite" and comes out NaN; a query whose scores are all -inf gets the mean of v (torch: NaN).
 *
 * exp(x) for x <= 0 (the softmax's shifted scores): e^x = 2^n * e^r with n = round(x / ln 2) and
 * r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in two so that r is exact), e^r by its Taylor series to r^7
 * (truncation error < 1e-8 relative) */
INLINE vf exp_nonpositive(vf x) {
    const vf lowest = (vf){0} - 87.0f; /* e^-87 ~ 1.6e-38: still a normal float */
    x = select_vf(x < lowest, lowest, x);
    vf t = x * 1.44269504088896341f - 0.5f;
    vi n = __builtin_convertvector(t, vi); /* truncates toward zero: one too high where t is a negative fraction */
    vf nf = __builtin_convertvector(n, vf);
    n += (vi)(nf > t); /* true lanes are -1 */
    nf = __builtin_convertvector(n, vf) + 1.0f;
    n += 1; /* n = floor(x / ln 2 + 1/2) */
    vf r = x - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    vf p = r * (1.0f / 5040) + (1.0f / 720);
    p = p * r + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vi bits = (n + 127) << 23;
    return p * (vf)bits;
}

/* One block: M query rows attend over the key/value rows of `sources` segments of `rows` rows each. */
typedef struct {
    const float *q;
    const float *k[MAX_SOURCES], *v[MAX_SOURCES];
    float *out; /* (M, dim), contiguous */
} Block;

typedef struct {
    int sparse; /* 0: temporal, 1: sparse-causal */
    const float *q, *k, *v;
    float *out;
    const int64_t *sources; /* sparse: (S, frames) */
    Py_ssize_t heads, frames, rows, dim, queries, keys, nsrc;
    Py_ssize_t qs[4], ks[4], vs[4]; /* element strides */
    float scale;
    Py_ssize_t first, last; /* block range [first, last) over shape[0] * heads */
    int failed;
} Work;

static Block block_at(const Work *w, Py_ssize_t blk) {
    const Py_ssize_t outer = blk / w->heads, h = blk % w->heads;
    Block b = {.q = w->q + outer * w->qs[0] + h * w->qs[1], .out = w->out + blk * w->queries * w->dim};
    if (!w->sparse) {
        b.k[0] = w->k + outer * w->ks[0] + h * w->ks[1];
        b.v[0] = w->v + outer * w->vs[0] + h * w->vs[1];
        return b;
    }
    const Py_ssize_t clip = outer / w->frames, f = outer % w->frames;
    for (Py_ssize_t s = 0; s < w->nsrc; s++) {
        const Py_ssize_t src = clip * w->frames + w->sources[s * w->frames + f];
        b.k[s] = w->k + src * w->ks[0] + h * w->ks[1];
        b.v[s] = w->v + src * w->vs[0] + h * w->vs[1];
    }
    return b;
}

#define GROUP 8 /* keys per score group and channels per output group: 8 independent FMA chains */

INLINE Py_ssize_t round_up(Py_ssize_t n, Py_ssize_t m) { return (n + m - 1) / m * m; }

/* scratch per thread, in vectors: qt (dim_p * nv) and st (keys_p * nv), then keys_p * dim_p floats each for the
 * packed keys and values (dim_p, keys_p: dim, keys rounded up to GROUP) */
static Py_ssize_t scratch_vectors(const Work *w) {
    const Py_ssize_t nv = (w->queries + LANES - 1) / LANES, dp = round_up(w->dim, GROUP);
    const Py_ssize_t kp = round_up(w->keys, GROUP);
    return (dp + kp) * nv + 2 * ((kp * dp + LANES - 1) / LANES);
}

/* One block into packed scratch: queries transposed and pre-scaled (qt[c][i]), keys and values row-major with
 * dim_p channels (kp, vp); padding (lanes past M, channels past dim, keys past keys) is zero. */
static void pack_block(const Work *w, const Block *b, vf *qt, float *kp, float *vp) {
    const Py_ssize_t M = w->queries, R = w->rows, D = w->dim, nv = (M + LANES - 1) / LANES;
    const Py_ssize_t dp = round_up(D, GROUP), S = w->sparse ? w->nsrc : 1;
    memset(qt, 0, sizeof(vf) * dp * nv);
    for (Py_ssize_t i = 0; i < M; i++)
        for (Py_ssize_t c = 0; c < D; c++) ((float *)(qt + c * nv))[i] = b->q[i * w->qs[2] + c * w->qs[3]] * w->scale;
    memset(kp, 0, sizeof(float) * round_up(w->keys, GROUP) * dp);
    memset(vp, 0, sizeof(float) * round_up(w->keys, GROUP) * dp);
    for (Py_ssize_t s = 0; s < S; s++)
        for (Py_ssize_t r = 0; r < R; r++)
            for (Py_ssize_t c = 0; c < D; c++) {
                kp[(s * R + r) * dp + c] = b->k[s][r * w->ks[2] + c * w->ks[3]];
                vp[(s * R + r) * dp + c] = b->v[s][r * w->vs[2] + c * w->vs[3]];
            }
}

MULTIVERSION static void attend_blocks(const Work *w, vf *scratch) {
    const Py_ssize_t M = w->queries, L = w->keys, D = w->dim, nv = (M + LANES - 1) / LANES;
    const Py_ssize_t dp = round_up(D, GROUP), lp = round_up(L, GROUP);
    vf *qt = scratch, *st = qt + dp * nv;
    float *kp = (float *)(st + lp * nv), *vp = kp + lp * dp;
    for (Py_ssize_t blk = w->first; blk < w->last; blk++) {
        const Block b = block_at(w, blk);
        pack_block(w, &b, qt, kp, vp);
        for (Py_ssize_t u = 0; u < nv; u++) {
            /* scores st[j][i] = scale * q[i] . k[j], GROUP keys at a time, and their max over the real keys */
            vf m = (vf){0} - 3.0e38f;
            for (Py_ssize_t j0 = 0; j0 < lp; j0 += GROUP) {
                vf acc[GROUP] = {{0}};
                for (Py_ssize_t c = 0; c < dp; c++) {
                    const vf qc = qt[c * nv + u];
                    for (int g = 0; g < GROUP; g++) acc[g] += kp[(j0 + g) * dp + c] * qc;
                }
                for (int g = 0; g < GROUP && j0 + g < L; g++) {
                    st[(j0 + g) * nv + u] = acc[g];
                    m = select_vf(acc[g] > m, acc[g], m);
                }
            }
            /* probabilities (unnormalised) and their sum */
            vf total = {0};
            for (Py_ssize_t j = 0; j < L; j++) {
                const vf e = exp_nonpositive(st[j * nv + u] - m);
                st[j * nv + u] = e;
                total += e;
            }
            const vf inv = 1.0f / total;
            /* out[i][c] = sum_j p[j][i] * v[j][c] / total, GROUP channels at a time */
            for (Py_ssize_t c0 = 0; c0 < dp; c0 += GROUP) {
                vf acc[GROUP] = {{0}};
                for (Py_ssize_t j = 0; j < L; j++) {
                    const vf p = st[j * nv + u];
                    for (int g = 0; g < GROUP; g++) acc[g] += vp[j * dp + c0 + g] * p;
                }
                for (int g = 0; g < GROUP && c0 + g < D; g++) {
                    const vf o = acc[g] * inv;
                    for (Py_ssize_t l = 0; l < LANES && u * LANES + l < M; l++)
                        b.out[(u * LANES + l) * D + c0 + g] = o[l];
                }
            }
        }
    }
}

static void *run_work(void *arg) {
    Work *w = (Work *)arg;
    void *scratch = NULL;
    if (posix_memalign(&scratch, 64, sizeof(vf) * scratch_vectors(w)) != 0) {
        w->failed = 1;
        return NULL;
    }
    attend_blocks(w, (vf *)scratch);
    free(scratch);
    return NULL;
}

/* Split the blocks over `threads` threads (this one included); 0, or -1 when scratch could not be allocated. */
#define MIN_BLOCKS_PER_THREAD 16 /* a thread is started per call: below this it costs more than it saves */

static int run_split(const Work *base, Py_ssize_t blocks, int threads) {
    if (threads > blocks / MIN_BLOCKS_PER_THREAD) threads = (int)(blocks / MIN_BLOCKS_PER_THREAD);
    if (threads < 1) threads = 1;
    Work *work = calloc((size_t)threads, sizeof(Work));
    pthread_t *ids = calloc((size_t)threads, sizeof(pthread_t));
    if (work == NULL || ids == NULL) {
        free(work);
        free(ids);
        return -1;
    }
    for (int t = 0; t < threads; t++) {
        work[t] = *base;
        work[t].first = blocks * t / threads;
        work[t].last = blocks * (t + 1) / threads;
    }
    int started = 0; /* threads 1..started run in parallel; the ranges of any that could not start run here */
    for (int t = 1; t < threads && pthread_create(&ids[t], NULL, run_work, &work[t]) == 0; t++) started = t;
    for (int t = started + 1; t < threads; t++) run_work(&work[t]);
    run_work(&work[0]);
    int failed = 0;
    for (int t = 1; t <= started; t++) pthread_join(ids[t], NULL);
    for (int t = 0; t < threads; t++) failed |= work[t].failed;
    free(work);
    free(ids);
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------- Python binding */

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name) {
    int flags = writable ? (PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) : (PyBUF_STRIDES | PyBUF_FORMAT);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: expected a %sfloat32 buffer (a numpy view of a CPU tensor)", name,
                     writable ? "writable C-contiguous " : "");
        return -1;
    }
    const char *fmt = view->format ? view->format : "B";
    if (view->ndim != 4 || view->itemsize != 4 || strcmp(fmt, "f") != 0) {
        PyErr_Format(PyExc_ValueError, "%s: expected a 4-D float32 buffer, got %d-D of format %s", name, view->ndim,
                     fmt);
        PyBuffer_Release(view);
        return -1;
    }
    for (int a = 0; a < 4; a++)
        if (view->strides[a] % 4 != 0) {
            PyErr_Format(PyExc_ValueError, "%s: expected strides that are whole float32 elements", name);
            PyBuffer_Release(view);
            return -1;
        }
    return 0;
}

/* q, k, v, out into views[0..3] and the common fields of *w; on failure the views taken are released */
static int take_qkv_out(PyObject *const objs[4], Py_buffer views[4], Work *w, float scale) {
    static const char *names[4] = {"q", "k", "v", "out"};
    for (int t = 0; t < 4; t++)
        if (get_buffer(objs[t], &views[t], t == 3, names[t]) != 0) {
            while (t--) PyBuffer_Release(&views[t]);
            return -1;
        }
    for (int t = 1; t < 4; t++)
        for (int a = 0; a < 4; a++)
            if (views[t].shape[a] != views[0].shape[a]) {
                PyErr_Format(PyExc_ValueError, "%s: expected the shape of q, got another size on axis %d", names[t], a);
                for (int r = 0; r < 4; r++) PyBuffer_Release(&views[r]);
                return -1;
            }
    if (views[0].shape[2] < 1 || views[0].shape[3] < 1) {
        PyErr_SetString(PyExc_ValueError, "q: expected at least one row on each of its last two axes");
        for (int r = 0; r < 4; r++) PyBuffer_Release(&views[r]);
        return -1;
    }
    w->q = views[0].buf, w->k = views[1].buf, w->v = views[2].buf, w->out = views[3].buf;
    w->heads = views[0].shape[1], w->dim = views[0].shape[3], w->scale = scale;
    for (int a = 0; a < 4; a++) {
        w->qs[a] = views[0].strides[a] / 4;
        w->ks[a] = views[1].strides[a] / 4;
        w->vs[a] = views[2].strides[a] / 4;
    }
    return 0;
}

static PyObject *finish(Py_buffer views[4], const Work *w, Py_ssize_t blocks, int threads) {
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_split(w, blocks, threads);
    Py_END_ALLOW_THREADS
    for (int r = 0; r < 4; r++) PyBuffer_Release(&views[r]);
    if (status != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *temporal_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[4];
    Py_buffer views[4];
    float scale;
    int threads;
    Work w = {.sparse = 0};
    if (!PyArg_ParseTuple(args, "OOOOfi:temporal_attention", &objs[0], &objs[1], &objs[2], &objs[3], &scale,
                          &threads) ||
        take_qkv_out(objs, views, &w, scale) != 0)
        return NULL;
    w.frames = w.rows = w.queries = w.keys = views[0].shape[2];
    return finish(views, &w, views[0].shape[0] * w.heads, threads);
}

static PyObject *sparse_causal_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[4], *sources_obj;
    Py_buffer views[4], src;
    float scale;
    int threads;
    Work w = {.sparse = 1};
    if (!PyArg_ParseTuple(args, "OOOOOfi:sparse_causal_attention", &objs[0], &objs[1], &objs[2], &objs[3],
                          &sources_obj, &scale, &threads))
        return NULL;
    if (PyObject_GetBuffer(sources_obj, &src, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_SetString(PyExc_ValueError, "sources: expected a C-contiguous int64 buffer (S, frames)");
        return NULL;
    }
    const char *fmt = src.format ? src.format : "B";
    const int int64 = src.itemsize == 8 && (strcmp(fmt, "q") == 0 || strcmp(fmt, "l") == 0);
    if (src.ndim != 2 || !int64 || src.shape[0] < 1 || src.shape[0] > MAX_SOURCES || src.shape[1] < 1) {
        PyErr_Format(PyExc_ValueError, "sources: expected an int64 (S, frames) buffer with 1 <= S <= %d", MAX_SOURCES);
        PyBuffer_Release(&src);
        return NULL;
    }
    w.sources = src.buf, w.nsrc = src.shape[0], w.frames = src.shape[1];
    for (Py_ssize_t i = 0; i < w.nsrc * w.frames; i++)
        if (w.sources[i] < 0 || w.sources[i] >= w.frames) {
            PyErr_Format(PyExc_ValueError, "sources: expected frame indices in [0, %zd), got %lld", w.frames,
                         (long long)w.sources[i]);
            PyBuffer_Release(&src);
            return NULL;
        }
    if (take_qkv_out(objs, views, &w, scale) != 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (views[0].shape[0] % w.frames != 0) {
        PyErr_Format(PyExc_ValueError, "q: expected a leading axis B*F that the %zd frames divide, got %zd", w.frames,
                     views[0].shape[0]);
        for (int r = 0; r < 4; r++) PyBuffer_Release(&views[r]);
        PyBuffer_Release(&src);
        return NULL;
    }
    w.rows = w.queries = views[0].shape[2];
    w.keys = w.nsrc * w.rows;
    PyObject *result = finish(views, &w, views[0].shape[0] * w.heads, threads);
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef methods[] = {
    {"temporal_attention", temporal_attention, METH_VARARGS,
     "temporal_attention(q, k, v, out, scale, threads): out = softmax(scale * q k^T) v for every (B*N, head) block "
     "of frames; q, k, v: 4-D float32 (B*N, heads, F, d), any strides; out: C-contiguous, q's shape."},
    {"sparse_causal_attention", sparse_causal_attention, METH_VARARGS,
     "sparse_causal_attention(q, k, v, out, sources, scale, threads): frame f's queries attend over the keys and "
     "values of frames sources[:, f] of the same clip; q, k, v: 4-D float32 (B*F, heads, N, d), any strides; "
     "sources: int64 (S, F); out: C-contiguous, q's shape."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_attention_cpu",
                                    "Fused CPU attention kernels (see kernels/csrc/attention_cpu.c).", -1, methods};

PyMODINIT_FUNC PyInit__attention_cpu(void) { return PyModule_Create(&module); }
