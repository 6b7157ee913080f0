"""Dense projections: the mat-vecs of the relaxation and forward sweep as C++ loops.

With ``projection = "dense"`` a projection ``l`` (layer ``l`` -> ``l+1``)
keeps its weights in the Brian2 `Synapses` object (``w = W^l.ravel()`` and,
for a separate backward pathway, ``wb`` holding ``B^l[pre, post]`` in the
same layout, because the synapses are connected with explicit ``i, j`` so
that synapse ``k = post * n_pre + pre``, `arsim.network.projection_indices`),
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
updater had, so the schedule of `arsim.network` is unchanged; the forward
drive's ``run_regularly`` has the sample period as its ``dt`` (public API,
where the summed updater needed its private ``_clock`` replaced).

Fragility (read before upgrading Brian2)
----------------------------------------
The C++ reaches Brian2's arrays through their global C++ symbols, the names
``device.get_array_name(var)`` returns: ``brian::_array_<group>_<var>``
(``double *``) for neuron variables and ``brian::_dynamic_array_<syn>_<var>``
(``std::vector<double>``, read with ``.data()`` on every call) for synaptic
ones. These symbols, their types, the ``brian`` namespace and the fact that
the support code of a user function is compiled next to ``objects.h`` are
device internals, not documented API. Every use of them is in this module;
``tests/test_cpp_projection.py`` compares the dense backend with
independent numpy integrations to 1e-10 and is the regression test that
catches an upgrade breaking them (keep ``brian2<2.10`` in ``setup.cfg``
until it has been run against a newer version).

The numpy implementation of the same functions (runtime device) reads and
writes the group's arrays through ``Variable.get_value()``, which returns
the live arrays on that target.
"""

from __future__ import annotations


__all__ = ["TICK_EQUATION", "add_dense_projection"]

#: shared variable of a dense projection on which the mat-vec functions are called
TICK_EQUATION = "proj_tick : 1 (shared)"


def _standalone() -> bool:
    """Whether the current device generates C++ standalone code."""
    from brian2 import get_device
    from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

    return isinstance(get_device(), CPPStandaloneDevice)


def _names(device, syn, pre, post) -> dict:
    """C++ expressions of the arrays a dense projection touches (device-internal names)."""
    names = {}
    for var in ("w", "wb"):
        if var in syn.variables:
            names[var] = f"brian::{device.get_array_name(syn.variables[var], access_data=False)}.data()"
    for prefix, group in (("pre", pre), ("post", post)):
        for var in ("x", "xbar", "fp", "fb", "a", "anow", "b"):
            names[f"{var}_{prefix}"] = f"brian::{device.get_array_name(group.variables[var])}"
    return names


_FEEDBACK_CPP = """
static double {func}(const double tick, const int kind, const double slope)
{{
    // fb_pre[i] = sum_j M[j, i] * c_j with M = {matrix} (n_post x n_pre, row-major):
    // four rows per pass over fb (a plain axpy per row is ~30 % slower at 300 x 300)
    const double* __restrict M = {matrix_ptr};
    const double* __restrict x = {x_post};
    double* __restrict fb = {fb_pre};
    {derivative_decl}
    for (int i = 0; i < {n_pre}; i++)
        fb[i] = 0.0;
    int j = 0;
    for (; j + 4 <= {n_post}; j += 4)
    {{
        const double c0 = {carried0}, c1 = {carried1}, c2 = {carried2}, c3 = {carried3};
        const double* __restrict r0 = M + (size_t)j * {n_pre};
        const double* __restrict r1 = r0 + {n_pre};
        const double* __restrict r2 = r1 + {n_pre};
        const double* __restrict r3 = r2 + {n_pre};
        for (int i = 0; i < {n_pre}; i++)
            fb[i] += r0[i] * c0 + r1[i] * c1 + r2[i] * c2 + r3[i] * c3;
    }}
    for (; j < {n_post}; j++)
    {{
        const double c = {carried};
        const double* __restrict row = M + (size_t)j * {n_pre};
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
    const double* __restrict W = {w};
    const double* __restrict v = {source_pre};
    double* __restrict out = {target_post};
    for (int j = 0; j < {n_post}; j++)
    {{
        const double* __restrict row = W + (size_t)j * {n_pre};
        double s = 0.0;
        for (int i = 0; i < {n_pre}; i++)
            s += row[i] * v[i];
        out[j] = s;
    }}
    return tick;
}}
"""


def _feedback_function(syn, pre, post, rule, act_fp):
    """`Function` ``f(tick, act_kind_post, act_slope_post)`` that writes ``fb_pre``."""
    from brian2 import Function, get_device

    n_pre, n_post = len(pre), len(post)
    matrix = rule.backward_variable
    relaxed = rule.derivative and rule.derivative_variable == "fpnow"
    func = f"arsim_{syn.name}_feedback"

    def numpy_feedback(tick, kind, slope):
        M = syn.variables[matrix].get_value().reshape(n_post, n_pre)
        carried = post.variables["x"].get_value().copy()
        if relaxed:
            u = post.variables["anow"].get_value() + post.variables["b"].get_value()
            carried *= act_fp.pyfunc(u, kind, slope)
        elif rule.derivative:
            carried *= post.variables["fp"].get_value()
        pre.variables["fb"].get_value()[:] = carried @ M
        return tick

    function = Function(
        numpy_feedback,
        arg_units=[1, 1, 1],
        return_unit=1,
        arg_types=["float", "integer", "float"],
        return_type="float",
        stateless=False,
        auto_vectorise=False,
    )
    if _standalone():
        names = _names(get_device(), syn, pre, post)
        if relaxed:
            derivative_decl = (
                f"const double* __restrict anow = {names['anow_post']};\n"
                f"    const double* __restrict b = {names['b_post']};"
            )
            carried = "x[@] * arsim_activation_derivative(anow[@] + b[@], kind, slope)"
        elif rule.derivative:
            derivative_decl = f"const double* __restrict d = {names['fp_post']};"
            carried = "x[@] * d[@]"
        else:
            derivative_decl, carried = "", "x[@]"
        rows = {f"carried{k}": carried.replace("@", f"j + {k}") for k in range(4)}
        code = _FEEDBACK_CPP.format(
            func=func, matrix=matrix, matrix_ptr=names[matrix], x_post=names["x_post"], fb_pre=names["fb_pre"],
            derivative_decl=derivative_decl, carried=carried.replace("@", "j"), n_pre=n_pre, n_post=n_post, **rows,
        )
        dependencies = {"act_fp": act_fp} if relaxed else None
        function.implementations.add_implementation("cpp", code, name=func, dependencies=dependencies)
    return function


def _drive_function(syn, pre, post, source: str, target: str):
    """`Function` ``f(tick)`` that writes ``target_post = W source_pre``."""
    from brian2 import Function, get_device

    n_pre, n_post = len(pre), len(post)
    func = f"arsim_{syn.name}_{target}"

    def numpy_drive(tick):
        W = syn.variables["w"].get_value().reshape(n_post, n_pre)
        post.variables[target].get_value()[:] = W @ pre.variables[source].get_value()
        return tick

    function = Function(
        numpy_drive, arg_units=[1], return_unit=1, arg_types=["float"], return_type="float",
        stateless=False, auto_vectorise=False,
    )
    if _standalone():
        names = _names(get_device(), syn, pre, post)
        code = _DRIVE_CPP.format(
            func=func, w=names["w"], source=source, target=target, source_pre=names[f"{source}_pre"],
            target_post=names[f"{target}_post"], n_pre=n_pre, n_post=n_post,
        )
        function.implementations.add_implementation("cpp", code, name=func)
    return function


def add_dense_projection(syn, pre, post, rule, act_fp, forward_order: int, sample_dt,
                         feedback_order: int | None, current_drive_order: int | None) -> None:
    """Schedule the mat-vecs of projection ``syn`` (pre -> post).

    ``syn`` must hold ``TICK_EQUATION`` in its model, be connected with
    `arsim.network.projection_indices` and have a namespace of its own
    (the functions are added to it).

    Parameters
    ----------
    rule : arsim.rules.FeedbackRule
        Decides the backward matrix (``w`` or ``wb``) and the carried
        quantity (``x``, ``x * fp`` or ``x * f'(anow + b)``).
    act_fp : brian2.Function
        The activation derivative (`arsim.activations.brian_functions`),
        needed by the relaxed forward pass.
    forward_order, sample_dt : int, Quantity
        ``a_post = W xbar_pre`` runs once per sample (period ``sample_dt``)
        at this order of slot ``start``.
    feedback_order : int or None
        Order in slot ``groups`` of ``fb_pre = B (x [* f'])_post``: that of
        the summed updater it replaces (the pre-synaptic layer's order - 1);
        None for the first projection (the input does not relax).
    current_drive_order : int or None
        Order in slot ``start`` of ``anow_post = W x_pre`` on every step
        (relaxed forward pass); None if the forward pass is frozen.
    """
    operations = [("a", "xbar", "start", forward_order, sample_dt)]
    if current_drive_order is not None:
        operations.append(("anow", "x", "start", current_drive_order, None))
    for target, source, when, order, dt in operations:
        name = f"{syn.name}_{target}"
        syn.namespace[name] = _drive_function(syn, pre, post, source, target)
        syn.run_regularly(f"proj_tick = {name}(proj_tick)", dt=dt, when=when, order=order, name=name)
    if feedback_order is not None:
        name = f"{syn.name}_feedback"
        syn.namespace[name] = _feedback_function(syn, pre, post, rule, act_fp)
        syn.run_regularly(
            f"proj_tick = {name}(proj_tick, act_kind_post, act_slope_post)", when="groups", order=feedback_order, name=name
        )
