"""Spatial projections in C++: convolutions with one shared kernel, and max pooling, as dense-projection functions.

A projection of `arsim.layers` is *spatial* when it is a `Conv` or pools its
input (``pool > 0``). Its weights live in the projection's `Synapses` like a
dense projection's (``w``, ``wb``, ``dw_acc``, so run-time arrays, the SGD
step and the learned-feedback step are shared with `arsim.brian.cpp_projection`),
but for a convolution synapse ``k`` is kernel entry ``k`` in OIHW order, not a
connection: the kernel exists once, and every position reads it (exact weight
sharing by construction; research/ar_cnn.md section 3.1).

The three operations, every copy of a batch at once, CBLAS ``gemm`` over the
one kernel (as Caffe's im2col / col2im, the AR authors' ``Unfold`` / ``Fold``):

forward drive (once per sample)
    ``a = K im2col(pool(xbar))``;
feedback (every step)
    ``fb = unpool(col2im(M^T D))`` with ``D = x_post [* f']``, ``M`` the kernel
    (``w``) or the backward kernel (``wb``); the pool routes each window's
    value to the unit that was its maximum in the stored forward pass (the
    first maximum in row-major order), every other unit gets 0 (the frozen
    pass: the argmax is recomputed from ``xbar``, which does not change
    during a sample);
update (start of the next sample)
    ``dK += D im2col(pool(xbar))^T``, summed over positions and copies.

A pooled dense projection is the plain ``gemm`` on the pooled input, with the
same routing of its feedback. The numpy implementations for the runtime device
are `arsim.layers`' operators. Brian2's array names come from
`arsim.brian.cpp_projection` (the one module that knows them).
"""

from __future__ import annotations

import numpy as np

from .cpp_projection import _add_cpp, _derivative_code, _function, _names, _numpy_carried, _real, _standalone, _types

__all__ = ["spatial", "weight_count", "add_spatial_projection", "spatial_accumulate"]


def spatial(op) -> bool:
    """Whether projection ``op`` (`arsim.layers`) needs the spatial functions (a convolution, or a pool on its input)."""
    return op is not None and (op.kind == "conv" or bool(op.pool))


def weight_count(op) -> int:
    """Entries of ``W^l``: a convolution's kernel, or the dense ``n_out x n_in`` (pooled input)."""
    return int(np.prod(op.weight_shape))


def _geometry(op, tag: str, real: str) -> str:
    """C++ helpers of one projection's geometry (constants baked in; names suffixed with ``tag``)."""
    c, h, w = op.in_shape
    p = op.pool or 1
    hp, wp = h // p, w // p
    code = f"""
// the max pool of one copy: pooled[(c hp + i) wp + j] = max of its {p}x{p} window of x (c, h, w)
static inline void arsim_pool_{tag}(const {real}* __restrict x, {real}* __restrict pooled)
{{
    for (int c = 0; c < {c}; c++)
        for (int i = 0; i < {hp}; i++)
            for (int j = 0; j < {wp}; j++)
            {{
                {real} best = x[(c * {h} + i * {p}) * {w} + j * {p}];
                for (int u = 0; u < {p}; u++)
                    for (int v = 0; v < {p}; v++)
                    {{
                        const {real} value = x[(c * {h} + i * {p} + u) * {w} + j * {p} + v];
                        if (value > best)
                            best = value;
                    }}
                pooled[(c * {hp} + i) * {wp} + j] = best;
            }}
}}

// routing back through the pool: each window's value goes to its first maximum in x, the other units get 0
static inline void arsim_unpool_{tag}(const {real}* __restrict x, const {real}* __restrict values, {real}* __restrict out)
{{
    for (int k = 0; k < {c * h * w}; k++)
        out[k] = 0.0;
    for (int c = 0; c < {c}; c++)
        for (int i = 0; i < {hp}; i++)
            for (int j = 0; j < {wp}; j++)
            {{
                int best = (c * {h} + i * {p}) * {w} + j * {p};
                for (int u = 0; u < {p}; u++)
                    for (int v = 0; v < {p}; v++)
                    {{
                        const int k = (c * {h} + i * {p} + u) * {w} + j * {p} + v;
                        if (x[k] > x[best])
                            best = k;
                    }}
                out[best] = values[(c * {hp} + i) * {wp} + j];
            }}
}}
"""
    if op.kind != "conv":
        return code
    k, s, pad = op.kernel, op.stride, op.padding
    _, ho, wo = op.out_shape
    return code + f"""
// im2col of one copy's (pooled) image (c, hp, wp): cols[(c k + u) k + v][column0 + i wo + j], row stride `stride`
static inline void arsim_im2col_{tag}(const {real}* __restrict image, {real}* __restrict cols, const size_t column0,
                                      const size_t stride)
{{
    for (int c = 0; c < {c}; c++)
        for (int u = 0; u < {k}; u++)
            for (int v = 0; v < {k}; v++)
            {{
                {real}* __restrict row = cols + (size_t)((c * {k} + u) * {k} + v) * stride + column0;
                for (int i = 0; i < {ho}; i++)
                {{
                    const int y = i * {s} + u - {pad};
                    for (int j = 0; j < {wo}; j++)
                    {{
                        const int z = j * {s} + v - {pad};
                        row[i * {wo} + j] = (y >= 0 && y < {hp} && z >= 0 && z < {wp}) ? image[(c * {hp} + y) * {wp} + z] : 0.0;
                    }}
                }}
            }}
}}

// col2im of one copy: image (c, hp, wp) = the sum of every column entry at the pixel it came from (the adjoint of im2col)
static inline void arsim_col2im_{tag}(const {real}* __restrict cols, const size_t column0, const size_t stride,
                                      {real}* __restrict image)
{{
    for (int k = 0; k < {c * hp * wp}; k++)
        image[k] = 0.0;
    for (int c = 0; c < {c}; c++)
        for (int u = 0; u < {k}; u++)
            for (int v = 0; v < {k}; v++)
            {{
                const {real}* __restrict row = cols + (size_t)((c * {k} + u) * {k} + v) * stride + column0;
                for (int i = 0; i < {ho}; i++)
                {{
                    const int y = i * {s} + u - {pad};
                    if (y < 0 || y >= {hp})
                        continue;
                    for (int j = 0; j < {wo}; j++)
                    {{
                        const int z = j * {s} + v - {pad};
                        if (z >= 0 && z < {wp})
                            image[(c * {hp} + y) * {wp} + z] += row[i * {wo} + j];
                    }}
                }}
            }}
}}
"""


def _shape(op) -> dict:
    """Template fields of a spatial projection's sizes."""
    c, h, w = op.in_shape
    fields = {"n_in": c * h * w, "n_pooled": int(np.prod(op.pooled_shape))}
    if op.kind == "conv":
        f, ho, wo = op.out_shape
        fields.update(n_out=f * ho * wo, channels=f, positions=ho * wo, patch=int(np.prod(op.weight_shape[1:])))
    else:
        fields.update(n_out=op.n_out)
    return fields


def _pooled_input(op, tag: str, copies: int, source: str) -> str:
    """C++ statements giving ``P``: the (pooled) input of every copy, ``copies x n_pooled`` row-major."""
    shape = _shape(op)
    if not op.pool:
        return f"const {_real()}* __restrict P = {source};"
    return f"""static std::vector<{_real()}> pooled_buffer((size_t){copies} * {shape['n_pooled']});
    {_real()}* __restrict P = pooled_buffer.data();
    for (int s = 0; s < {copies}; s++)
        arsim_pool_{tag}({source} + (size_t)s * {shape['n_in']}, P + (size_t)s * {shape['n_pooled']});"""


def _columns(op, tag: str, copies: int) -> str:
    """C++ statements giving ``X``: im2col of every copy's (pooled) input ``P``, ``patch x copies positions``."""
    shape = _shape(op)
    return f"""static std::vector<{_real()}> columns_buffer((size_t){shape['patch']} * {copies} * {shape['positions']});
    {_real()}* __restrict X = columns_buffer.data();
    for (int s = 0; s < {copies}; s++)
        arsim_im2col_{tag}(P + (size_t)s * {shape['n_pooled']}, X, (size_t)s * {shape['positions']},
                           (size_t){copies} * {shape['positions']});"""


def _channel_major(op, copies: int, expression: str, real: str) -> str:
    """C++ statements giving ``D`` (``channels x copies positions``) from ``expression`` of post unit ``k``."""
    shape = _shape(op)
    return f"""static std::vector<{real}> delta_buffer((size_t){shape['channels']} * {copies} * {shape['positions']});
    {real}* __restrict D = delta_buffer.data();
    for (int s = 0; s < {copies}; s++)
        for (int f = 0; f < {shape['channels']}; f++)
            for (int p = 0; p < {shape['positions']}; p++)
            {{
                const size_t k = ((size_t)s * {shape['channels']} + f) * {shape['positions']} + p;
                D[((size_t)f * {copies} + s) * {shape['positions']} + p] = {expression};
            }}"""


def add_spatial_projection(syn, pre, post, rule, op, functions: dict, forward_order: int, sample_dt, feedback_order: int | None,
                           copies: int, derivative: bool) -> None:
    """Schedule the forward drive and the feedback of the spatial projection ``syn`` (``op``) at the dense slots.

    ``derivative`` is this projection's (a convolution's may differ from the
    dense layers'). The relaxed forward passes are dense-only (the follow-up
    ran them on its MLP), so the current drive is not offered here.
    """
    from brian2 import get_device

    tag = syn.name
    shape = _shape(op)
    matrix = rule.backward_variable
    forward_func, feedback_func = f"arsim_{tag}_a", f"arsim_{tag}_feedback"

    def numpy_forward(tick):
        W = syn.variables["w"].get_value().reshape(op.weight_shape)
        xbar = pre.variables["xbar"].get_value().reshape(copies, shape["n_in"])
        post.variables["a"].get_value()[:] = op.forward(W, xbar)[0].ravel()
        return tick

    def numpy_feedback(tick, kind, slope, gain):
        M = syn.variables[matrix].get_value().reshape(op.weight_shape)
        xbar = pre.variables["xbar"].get_value().reshape(copies, shape["n_in"])
        carried = _numpy_carried(rule, post, functions, kind, slope, gain, derivative=derivative).reshape(copies, shape["n_out"])
        pre.variables["fb"].get_value()[:] = op.adjoint(M, carried, op._pool(xbar)[1]).ravel()
        return tick

    forward = _function(numpy_forward, ["float"])
    feedback = _function(numpy_feedback, ["float", "integer", "float", "float"])
    if _standalone():
        names = _names(get_device(), syn, pre, post)
        types = _types()
        real, gemm = types["real"], types["gemm"]
        helpers = _geometry(op, tag, real)
        if op.kind == "conv":
            # A (channels x copies positions) = K (channels x patch) X (patch x copies positions), then to a_post
            body = f"""{_pooled_input(op, tag, copies, names['xbar_pre'])}
    {_columns(op, tag, copies)}
    static std::vector<{real}> out_buffer((size_t){shape['channels']} * {copies} * {shape['positions']});
    {real}* __restrict A = out_buffer.data();
    {gemm}(CblasRowMajor, CblasNoTrans, CblasNoTrans, {shape['channels']}, {copies} * {shape['positions']}, {shape['patch']},
           1.0, {names['w']}, {shape['patch']}, X, {copies} * {shape['positions']}, 0.0, A, {copies} * {shape['positions']});
    {real}* __restrict a = {names['a_post']};
    for (int s = 0; s < {copies}; s++)
        for (int f = 0; f < {shape['channels']}; f++)
            for (int p = 0; p < {shape['positions']}; p++)
                a[((size_t)s * {shape['channels']} + f) * {shape['positions']} + p] = A[((size_t)f * {copies} + s) * {shape['positions']} + p];"""
        else:
            body = f"""{_pooled_input(op, tag, copies, names['xbar_pre'])}
    {gemm}(CblasRowMajor, CblasNoTrans, CblasTrans, {copies}, {shape['n_out']}, {shape['n_pooled']},
           1.0, P, {shape['n_pooled']}, {names['w']}, {shape['n_pooled']}, 0.0, {names['a_post']}, {shape['n_out']});"""
        code = f"{helpers}\nstatic double {forward_func}(const double tick)\n{{\n    {body}\n    return tick;\n}}\n"
        _add_cpp(forward, code, forward_func, blas=True, functions=functions)

    if _standalone() and feedback_order is not None:
        names = _names(get_device(), syn, pre, post)
        types = _types()
        real, gemm = types["real"], types["gemm"]
        helpers = _geometry(op, tag, real)
        decl, carried = _derivative_code(rule, names, "k", derivative=derivative)
        route = f"""const {real}* __restrict xbar = {names['xbar_pre']};
    {real}* __restrict fb = {names['fb_pre']};"""
        if op.kind == "conv":
            unpool = (f"arsim_unpool_{tag}(xbar + (size_t)s * {shape['n_in']}, image, fb + (size_t)s * {shape['n_in']});" if op.pool else
                      f"for (int k = 0; k < {shape['n_in']}; k++) fb[(size_t)s * {shape['n_in']} + k] = image[k];")
            body = f"""const {real}* __restrict x = {names['x_post']};
    {decl}
    {_channel_major(op, copies, carried, real)}
    // X (patch x copies positions) = M^T D, then col2im per copy: the transposed convolution
    static std::vector<{real}> columns_buffer((size_t){shape['patch']} * {copies} * {shape['positions']});
    {real}* __restrict X = columns_buffer.data();
    {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {shape['patch']}, {copies} * {shape['positions']}, {shape['channels']},
           1.0, {names[matrix]}, {shape['patch']}, D, {copies} * {shape['positions']}, 0.0, X, {copies} * {shape['positions']});
    static std::vector<{real}> image_buffer({shape['n_pooled']});
    {real}* __restrict image = image_buffer.data();
    {route}
    for (int s = 0; s < {copies}; s++)
    {{
        arsim_col2im_{tag}(X, (size_t)s * {shape['positions']}, (size_t){copies} * {shape['positions']}, image);
        {unpool}
    }}"""
        else:
            body = f"""const {real}* __restrict x = {names['x_post']};
    {decl}
    static std::vector<{real}> carried_buffer((size_t){copies} * {shape['n_out']});
    {real}* __restrict C = carried_buffer.data();
    for (size_t k = 0; k < (size_t){copies} * {shape['n_out']}; k++)
        C[k] = {carried};
    // G (copies x n_pooled) = C M, then routed through the pool of every copy
    static std::vector<{real}> pooled_buffer((size_t){copies} * {shape['n_pooled']});
    {real}* __restrict G = pooled_buffer.data();
    {gemm}(CblasRowMajor, CblasNoTrans, CblasNoTrans, {copies}, {shape['n_pooled']}, {shape['n_out']},
           1.0, C, {shape['n_out']}, {names[matrix]}, {shape['n_pooled']}, 0.0, G, {shape['n_pooled']});
    {route}
    for (int s = 0; s < {copies}; s++)
        arsim_unpool_{tag}(xbar + (size_t)s * {shape['n_in']}, G + (size_t)s * {shape['n_pooled']}, fb + (size_t)s * {shape['n_in']});"""
        code = (f"{helpers}\nstatic double {feedback_func}(const double tick, const int kind, const double slope, const double gain)\n"
                f"{{\n    {body}\n    return tick;\n}}\n")
        _add_cpp(feedback, code, feedback_func, blas=True, functions=functions)
    syn.namespace[f"{tag}_a"] = forward
    syn.run_regularly(f"proj_tick = {tag}_a(proj_tick)", dt=sample_dt, when="start", order=forward_order, name=f"{tag}_a")
    if feedback_order is not None:
        syn.namespace[f"{tag}_feedback"] = feedback
        syn.run_regularly(f"proj_tick = {tag}_feedback(proj_tick, act_kind_post, act_slope_post, err_gain_post)", when="groups",
                          order=feedback_order, name=f"{tag}_feedback")


def spatial_accumulate(syn, pre, post, rule, op, functions: dict, copies: int, func: str):
    """The accumulate `Function` of a spatial projection (`arsim.brian.cpp_projection.add_dense_plasticity` schedules it).

    ``dw_acc += D X^T`` (a kernel's entries summed over positions and copies)
    or ``D^T P`` (pooled dense), ``db_acc`` of the first copy ``+=`` the
    summed ``D``; zeroed at the first step of a run.
    """
    from brian2 import get_device

    shape = _shape(op)

    def numpy_accumulate(tick, gate, kind, slope, learn_bias, gain):
        dw = syn.variables["dw_acc"].get_value()
        db = post.variables["db_acc"].get_value()
        if not gate:
            dw[:] = 0.0
            db[:shape["n_out"]] = 0.0
            return tick
        delta = _numpy_carried(rule, post, functions, kind, slope, gain, derivative=True, update=True)
        delta = delta.reshape(copies, shape["n_out"])
        xbar = pre.variables["xbar"].get_value().reshape(copies, shape["n_in"])
        dw[:] += op.gradient(delta, xbar, None).ravel()
        db[:shape["n_out"]] += learn_bias * delta.sum(axis=0)
        return tick

    function = _function(numpy_accumulate, ["float", "integer", "integer", "float", "float", "float"])
    if _standalone():
        names = _names(get_device(), syn, pre, post)
        types = _types()
        real, gemm = types["real"], types["gemm"]
        decl, delta = _derivative_code(rule, names, "k", derivative=True, update=True)
        n_weights = weight_count(op)
        if op.kind == "conv":
            sums = f"""{_channel_major(op, copies, delta, real)}
    {_pooled_input(op, syn.name, copies, names['xbar_pre'])}
    {_columns(op, syn.name, copies)}
    {gemm}(CblasRowMajor, CblasNoTrans, CblasTrans, {shape['channels']}, {shape['patch']}, {copies} * {shape['positions']},
           1.0, D, {copies} * {shape['positions']}, X, {copies} * {shape['positions']}, 1.0, dw, {shape['patch']});
    for (int s = 0; s < {copies}; s++)
        for (int f = 0; f < {shape['channels']}; f++)
            for (int p = 0; p < {shape['positions']}; p++)
                db[f * {shape['positions']} + p] += learn_bias * D[((size_t)f * {copies} + s) * {shape['positions']} + p];"""
        else:
            sums = f"""static std::vector<{real}> delta_buffer((size_t){copies} * {shape['n_out']});
    {real}* __restrict D = delta_buffer.data();
    for (size_t k = 0; k < (size_t){copies} * {shape['n_out']}; k++)
        D[k] = {delta};
    {_pooled_input(op, syn.name, copies, names['xbar_pre'])}
    {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {shape['n_out']}, {shape['n_pooled']}, {copies},
           1.0, D, {shape['n_out']}, P, {shape['n_pooled']}, 1.0, dw, {shape['n_pooled']});
    for (int s = 0; s < {copies}; s++)
        for (int j = 0; j < {shape['n_out']}; j++)
            db[j] += learn_bias * D[(size_t)s * {shape['n_out']} + j];"""
        code = f"""{_geometry(op, syn.name, real)}
static double {func}(const double tick, const int gate, const int kind, const double slope, const double learn_bias,
                     const double gain)
{{
    {real}* __restrict dw = {names['dw_acc']};
    {real}* __restrict db = {names['db_acc_post']};
    if (!gate)
    {{
        // the first step of a run: no sample has relaxed yet
        for (size_t k = 0; k < (size_t){n_weights}; k++)
            dw[k] = 0.0;
        for (int j = 0; j < {shape['n_out']}; j++)
            db[j] = 0.0;
        return tick;
    }}
    const {real}* __restrict x = {names['x_post']};
    {decl}
    {sums}
    return tick;
}}
"""
        _add_cpp(function, code, func, blas=True, functions=functions)
    return function
