"""Dense projections: the mat-vecs of the relaxation and forward sweep as C++ loops.

With ``projection = "dense"`` a projection ``l`` (layer ``l`` -> ``l+1``)
keeps its weights in the Brian2 `Synapses` object (``w = W^l.ravel()`` and,
for a separate backward pathway, ``wb`` holding ``B^l[pre, post]`` in the
same layout, because the synapses are connected with explicit ``i, j`` so
that synapse ``k = post * n_pre + pre``, `arsim.brian.network.projection_indices`),
so run-time arrays and the plasticity code on ``w`` / ``wb`` are unchanged.
What leaves Brian2's ``(summed)`` variables (a scalar gather/scatter of
~1 ns per synapse and call) are the three mat-vecs of a projection:

``fb^l = B^l (x^{l+1} [* f'^{l+1}])``
    the feedback drive, every step, formerly ``fb_pre = ... : 1 (summed)``;
``anow^{l+1} = W^l x^l``
    the current drive of the relaxed forward pass, every step, formerly
    ``anow_post = w * x_pre : 1 (summed)``;
``a^{l+1} = W^l xbar^l``
    the forward drive, once per sample, formerly ``a_post = w * xbar_pre :
    1 (summed)`` (as a summed variable it cost as much per sample as the
    100 relaxation steps of the dense feedback at 784-300-300-100-10).

Each is a user `Function` (``stateless=False, auto_vectorise=False``) whose
C++ implementation loops over the contiguous weight array. It is called
from a ``run_regularly`` on a shared variable ``proj_tick`` of the Synapses
(``proj_tick = f(proj_tick)``), placed in the slot and order the summed
updater had, so the schedule of `arsim.brian.network` is unchanged; the forward
drive's ``run_regularly`` has the sample period as its ``dt`` (public API,
where the summed updater needed its private ``_clock`` replaced).

Batch copies (training with ``train.parallel = "batch"``)
------------------------------------------------------
With ``copies > 1`` every layer holds a whole minibatch, copy ``s`` of a
layer of ``n`` units being units ``s*n .. s*n+n-1``; the synapses still
connect only the first copies (one weight array). The three sums become
CBLAS ``dgemm`` (``sgemm`` in float32) over all copies, linked from the
``scipy-openblas32`` wheel or Intel MKL (``blas``, `arsim.brian.blas`), and `add_dense_plasticity`
adds the batch's summed update and the SGD step as two more functions.

Fragility (read before upgrading Brian2)
----------------------------------------
The C++ reaches Brian2's arrays through their global C++ symbols, the names
``device.get_array_name(var)`` returns: ``brian::_array_<group>_<var>``
(``double *``; ``float *`` with ``precision = "float32"``) for neuron
variables and ``brian::_dynamic_array_<syn>_<var>`` (``std::vector<double>``,
read with ``.data()`` on every call) for synaptic ones. These symbols, their types, the ``brian`` namespace and the fact that
the support code of a user function is compiled next to ``objects.h`` are
device internals, not documented API. Every use of them is in this module;
``tests/test_cpp_projection.py`` compares the dense backend with
independent numpy integrations to 1e-10 and is the regression test that
catches an upgrade breaking them, and ``tests/test_brian_internals.py``
checks the names and types against the installed Brian2 (keep ``setup.cfg``'s
brian2 upper bound at the newest release both have passed on).

The numpy implementation of the same functions (runtime device) reads and
writes the group's arrays through ``Variable.get_value()``, which returns
the live arrays on that target.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACTIVATION_CODES
from ..rules.base import PLASTICITY_SCALARS
from .blas import blas_library


__all__ = ["TICK_EQUATION", "SHARED_COUNTERS", "add_dense_projection", "add_dense_plasticity", "add_controller_drive",
           "add_error_connections", "add_drive", "add_operation", "add_noise_seed", "blas_compiler_kwds", "select_blas"]

#: shared variable of a dense projection on which the mat-vec functions are called
TICK_EQUATION = "proj_tick : 1 (shared)"

#: shared variables a run writes and `arsim.brian.devices` reads back: the kink crossings the run counted
#: (`arsim.rules.base.Rule.counts_kinks`) and the first update after which ``S^l`` was singular, with its
#: condition number (`arsim.rules.base.Rule.inverse_feedback`)
SHARED_COUNTERS = ("kinks", "singular_update", "singular_condition")


def _standalone() -> bool:
    """Whether the current device generates C++ standalone code."""
    from brian2 import get_device
    from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

    return isinstance(get_device(), CPPStandaloneDevice)


def _real() -> str:
    """C++ type of Brian2's floating-point arrays (``prefs.core.default_float_dtype``)."""
    from brian2 import prefs

    return "float" if np.dtype(prefs.core.default_float_dtype) == np.float32 else "double"


#: the CBLAS of the network being built (`select_blas`, called by `arsim.brian.network.build_network`)
_BLAS = {"name": "openblas"}


def select_blas(name: str) -> None:
    """Make the functions built from now on call the CBLAS ``name`` (`arsim.brian.blas`)."""
    blas_library(name)  # refuses a library that is not installed, before any code is generated
    _BLAS["name"] = name


def _types() -> dict:
    """Template fields of the floating-point type: ``real`` and the matching CBLAS ``gemm``."""
    real = _real()
    return {"real": real, "gemm": blas_library(_BLAS["name"]).gemm(real)}


def blas_compiler_kwds() -> dict:
    """Compiler arguments that link a user function to the selected CBLAS (`arsim.brian.blas`).

    The library path is baked into the binary (rpath), so a build belongs to
    one environment (`arsim.brian.devices` puts it into the build key).
    """
    return blas_library(_BLAS["name"]).compiler_kwds()


def _array_name(device, owner, var: str) -> str:
    """C++ expression of the array of ``owner.var``: a pointer for neuron variables, ``.data()`` of synaptic ones."""
    from brian2 import Synapses

    if isinstance(owner, Synapses):
        return f"brian::{device.get_array_name(owner.variables[var], access_data=False)}.data()"
    return f"brian::{device.get_array_name(owner.variables[var])}"


def _names(device, syn, pre, post) -> dict:
    """C++ expressions of the arrays a dense projection touches (device-internal names)."""
    names = {}
    for var in ("w", "wb", "dw_acc", "amp_acc", "null_acc"):
        if var in syn.variables:
            names[var] = f"brian::{device.get_array_name(syn.variables[var], access_data=False)}.data()"
    for var in SHARED_COUNTERS:
        if var in syn.variables:
            names[var] = f"brian::{device.get_array_name(syn.variables[var])}"  # a shared variable: a static array
    for prefix, group in (("pre", pre), ("post", post)):
        for var in ("x", "xbar", "fp", "fb", "a", "anow", "b", "db_acc", "mu", "err_gain"):
            if var in group.variables:
                names[f"{var}_{prefix}"] = f"brian::{device.get_array_name(group.variables[var])}"
    return names


_FEEDBACK_CPP = """
static double {func}(const double tick, const int kind, const double slope, const double gain)
{{
    // fb_pre[i] = sum_j M[j, i] * c_j with M = {matrix} (n_post x n_pre, row-major):
    // four rows per pass over fb (a plain axpy per row is ~30 % slower at 300 x 300)
    const {real}* __restrict M = {matrix_ptr};
    const {real}* __restrict x = {x_post};
    {real}* __restrict fb = {fb_pre};
    {derivative_decl}
    for (int i = 0; i < {n_pre}; i++)
        fb[i] = 0.0;
    int j = 0;
    for (; j + 4 <= {n_post}; j += 4)
    {{
        const {real} c0 = {carried0}, c1 = {carried1}, c2 = {carried2}, c3 = {carried3};
        const {real}* __restrict r0 = M + (size_t)j * {n_pre};
        const {real}* __restrict r1 = r0 + {n_pre};
        const {real}* __restrict r2 = r1 + {n_pre};
        const {real}* __restrict r3 = r2 + {n_pre};
        for (int i = 0; i < {n_pre}; i++)
            fb[i] += r0[i] * c0 + r1[i] * c1 + r2[i] * c2 + r3[i] * c3;
    }}
    for (; j < {n_post}; j++)
    {{
        const {real} c = {carried};
        const {real}* __restrict row = M + (size_t)j * {n_pre};
        for (int i = 0; i < {n_pre}; i++)
            fb[i] += row[i] * c;
    }}
    return tick;
}}
"""

_DRIVE_CPP = """
static double {func}(const double tick)
{{
    // {target}_post[j] = sum_i W[j, i] * {source}_pre[i]
    const {real}* __restrict W = {w};
    const {real}* __restrict v = {source_pre};
    {real}* __restrict out = {target_post};
    for (int j = 0; j < {n_post}; j++)
    {{
        const {real}* __restrict row = W + (size_t)j * {n_pre};
        {real} s = 0;
        for (int i = 0; i < {n_pre}; i++)
            s += row[i] * v[i];
        out[j] = s;
    }}
    return tick;
}}
"""


# A batch held as ``copies`` parallel copies of every layer (copy s of a layer
# of n units is units s*n .. s*n+n-1, a row of a row-major copies x n matrix):
# the same sums become matrix-matrix products, done by CBLAS dgemm, which
# reuses every weight it loads for all copies (the plain loops above are as
# fast as BLAS for one copy, and far slower for 64).

_FEEDBACK_GEMM_CPP = """
static double {func}(const double tick, const int kind, const double slope, const double gain)
{{
    // fb_pre (copies x n_pre) = C (copies x n_post) M (n_post x n_pre), M = {matrix}
    static std::vector<{real}> carried_buffer({copies} * {n_post});
    const {real}* __restrict x = {x_post};
    {derivative_decl}
    {carried_fill}
    {gemm}(CblasRowMajor, CblasNoTrans, CblasNoTrans, {copies}, {n_pre}, {n_post},
                      1.0, C, {n_post}, {matrix_ptr}, {n_pre}, 0.0, {fb_pre}, {n_pre});
    return tick;
}}
"""

_DRIVE_GEMM_CPP = """
static double {func}(const double tick)
{{
    // {target}_post (copies x n_post) = {source}_pre (copies x n_pre) W^T
    {gemm}(CblasRowMajor, CblasNoTrans, CblasTrans, {copies}, {n_post}, {n_pre},
                      1.0, {source_pre}, {n_pre}, {w}, {n_pre}, 0.0, {target_post}, {n_post});
    return tick;
}}
"""

_ACCUMULATE_GEMM_CPP = """
static double {func}(const double tick, const int gate, const int kind, const double slope, const double learn_bias,
                     const double gain)
{{
    // adds this period's local updates (every copy) to the batch's sums:
    // dw_acc (n_post x n_pre) += D^T P with D = x_post * f' (copies x n_post; error units:
    // the learning signal (mu - x) gain * f') and
    // P = {pre_activity}_pre (copies x n_pre); db_acc of the first copy += sum_s D[s, :];
    // the apply step zeroes them after a batch
    {real}* __restrict dw = {dw_acc};
    {real}* __restrict db = {db_acc_post};
    {extra_decl}
    if (!gate)
    {{
        // the first step of a run: no sample has relaxed yet
        for (size_t k = 0; k < (size_t){n_post} * {n_pre}; k++)
        {{
            dw[k] = 0.0;
            {extra_zero}
        }}
        for (int j = 0; j < {n_post}; j++)
            db[j] = 0.0;
        {extra_reset}
        return tick;
    }}
    static std::vector<{real}> delta_buffer({copies} * {n_post});
    {real}* __restrict D = delta_buffer.data();
    const {real}* __restrict x = {x_post};
    {derivative_decl}
    for (int k = 0; k < {copies} * {n_post}; k++)
        D[k] = {delta};
    {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {n_post}, {n_pre}, {copies},
                      1.0, D, {n_post}, {pre_ptr}, {n_pre}, 1.0, dw, {n_pre});
    for (int j = 0; j < {n_post}; j++)
    {{
        double sum = 0.0;
        for (int s = 0; s < {copies}; s++)
            sum += D[s * {n_post} + j];
        db[j] += learn_bias * sum;
    }}
    {extra_code}
    return tick;
}}
"""

# the amp primitive's batch sum <r x^T> (n_post x n_pre layout of wb): R^T X with
# R = a_post = W xbar (the drive without bias) and X = xbar_pre of every copy
_AMP_ACCUMULATE_CPP = """
    {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {n_post}, {n_pre}, {copies},
                      1.0, {a_post}, {n_post}, {xbar_pre}, {n_pre}, 1.0, amp, {n_pre});
"""

# the null primitive's batch sum <r (B r)^T>: R^T (R Bt), Bt = wb (n_post x n_pre)
_NULL_ACCUMULATE_CPP = """
    static std::vector<{real}> projected_buffer({copies} * {n_pre});
    {real}* __restrict Q = projected_buffer.data();
    {gemm}(CblasRowMajor, CblasNoTrans, CblasNoTrans, {copies}, {n_pre}, {n_post},
                      1.0, {a_post}, {n_post}, {wb}, {n_pre}, 0.0, Q, {n_pre});
    {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {n_post}, {n_pre}, {copies},
                      1.0, {a_post}, {n_post}, Q, {n_pre}, 1.0, null_sum, {n_pre});
"""

# the kink crossings of the relaxed state (GAIT-prop): units whose carried argument xbar - g f'^2 x
# lies on the other side of the leaky ReLU's kink than xbar (g: the layer's err_gain, gamma)
_KINK_COUNT_CPP = """
    if (kind == {leaky_code})
    {{
        const {real}* __restrict above = {xbar_post};
        const {real}* __restrict slope_fp = {fp_post};
        const {real} g = {err_gain_post}[0];
        int64_t crossed = 0;
        for (int k = 0; k < {copies} * {n_post}; k++)
        {{
            const {real} argument = above[k] - g * slope_fp[k] * slope_fp[k] * x[k];
            crossed += (argument >= 0) != (above[k] >= 0);
        }}
        {kinks}[0] += crossed;
    }}
"""

_APPLY_CPP = """
{declarations}
static double {func}(const double tick, const int64_t t_step, const int steps_per_sample, const int batch_size,
                     const double lr, const double wdecay, const double eta_b, const double c_tied, const double c_decay,
                     const double c_amp, const double c_null, const double b_scale, const double m_eta,
                     const double m_decay, const double m_amp, const double c_orth)
{{
    // at the end of a batch: the SGD step w <- w - lr (dw + wdecay w), every copy of the
    // bias -= lr db, the rule's backward step on wb (arsim.rules.base.PLASTICITY_SCALARS),
    // then the batch's sums are cleared
    if (t_step == 0)
        return tick;
    const int64_t period = t_step / steps_per_sample;
    const int64_t periods_per_batch = batch_size / {copies};
    if (period % periods_per_batch != 0)
        return tick;
    const int64_t batch_index = period / periods_per_batch - 1;
    (void)batch_index;
    {real}* __restrict dw = {dw_acc};
    {real}* __restrict w = {w};
    {backward_decl}
    {before_code}
    for (size_t k = 0; k < (size_t){n_weights}; k++)
    {{
        const {real} w_old = w[k];
        w[k] = w_old - lr * (dw[k] + wdecay * w_old);
        {backward_step}
        dw[k] = 0.0;
    }}
    {real}* __restrict db = {db_acc_post};
    {real}* __restrict b = {b_post};
    for (int s = 0; s < {copies}; s++)
        for (int j = 0; j < {n_post}; j++)
            b[s * {n_post} + j] -= lr * db[j];
    for (int j = 0; j < {n_post}; j++)
        db[j] = 0.0;
    {after_code}
    return tick;
}}
"""

# the soft orthogonality penalty (GAIT-prop), from the weights the batch was computed with: dw += 4 c_orth
# W (G - diag G), G = W^T W over the m columns W reads (the others are 0, and so is their penalty)
_ORTHOGONALITY_CPP = """
    if (c_orth != 0)
    {{
        static std::vector<{real}> gram_buffer((size_t){columns} * {columns});
        {real}* __restrict G = gram_buffer.data();
        {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {columns}, {columns}, {n_post},
                          1.0, w, {n_pre}, w, {n_pre}, 0.0, G, {columns});
        for (int i = 0; i < {columns}; i++)
            G[(size_t)i * {columns} + i] = 0.0;
        {gemm}(CblasRowMajor, CblasNoTrans, CblasNoTrans, {n_post}, {columns}, {columns},
                          4.0 * c_orth, w, {n_pre}, G, {columns}, 1.0, dw, {n_pre});
    }}
"""

# the columns beyond those W reads stay 0 (GAIT-prop's tower form, `Rule.constrain_weights`)
_ZERO_COLUMNS_CPP = """
    for (int j = 0; j < {n_post}; j++)
        for (int i = {columns}; i < {n_pre}; i++)
            w[(size_t)j * {n_pre} + i] = 0.0;
"""

# the exact inverse of S = W[:, :n] (n = n_post) after the update, into wb = B^T with B = [S^-1; 0]:
# S's row-major copy is S^T column-major, whose LAPACK inverse (S^T)^-1 column-major is S^-1 row-major.
# The guard is the 1-norm condition number ||S||_1 ||S^-1||_1 (numpy's side: arsim.rules.gait); the first
# singular update and its number are recorded for `Rule.check_run`, and wb becomes NaN
_INVERSE_CPP = """
    {{
        static std::vector<{real}> square_buffer((size_t){n_post} * {n_post});
        static std::vector<int> pivots({n_post});
        {real}* __restrict A = square_buffer.data();
        // ||M||_1 of the n x n block of a row-major M (row stride ld), its largest column sum;
        // NaN if an entry is not finite (the maximum alone would skip a NaN column)
        auto norm1 = [](const {real}* M, const int ld)
        {{
            double largest = 0.0, total = 0.0;
            for (int i = 0; i < {n_post}; i++)
            {{
                double column = 0.0;
                for (int j = 0; j < {n_post}; j++)
                    column += fabs((double)M[(size_t)j * ld + i]);
                largest = column > largest ? column : largest;
                total += column;
            }}
            return std::isfinite(total) ? largest : NAN;
        }};
        const double norm = norm1(w, {n_pre});
        for (int j = 0; j < {n_post}; j++)
            for (int i = 0; i < {n_post}; i++)
                A[(size_t)j * {n_post} + i] = w[(size_t)j * {n_pre} + i];
        double condition = INFINITY;
        if (std::isfinite(norm))
        {{
            int info = {getrf}(102, {n_post}, {n_post}, A, {n_post}, pivots.data());
            if (info == 0)
                info = {getri}(102, {n_post}, A, {n_post}, pivots.data());
            if (info == 0)
                condition = norm * norm1(A, {n_post});  // NaN if the inverse is not finite: refused below
        }}
        if (!(condition < {max_condition}))
        {{
            // diverged weights (norm not finite) are reported where the weights are checked
            if (std::isfinite(norm) && {singular_update}[0] == 0)
            {{
                {singular_update}[0] = batch_index + 1;
                {singular_condition}[0] = condition;
            }}
            for (size_t k = 0; k < (size_t){n_post} * {n_pre}; k++)
                wb[k] = NAN;
        }}
        else
        {{
            for (int j = 0; j < {n_post}; j++)
                for (int i = 0; i < {n_pre}; i++)
                    wb[(size_t)j * {n_pre} + i] = i < {n_post} ? A[(size_t)i * {n_post} + j] : 0.0;
        }}
    }}
"""

_LAPACKE_DECLARATIONS = """
extern "C" int {getrf}(int layout, int m, int n, {real}* a, int lda, int* ipiv);
extern "C" int {getri}(int layout, int n, {real}* a, int lda, const int* ipiv);
"""

# the mirror phase (weight mirror): per step, noise X (M x n_pre) from the run's noise
# array, R = X W^T, and wb <- wb - m_eta (2 m_decay wb - m_amp R^T X / M)
_MIRROR_CPP = """
    {{
        static std::vector<{real}> r_buffer((size_t){samples} * {n_post});
        static std::vector<{real}> g_buffer((size_t){n_post} * {n_pre});
        {real}* __restrict R = r_buffer.data();
        {real}* __restrict G = g_buffer.data();
        for (int step = 0; step < {steps}; step++)
        {{
            const {real}* __restrict X = {noise} + ((size_t)(batch_index * {steps} + step) * {samples}) * {n_pre};
            {gemm}(CblasRowMajor, CblasNoTrans, CblasTrans, {samples}, {n_post}, {n_pre},
                              1.0, X, {n_pre}, w, {n_pre}, 0.0, R, {n_post});
            {gemm}(CblasRowMajor, CblasTrans, CblasNoTrans, {n_post}, {n_pre}, {samples},
                              1.0, R, {n_post}, X, {n_pre}, 0.0, G, {n_pre});
            for (size_t k = 0; k < (size_t){n_post} * {n_pre}; k++)
                wb[k] = wb[k] - m_eta * (2 * m_decay * wb[k] - m_amp * G[k] / {samples});
        }}
    }}
"""


def _derivative_code(rule, names: dict, index: str, derivative: bool | None = None, update: bool = False) -> tuple[str, str]:
    """Declarations and the C++ expression of the carried activity ``c * f'`` at unit ``index``.

    ``c`` is the rule's (`arsim.rules.base.Rule.carried_cpp`): ``x`` for AR and
    the feedback-alignment family, a prediction error for PC, a target's
    pre-activation displacement for GAIT-prop; ``gain`` is the function's
    argument (``err_gain`` in the feedback, ``signal_gain`` in the update).
    ``derivative`` (default: the rule's, which applies to the feedback) False
    gives ``c`` alone; the local update always carries f'.
    """
    real = _real()
    derivative = rule.derivative if derivative is None else derivative
    current = (rule.update_derivative_variable if update else rule.derivative_variable) == "fpnow"
    decl, carried = rule.carried_cpp(names, index, real, update)
    if derivative:
        if current:
            decl += [f"const {real}* __restrict anow = {names['anow_post']};", f"const {real}* __restrict bias = {names['b_post']};"]
            carried += f" * arsim_activation_derivative(anow[{index}] + bias[{index}], kind, slope)"
        else:
            decl.append(f"const {real}* __restrict d = {names['fp_post']};")
            carried += f" * d[{index}]"
    # a rule's expression and the derivative may need the same array: declare it once
    return "\n    ".join(dict.fromkeys(decl)), carried


def _numpy_carried(rule, post, functions, kind, slope, gain, derivative: bool | None = None, update: bool = False):
    """The carried activity of every unit, as in `_derivative_code`, for the runtime target."""
    derivative = rule.derivative if derivative is None else derivative
    carried = rule.carried_numpy(post, functions, kind, slope, gain, update)
    if derivative and (rule.update_derivative_variable if update else rule.derivative_variable) == "fpnow":
        current = post.variables["anow"].get_value() + post.variables["b"].get_value()
        carried = carried * functions["act_fp"].pyfunc(current, kind, slope)
    elif derivative:
        carried = carried * post.variables["fp"].get_value()
    return carried


def _add_cpp(function, code: str, func: str, blas: bool = False, functions=None) -> None:
    """Attach the C++ implementation ``func`` (standalone only).

    ``blas`` links CBLAS; of ``functions`` (the activation `Function` s
    ``act_f``, ``act_fp``), those the code calls (``arsim_activation``,
    ``arsim_activation_derivative``) are its dependencies.
    """
    calls = {"act_f": "arsim_activation(", "act_fp": "arsim_activation_derivative(", "act_finv": "arsim_activation_inverse("}
    dependencies = {name: functions[name] for name, call in calls.items() if functions and call in code} or None
    kwds = {"compiler_kwds": blas_compiler_kwds()} if blas else {}
    function.implementations.add_implementation("cpp", code, name=func, dependencies=dependencies, **kwds)


def _function(pyfunc, arg_types: list):
    from brian2 import Function

    return Function(
        pyfunc, arg_units=[1] * len(arg_types), return_unit=1, arg_types=arg_types, return_type="float",
        stateless=False, auto_vectorise=False,
    )


def _feedback_function(syn, pre, post, rule, functions, copies: int):
    """`Function` ``f(tick, act_kind_post, act_slope_post, err_gain_post)`` that writes ``fb_pre``."""
    from brian2 import get_device

    n_pre, n_post = len(pre) // copies, len(post) // copies
    matrix = rule.backward_variable
    func = f"arsim_{syn.name}_feedback"

    def numpy_feedback(tick, kind, slope, gain):
        M = syn.variables[matrix].get_value().reshape(n_post, n_pre)
        carried = _numpy_carried(rule, post, functions, kind, slope, gain).reshape(copies, n_post)
        pre.variables["fb"].get_value()[:] = (carried @ M).ravel()
        return tick

    function = _function(numpy_feedback, ["float", "integer", "float", "float"])
    if _standalone():
        names = _names(get_device(), syn, pre, post)
        if copies > 1:
            decl, carried = _derivative_code(rule, names, "k")
            if rule.derivative or rule.carries_expression:
                fill = (f"{_real()}* __restrict C = carried_buffer.data();\n"
                        f"    for (int k = 0; k < {copies} * {n_post}; k++)\n        C[k] = {carried};")
            else:
                fill = f"const {_real()}* __restrict C = x;"
            code = _FEEDBACK_GEMM_CPP.format(
                **_types(), func=func, matrix=matrix, matrix_ptr=names[matrix], x_post=names["x_post"], fb_pre=names["fb_pre"],
                derivative_decl=decl, carried_fill=fill, n_pre=n_pre, n_post=n_post, copies=copies,
            )
        else:
            decl, carried = _derivative_code(rule, names, "@")
            rows = {f"carried{k}": carried.replace("@", f"j + {k}") for k in range(4)}
            code = _FEEDBACK_CPP.format(
                **_types(), func=func, matrix=matrix, matrix_ptr=names[matrix], x_post=names["x_post"], fb_pre=names["fb_pre"],
                derivative_decl=decl, carried=carried.replace("@", "j"), n_pre=n_pre, n_post=n_post, **rows,
            )
        _add_cpp(function, code, func, blas=copies > 1, functions=functions)
    return function


def _drive_function(syn, pre, post, source: str, target: str, copies: int):
    """`Function` ``f(tick)`` that writes ``target_post = W source_pre`` (for every copy)."""
    from brian2 import get_device

    n_pre, n_post = len(pre) // copies, len(post) // copies
    func = f"arsim_{syn.name}_{target}"

    def numpy_drive(tick):
        W = syn.variables["w"].get_value().reshape(n_post, n_pre)
        source_values = pre.variables[source].get_value().reshape(copies, n_pre)
        post.variables[target].get_value()[:] = (source_values @ W.T).ravel()
        return tick

    function = _function(numpy_drive, ["float"])
    if _standalone():
        names = _names(get_device(), syn, pre, post)
        template = _DRIVE_GEMM_CPP if copies > 1 else _DRIVE_CPP
        device = get_device()
        code = template.format(
            **_types(), func=func, w=names["w"], source=source, target=target, source_pre=_array_name(device, pre, source),
            target_post=_array_name(device, post, target), n_pre=n_pre, n_post=n_post, copies=copies,
        )
        _add_cpp(function, code, func, blas=copies > 1)
    return function


def add_dense_projection(syn, pre, post, rule, functions: dict, forward_order: int, sample_dt,
                         feedback_order: int | None, current_drive_order: int | None, copies: int = 1) -> None:
    """Schedule the mat-vecs of projection ``syn`` (pre -> post).

    ``syn`` must hold ``TICK_EQUATION`` in its model, be connected with
    `arsim.brian.network.projection_indices` (between the first copies of the
    layers) and have a namespace of its own (the functions are added to it).

    Parameters
    ----------
    rule : arsim.rules.Rule
        Decides the backward matrix (``w`` or ``wb``) and the carried
        quantity (``x``, ``x * fp`` or ``x * f'(anow + b)``).
    functions : dict
        The activation `Function` s ``act_f``, ``act_fp``
        (`arsim.activations.brian_functions`), needed by the relaxed forward
        pass and by strict error units.
    forward_order, sample_dt : int or None, Quantity
        ``a_post = W xbar_pre`` runs once per sample (period ``sample_dt``)
        at this order of slot ``start``; None for a feedback-only pathway
        (direct feedback from the output, which carries no forward drive).
    feedback_order : int or None
        Order in slot ``groups`` of ``fb_pre = B (x [* f'])_post``: that of
        the summed updater it replaces (the pre-synaptic layer's order - 1);
        None for the first projection (the input does not relax).
    current_drive_order : int or None
        Order in slot ``start`` of ``anow_post = W x_pre`` on every step
        (relaxed forward pass); None if the forward pass is frozen.
    copies : int
        Parallel copies of every layer (one per sample of a batch); the
        groups hold ``copies * n`` units and every sum is done for each copy
        with the one weight array (CBLAS dgemm when ``copies > 1``).
    """
    operations = [] if forward_order is None else [("a", "xbar", "start", forward_order, sample_dt)]
    if current_drive_order is not None:
        operations.append(("anow", "x", "start", current_drive_order, None))
    for target, source, when, order, dt in operations:
        name = f"{syn.name}_{target}"
        syn.namespace[name] = _drive_function(syn, pre, post, source, target, copies)
        syn.run_regularly(f"proj_tick = {name}(proj_tick)", dt=dt, when=when, order=order, name=name)
    if feedback_order is not None:
        name = f"{syn.name}_feedback"
        syn.namespace[name] = _feedback_function(syn, pre, post, rule, functions, copies)
        syn.run_regularly(
            f"proj_tick = {name}(proj_tick, act_kind_post, act_slope_post, err_gain_post)", when="groups",
            order=feedback_order, name=name,
        )


def _numpy_inverse(syn, W, n_pre: int, n_post: int, max_condition: float, batch_index: int) -> None:
    """`_INVERSE_CPP` for the runtime target: ``wb`` from the inverse of ``W[:, :n_post]``, with the same guard."""
    square = W[:, :n_post]
    norm = np.linalg.norm(square, 1)
    condition, inverse = np.inf, None
    if np.isfinite(norm):
        try:
            inverse = np.linalg.inv(square)
            condition = norm * np.linalg.norm(inverse, 1)
        except np.linalg.LinAlgError:
            pass  # an exactly singular block: infinite condition number
    wb = syn.variables["wb"].get_value()
    if not condition < max_condition:
        if np.isfinite(norm) and syn.variables["singular_update"].get_value()[0] == 0:
            syn.variables["singular_update"].get_value()[0] = batch_index + 1
            syn.variables["singular_condition"].get_value()[0] = condition
        wb[:] = np.nan
        return
    full = np.zeros((n_pre, n_post))
    full[:n_post] = inverse
    wb[:] = full.T.ravel()


def add_dense_plasticity(syn, pre, post, rule, functions: dict, copies: int, sample_dt, accumulate_order: int,
                         apply_order: int, holds_backward: bool, noise_group=None, op=None, columns: int | None = None,
                         inverts: bool = False, counts_kinks: bool = False) -> None:
    """The learning step of projection ``syn`` (dense projections, any number of copies).

    At slot ``start`` of every sample period, ``accumulate_order`` adds the
    period's local updates (all copies) to the batch's sums ``dw_acc``
    (synapses) and ``db_acc`` (first copy of ``post``), plus the sums of
    the rule's training-activity primitives (``amp_acc``, ``null_acc``);
    at ``apply_order``, after the last period of a batch, the SGD step,
    the bias step and the rule's backward step on ``wb`` run and the sums
    are cleared. With ``copies = batch_size`` every period is a batch;
    with one copy the sums cover ``batch_size`` periods, exactly what the
    summed synaptic updates of ``projection = "synapses"`` do. Between the
    two operations the alignment monitors see the batch's update and the
    weights it was computed with.

    Parameters
    ----------
    rule : arsim.rules.Rule
        Decides the carried derivative, the pre-synaptic activity and the
        backward step (tied, primitives, sign, mirror).
    holds_backward : bool
        Whether ``syn`` holds the rule's ``wb`` (learned or recomputed here).
    noise_group : NeuronGroup, optional
        The mirror noise of this projection (``v``, one run's worth).
    op : arsim.layers projection, optional
        A spatial projection's geometry (convolution or pooled input): its
        accumulate is `arsim.brian.conv_projection.spatial_accumulate` and its
        SGD step runs over the kernel's entries.
    columns : int, optional
        How many of its inputs ``W`` reads (`arsim.rules.base.Rule.input_columns`):
        the others stay 0 after every update (default: all).
    inverts : bool
        After every update ``wb`` becomes the transposed inverse of ``W``'s
        square block (`arsim.rules.base.Rule.inverse_feedback`), guarded by its
        condition number; ``syn`` holds ``singular_update`` and ``singular_condition``.
    counts_kinks : bool
        The accumulate step counts the kink crossings of ``post`` into ``syn.kinks``
        (`arsim.rules.base.Rule.counts_kinks`).
    """
    from brian2 import get_device

    from .conv_projection import spatial, spatial_accumulate, weight_count

    n_pre, n_post = len(pre) // copies, len(post) // copies
    n_weights = weight_count(op) if spatial(op) else n_pre * n_post
    pre_activity = rule.presynaptic_activity
    primitives = rule.train_primitives if holds_backward else ()
    tied = rule.tied and holds_backward
    steps, samples = rule.mirror_shape() if (rule.mirror and noise_group is not None) else (0, 0)
    sign = rule.sign and holds_backward
    columns = n_pre if columns is None or spatial(op) else columns
    penalty = rule.orthogonality_penalty and not spatial(op)
    if inverts and (spatial(op) or not holds_backward or n_post > columns):
        raise ValueError(f"{syn.name}: an inverse feedback needs a dense projection holding wb with n_post <= its columns")
    max_condition = rule.MAX_CONDITION
    leaky_code = ACTIVATION_CODES["leaky_relu"]
    accumulate, apply = f"arsim_{syn.name}_accumulate_batch", f"arsim_{syn.name}_apply_batch"

    def numpy_accumulate(tick, gate, kind, slope, learn_bias, gain):
        dw = syn.variables["dw_acc"].get_value()
        db = post.variables["db_acc"].get_value()
        sums = [syn.variables[v].get_value() for v in ("amp_acc", "null_acc") if v in syn.variables]
        if not gate:
            dw[:] = 0.0
            db[:n_post] = 0.0
            for acc in sums:
                acc[:] = 0.0
            if counts_kinks:
                syn.variables["kinks"].get_value()[0] = 0.0
            return tick
        if counts_kinks and kind == leaky_code:
            above, fp, x = (post.variables[v].get_value() for v in ("xbar", "fp", "x"))
            argument = above - post.variables["err_gain"].get_value() * fp * fp * x
            crossed = np.count_nonzero((argument >= 0) != (above >= 0))
            syn.variables["kinks"].get_value()[0] += crossed
        delta = _numpy_carried(rule, post, functions, kind, slope, gain, derivative=True, update=True).reshape(copies, n_post)
        activity = pre.variables[pre_activity].get_value().reshape(copies, n_pre)
        dw[:] += (delta.T @ activity).ravel()
        db[:n_post] += learn_bias * delta.sum(axis=0)
        R = post.variables["a"].get_value().reshape(copies, n_post)
        X = pre.variables["xbar"].get_value().reshape(copies, n_pre)
        if "amp" in primitives:
            syn.variables["amp_acc"].get_value()[:] += (R.T @ X).ravel()
        if "null" in primitives:
            Bt = syn.variables["wb"].get_value().reshape(n_post, n_pre)
            syn.variables["null_acc"].get_value()[:] += (R.T @ (R @ Bt)).ravel()
        return tick

    def numpy_apply(tick, t_step, steps_per_sample, batch_size, lr, wdecay, eta_b, c_tied, c_decay, c_amp, c_null,
                    b_scale, m_eta, m_decay, m_amp, c_orth):
        t_step, steps_per_sample, batch_size = int(t_step), int(steps_per_sample), int(batch_size)
        per_batch = batch_size // copies
        period = t_step // steps_per_sample
        if t_step == 0 or period % per_batch:
            return tick
        batch_index = period // per_batch - 1
        dw = syn.variables["dw_acc"].get_value()
        w = syn.variables["w"].get_value()
        w_old = w.copy()
        if penalty and c_orth:
            W = w_old.reshape(n_post, n_pre)[:, :columns]
            gram = W.T @ W
            np.fill_diagonal(gram, 0.0)
            dw.reshape(n_post, n_pre)[:, :columns] += 4.0 * c_orth * (W @ gram)
        w[:] = w_old - lr * (dw + wdecay * w_old)
        if columns < n_pre:
            w.reshape(n_post, n_pre)[:, columns:] = 0.0
        if inverts:
            _numpy_inverse(syn, w.reshape(n_post, n_pre), n_pre, n_post, max_condition, batch_index)
        if holds_backward:
            wb = syn.variables["wb"].get_value()
            if tied or primitives:
                grad = c_tied * dw if tied else 0.0 * dw
                grad = grad + 2 * c_decay * wb
                if "amp" in primitives:
                    grad = grad - c_amp * syn.variables["amp_acc"].get_value() / batch_size
                if "null" in primitives:
                    grad = grad + 2 * c_null * syn.variables["null_acc"].get_value() / batch_size
                wb[:] = wb - eta_b * grad
            if sign:
                wb[:] = b_scale * np.sign(w)
            if steps:
                noise = noise_group.variables["v"].get_value().reshape(-1, steps, samples, n_pre)
                W = w.reshape(n_post, n_pre)
                for X in noise[batch_index]:
                    G = ((X @ W.T).T @ X).ravel()
                    wb[:] = wb - m_eta * (2 * m_decay * wb - m_amp * G / samples)
        b = post.variables["b"].get_value().reshape(copies, n_post)
        db = post.variables["db_acc"].get_value()
        b -= lr * db[:n_post]
        dw[:] = 0.0
        db[:n_post] = 0.0
        for v in ("amp_acc", "null_acc"):
            if v in syn.variables:
                syn.variables[v].get_value()[:] = 0.0
        return tick

    accumulate_function = _function(numpy_accumulate, ["float", "integer", "integer", "float", "float", "float"])
    apply_function = _function(numpy_apply, ["float", "integer", "integer", "integer"] + ["float"] * 12)
    if spatial(op):
        accumulate_function = spatial_accumulate(syn, pre, post, rule, op, functions, copies, accumulate)
    if _standalone():
        names = _names(get_device(), syn, pre, post)
        decl, delta = _derivative_code(rule, names, "k", derivative=True, update=True)
        fields = dict(**_types(), n_pre=n_pre, n_post=n_post, copies=copies, a_post=names["a_post"],
                      xbar_pre=names["xbar_pre"], wb=names.get("wb"), n_weights=n_weights)
        extra_decl, extra_zero, extra_code, extra_reset = [], [], [], []
        if counts_kinks:
            extra_reset.append(f"{names['kinks']}[0] = 0.0;")
            extra_code.append(_KINK_COUNT_CPP.format(**fields, leaky_code=leaky_code, xbar_post=names["xbar_post"],
                                                     fp_post=names["fp_post"], err_gain_post=names["err_gain_post"],
                                                     kinks=names["kinks"]))
        if "amp" in primitives:
            extra_decl.append(f"{_real()}* __restrict amp = {names['amp_acc']};")
            extra_zero.append("amp[k] = 0.0;")
            extra_code.append(_AMP_ACCUMULATE_CPP.format(**fields))
        if "null" in primitives:
            extra_decl.append(f"{_real()}* __restrict null_sum = {names['null_acc']};")
            extra_zero.append("null_sum[k] = 0.0;")
            extra_code.append(_NULL_ACCUMULATE_CPP.format(**fields))
        code = None if spatial(op) else _ACCUMULATE_GEMM_CPP.format(
            **fields, func=accumulate, dw_acc=names["dw_acc"], db_acc_post=names["db_acc_post"], x_post=names["x_post"],
            derivative_decl=decl, delta=delta, pre_activity=pre_activity, pre_ptr=names[f"{pre_activity}_pre"],
            extra_decl="\n    ".join(extra_decl), extra_zero="\n            ".join(extra_zero), extra_code="".join(extra_code),
            extra_reset="\n        ".join(extra_reset),
        )
        if code is not None:
            _add_cpp(accumulate_function, code, accumulate, blas=True, functions=functions)
        backward_decl, backward_step, after = [], "", []
        if holds_backward:
            backward_decl.append(f"{_real()}* __restrict wb = {names['wb']};")
            terms = []
            if tied:
                terms.append("c_tied * dw[k]")
            if tied or primitives:
                terms.append("2 * c_decay * wb[k]")
            if "amp" in primitives:
                backward_decl.append(f"{_real()}* __restrict amp = {names['amp_acc']};")
                terms.append("- c_amp * amp[k] / batch_size")
            if "null" in primitives:
                backward_decl.append(f"{_real()}* __restrict null_sum = {names['null_acc']};")
                terms.append("+ 2 * c_null * null_sum[k] / batch_size")
            if terms:
                expression = " + ".join(terms[:2]) + "".join(f" {t}" for t in terms[2:])
                backward_step = f"wb[k] = wb[k] - eta_b * ({expression});"
                if "amp" in primitives:
                    backward_step += "\n        amp[k] = 0.0;"
                if "null" in primitives:
                    backward_step += "\n        null_sum[k] = 0.0;"
            if sign:
                after.append(f"for (size_t k = 0; k < (size_t){n_weights}; k++)\n"
                             "        wb[k] = b_scale * (({real})(w[k] > 0) - ({real})(w[k] < 0));".replace("{real}", _real()))
            if steps:
                after.append(_MIRROR_CPP.format(**fields, steps=steps, samples=samples,
                                                noise=f"brian::{get_device().get_array_name(noise_group.variables['v'])}"))
        before, declarations = [], ""
        if penalty:
            before.append(_ORTHOGONALITY_CPP.format(**fields, columns=columns))
        if columns < n_pre:
            after.append(_ZERO_COLUMNS_CPP.format(**fields, columns=columns))
        if inverts:
            library = blas_library(_BLAS["name"])
            lapack = {"getrf": library.lapacke("getrf", _real()), "getri": library.lapacke("getri", _real())}
            declarations = _LAPACKE_DECLARATIONS.format(real=_real(), **lapack)
            after.append(_INVERSE_CPP.format(**fields, **lapack, max_condition=repr(float(max_condition)),
                                             singular_update=names["singular_update"],
                                             singular_condition=names["singular_condition"]))
        code = _APPLY_CPP.format(
            **fields, func=apply, dw_acc=names["dw_acc"], w=names["w"], db_acc_post=names["db_acc_post"], b_post=names["b_post"],
            backward_decl="\n    ".join(backward_decl), backward_step=backward_step, after_code="\n    ".join(after),
            before_code="\n    ".join(before), declarations=declarations,
        )
        _add_cpp(apply_function, code, apply, blas=bool(steps) or penalty or inverts)
    syn.namespace[accumulate] = accumulate_function
    syn.namespace[apply] = apply_function
    syn.run_regularly(
        f"proj_tick = {accumulate}(proj_tick, int(t_in_timesteps > 0), act_kind_post, act_slope_post, learn_bias_post,"
        " signal_gain_post)",
        dt=sample_dt, when="start", order=accumulate_order, name=f"{syn.name}_accumulate",
    )
    scalars = ", ".join(PLASTICITY_SCALARS)
    syn.run_regularly(
        f"proj_tick = {apply}(proj_tick, t_in_timesteps, steps_per_sample_post, batch_size_post, lr_post, {scalars})",
        dt=sample_dt, when="start", order=apply_order, name=f"{syn.name}_apply",
    )


_CONTROLLER_DRIVE_CPP = """
static double {func}(const double tick)
{{
    // fb of the controllers (copies x n_post) = X W^T - x_above * f'_above, X = x of the layer below
    // (copies x n_pre): the mismatch between the forward image of the error units and delta above
    const {real}* __restrict W = {w};
    const {real}* __restrict below = {x_pre};
    const {real}* __restrict above = {x_above};
    const {real}* __restrict d = {fp_above};
    {real}* __restrict out = {fb_post};
    for (int s = 0; s < {copies}; s++)
    {{
        const {real}* __restrict v = below + (size_t)s * {n_pre};
        for (int j = 0; j < {n_post}; j++)
        {{
            const {real}* __restrict row = W + (size_t)j * {n_pre};
            {real} sum = 0;
            for (int i = 0; i < {n_pre}; i++)
                sum += row[i] * v[i];
            const size_t k = (size_t)s * {n_post} + j;
            out[k] = sum - above[k] * d[k];
        }}
    }}
    return tick;
}}
"""


_CONTROLLER_DRIVE_GEMM_CPP = """
static double {func}(const double tick)
{{
    // the batch's copies at once: fb (copies x n_post) = X W^T by one gemm, then - x_above * f'_above
    {gemm}(CblasRowMajor, CblasNoTrans, CblasTrans, {copies}, {n_post}, {n_pre},
                      1.0, {x_pre}, {n_pre}, {w}, {n_pre}, 0.0, {fb_post}, {n_post});
    const {real}* __restrict above = {x_above};
    const {real}* __restrict d = {fp_above};
    {real}* __restrict out = {fb_post};
    for (size_t k = 0; k < (size_t){copies} * {n_post}; k++)
        out[k] -= above[k] * d[k];
    return tick;
}}
"""


def add_controller_drive(syn, forward, pre, controllers, above, order: int, copies: int = 1) -> None:
    """Schedule the drive ``fb = W x_pre - x_above * f'_above`` of a controller population (dynamic inversion).

    ``syn`` (pre -> controllers, holding the rule's ``B`` in ``wb`` and
    ``TICK_EQUATION``) runs it at slot ``groups``, ``order``, every step, from
    the weights ``w`` of the ``forward`` projection (pre -> above); the
    controllers and ``above`` have the same units.
    """
    from brian2 import get_device

    n_pre, n_post = len(pre) // copies, len(above) // copies
    func = f"arsim_{syn.name}_controller_drive"

    def numpy_drive(tick):
        W = forward.variables["w"].get_value().reshape(n_post, n_pre)
        below = pre.variables["x"].get_value().reshape(copies, n_pre)
        delta = above.variables["x"].get_value() * above.variables["fp"].get_value()
        controllers.variables["fb"].get_value()[:] = (below @ W.T).ravel() - delta
        return tick

    function = _function(numpy_drive, ["float"])
    if _standalone():
        device = get_device()
        # the batch-parallel build drives every copy by one gemm, as the dense projections do
        template = _CONTROLLER_DRIVE_GEMM_CPP if copies > 1 else _CONTROLLER_DRIVE_CPP
        code = template.format(
            **_types(), func=func, n_pre=n_pre, n_post=n_post, copies=copies,
            w=f"brian::{device.get_array_name(forward.variables['w'], access_data=False)}.data()",
            x_pre=f"brian::{device.get_array_name(pre.variables['x'])}",
            x_above=f"brian::{device.get_array_name(above.variables['x'])}",
            fp_above=f"brian::{device.get_array_name(above.variables['fp'])}",
            fb_post=f"brian::{device.get_array_name(controllers.variables['fb'])}",
        )
        _add_cpp(function, code, func, blas=copies > 1)
    name = f"{syn.name}_controller_drive"
    syn.namespace[name] = function
    syn.run_regularly(f"proj_tick = {name}(proj_tick)", when="groups", order=order, name=name)


_ERROR_LEARN_CPP = """
static double {func}(const double tick, const int t_step, const int steps_per_sample, const int batch_size, const double lr,
                     const double gain)
{{
    const int period = t_step / steps_per_sample;
    const bool apply = t_step > 0 && period % (batch_size / {copies}) == 0;
    // acc[j, i] += sum_c eps[c, j] xbar[c, i] with eps = (x - mu) gain; at a batch boundary
    // Phi <- Phi - lr acc (the authors' sign, research/pc.md (c)) and acc <- 0
    static std::vector<{real}> acc({n} * {n}, 0.0);
    static std::vector<{real}> eps({copies} * {n});
    const {real}* __restrict x = {x};
    const {real}* __restrict mu = {mu};
    const {real}* __restrict xbar = {xbar};
    {real}* __restrict phi = {w};
    for (int k = 0; k < {copies} * {n}; k++)
        eps[k] = (x[k] - mu[k]) * gain;
    for (int c = 0; c < {copies}; c++)
        for (int j = 0; j < {n}; j++)
        {{
            const {real} e = eps[c * {n} + j];
            {real}* __restrict row = acc.data() + (size_t)j * {n};
            const {real}* __restrict v = xbar + (size_t)c * {n};
            for (int i = 0; i < {n}; i++)
                row[i] += e * v[i];
        }}
    if (apply)
    {{
        for (int k = 0; k < {n} * {n}; k++)
        {{
            phi[k] -= lr * acc[k];
            acc[k] = 0.0;
        }}
    }}
    return tick;
}}
"""


def add_error_connections(syn, group, sample_dt, order: int, copies: int = 1, learn_order: int | None = None) -> None:
    """Error connections of one hidden layer (predictive coding, ``error_connections`` not identity).

    ``syn`` connects ``group`` onto itself (`arsim.brian.network.projection_indices`,
    ``w = Phi.ravel()``) and holds ``TICK_EQUATION``. Once per sample, at
    ``order`` of slot ``start`` (after the layer stored its forward state),
    ``mu = Phi xbar`` for every copy. With ``learn_order`` (learned error
    connections) a second function at that order of every sample's step 0
    accumulates ``sum eps xbar^T`` of the sample that just relaxed
    (``eps = (x - mu) err_gain``, read before the new forward sweep) and applies
    ``Phi <- Phi - lr acc`` at batch boundaries.
    """
    from brian2 import get_device

    name = f"{syn.name}_mu"
    syn.namespace[name] = _drive_function(syn, group, group, "xbar", "mu", copies)
    syn.run_regularly(f"proj_tick = {name}(proj_tick)", dt=sample_dt, when="start", order=order, name=name)
    if learn_order is None:
        return
    n = len(group) // copies
    func = f"arsim_{syn.name}_learn"
    accumulated = np.zeros((n, n))

    def numpy_learn(tick, t_step, steps_per_sample, batch_size, lr, gain):
        t_step, steps_per_sample, batch_size = int(t_step), int(steps_per_sample), int(batch_size)
        x, mu, xbar = (group.variables[v].get_value().reshape(copies, n) for v in ("x", "mu", "xbar"))
        accumulated[:] += ((x - mu) * gain).T @ xbar
        if t_step > 0 and (t_step // steps_per_sample) % (batch_size // copies) == 0:
            w = syn.variables["w"].get_value()
            w[:] = w - lr * accumulated.ravel()
            accumulated[:] = 0.0
        return tick

    function = _function(numpy_learn, ["float", "integer", "integer", "integer", "float", "float"])
    if _standalone():
        names = _names(get_device(), syn, group, group)
        code = _ERROR_LEARN_CPP.format(real=_real(), func=func, n=n, copies=copies, x=names["x_post"], mu=names["mu_post"],
                                       xbar=names["xbar_post"], w=names["w"])
        _add_cpp(function, code, func)
    learn = f"{syn.name}_learn"
    syn.namespace[learn] = function
    syn.run_regularly(f"proj_tick = {learn}(proj_tick, t_in_timesteps, steps_per_sample_post, batch_size_post, lr_post,"
                      " err_gain_post)", dt=sample_dt, when="start", order=learn_order, name=learn)


# ---------------------------------------------------------------------------- a rule's own operations


def add_drive(syn, pre, post, source: str, target: str, copies: int, when: str = "start", order: int = 0, dt=None) -> None:
    """Schedule ``target_post = W source_pre`` (every copy) over the weights ``w`` of ``syn`` at (``when``, ``order``).

    Every step, or every ``dt``; the mat-vec of `add_dense_projection`'s drives for any pair of variables.
    """
    name = f"{syn.name}_{target}"
    syn.namespace[name] = _drive_function(syn, pre, post, source, target, copies)
    syn.run_regularly(f"proj_tick = {name}(proj_tick)", dt=dt, when=when, order=order, name=name)


def add_operation(syn, name: str, arrays: dict, numpy_body, cpp_body: str, copies: int, arguments: dict | None = None,
                  when: str = "groups", order: int = 0, blas: bool = False) -> None:
    """Schedule a rule's operation on projection ``syn`` every step, written in C++ (numpy on the runtime device).

    The rule never sees Brian2's generated array names: it names the arrays it
    needs and this function binds them.

    Parameters
    ----------
    syn : Synapses
        The projection (holding ``TICK_EQUATION``, with a namespace of its own).
    name : str
        Name of the operation (unique per projection).
    arrays : dict
        ``{local: (role, variable)}`` with role ``"syn"``, ``"pre"`` or
        ``"post"``: in ``cpp_body`` ``local`` is a ``real*`` to the array (a
        synaptic variable's ``n_post x n_pre`` layout, every copy of a
        neuron variable); ``numpy_body`` receives the live arrays by ``local``.
    numpy_body : callable
        ``numpy_body(arrays, **arguments)`` for the runtime device.
    cpp_body : str
        C++ statements; ``{real}`` and ``{gemm}`` are the floating-point type
        and its CBLAS ``gemm``, ``{copies}``, ``{n_pre}``, ``{n_post}`` the shapes.
    copies : int
        Parallel copies of the layers (a batch in training).
    arguments : dict
        ``{argument: (Brian2 expression, "float" | "integer")}`` evaluated on
        the projection each call (e.g. ``"b_rate_post"``).
    """
    from brian2 import get_device

    arguments = arguments or {}
    pre, post = syn.source, syn.target
    objects = {"syn": syn, "pre": pre, "post": post}
    func = f"arsim_{syn.name}_{name}"

    def numpy_operation(tick, *values):
        live = {local: objects[role].variables[var].get_value() for local, (role, var) in arrays.items()}
        numpy_body(live, **dict(zip(arguments, values)))
        return tick

    function = _function(numpy_operation, ["float"] + [kind for _, kind in arguments.values()])
    if _standalone():
        device = get_device()
        real = _real()
        n_pre, n_post = len(pre) // copies, len(post) // copies
        declarations = "\n    ".join(f"{real}* __restrict {local} = {_array_name(device, objects[role], var)};"
                                      for local, (role, var) in arrays.items())
        parameters = "".join(f", const {'int64_t' if kind == 'integer' else 'double'} {arg}"
                             for arg, (_, kind) in arguments.items())
        body = cpp_body.format(**_types(), copies=copies, n_pre=n_pre, n_post=n_post)
        code = f"static double {func}(const double tick{parameters})\n{{\n    {declarations}\n{body}\n    return tick;\n}}\n"
        _add_cpp(function, code, func, blas=blas)
    syn.namespace[func] = function
    call = ", ".join(["proj_tick"] + [expression for expression, _ in arguments.values()])
    syn.run_regularly(f"proj_tick = {func}({call})", when=when, order=order, name=f"{syn.name}_{name}")


_SEED_CPP = """
static double {func}(const double tick, const int64_t t_step, const int64_t seed)
{{
    // the first step of a run seeds Brian2's generators (one per OpenMP thread) from the run-time seed:
    // a compiled binary otherwise seeds them from std::random_device, a new stream every run
    if (t_step == 0)
        for (size_t i = 0; i < brian::_random_generators.size(); i++)
            brian::_random_generators[i].seed((unsigned long)seed + i);
    return tick;
}}
"""


def add_noise_seed(group, order: int) -> None:
    """Seed the noise of a run from ``group``'s integer ``noise_seed`` at its first step (slot ``start``, ``order``).

    ``group`` holds ``seed_tick`` and ``noise_seed`` (`arsim.brian.neuron.SEED_EQUATION`). In C++ it reseeds
    ``brian::_random_generators``, the generator Brian2's ``xi`` and
    ``randn`` draw from (a device internal, guarded by
    ``tests/test_brian_internals.py``); on the runtime device it seeds
    numpy's global generator, which Brian2's numpy target draws from.
    """

    def numpy_seed(tick, t_step, seed):
        if int(t_step) == 0:
            np.random.seed(int(seed) % 2**32)
        return tick

    func = f"arsim_{group.name}_seed"
    function = _function(numpy_seed, ["float", "integer", "integer"])
    if _standalone():
        _add_cpp(function, _SEED_CPP.format(func=func), func)
    group.namespace[func] = function
    group.run_regularly(f"seed_tick = {func}(seed_tick, t_in_timesteps, noise_seed)", when="start", order=order,
                        name=f"{group.name}_seed")
