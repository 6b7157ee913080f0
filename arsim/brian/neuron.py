"""The one rate-neuron type shared by every layer.

Parameter card (NEST style)

==================  ======  ==============  ===========  ===========================================
Parameter           Unit    Math            Default      Description
==================  ======  ==============  ===========  ===========================================
``x``               1       x^l_i           xbar         relaxing activity; equals dL/dxbar at rest
``xbar``            1       xbar^l_i        --           stored forward activity f(a + b)
``fp``              1       f'(a^l_i)       --           stored local derivative
``a``               1       (W xbar)_i      --           forward drive (summed by the projection)
``fb``              1       (B (x fp))_i    --           feedback drive (summed by the projection)
``anow``            1       (W x)_i         --           current drive (summed; relaxed forward pass only)
``fpnow``           1       f'(anow+b)      --           derivative at the current state (relaxed forward pass)
``b``               1       b^{l-1}_i       0            bias of the projection into this layer (learns)
``zsum``            1       sum_k e^{u_k-u_i} --         softmax normaliser (ce output only)
``hidden``          1       --              0 or 1       1 if the unit relaxes (hidden layers)
``act_kind``        1       f               tanh         activation code (``ACTIVATION_CODES``, shared)
``act_slope``       1       --              0.01         negative slope of leaky_relu (shared)
``x_start``         1       --              1            x(0) = x_start * xbar (1: AR, 0: cold start)
``leak``            1       alpha           1            leak of the relaxation (shared; DI controllers: alpha)
``err``             1       eps^l_i         --           prediction error (x - mu) pi (error units, rule = "pc" only)
``mu``              1       Phi^l xbar^l    --           prediction through error connections (``error_connections`` not identity)
``err_gain``        1       pi_l = 1/sigma_l 1           precision of the layer's error (shared, error units)
``signal_gain``     1       sigma_L pi_l    1            learning signal -sigma_L eps per unit of (mu - x) (shared)
``noise_seed``      1       --              0            seed of the noise of a stochastic rule (shared, integer; PAL)
``db_acc``          1       sum x fp        0            bias update accumulated over the batch
``lr``              1       lr              5e-4         learning rate (shared, training)
``batch_size``      1       --              64           samples per update (shared, training)
``learn_bias``      1       --              0 or 1       1 if the biases learn (shared, training)
``tau``             second  tau             10 ms        relaxation time constant (shared)
(rule terms)        --      --              --           what a rule adds (`Rule.neuron_terms`: PAL's noise, rate, high-pass)
``n_relax``         1       N               duration/dt  relaxation steps per sample (shared)
``steps_per_sample`` 1      S               N + 1        clock steps per sample (shared)
==================  ======  ==============  ===========  ===========================================

Training phases (one sample = ``steps_per_sample`` steps of the one clock):
step 0 first accumulates the local update of the sample that just relaxed
(``x`` and ``fp`` of the post-synaptic, ``xbar`` of the pre-synaptic unit),
applies the summed update at a batch boundary (``apply_update``), and only
then stores the new sample's forward sweep.

The dynamics are those of SPEC section 2,

    tau dx/dt = relaxing * (-leak x + fb),

(``leak`` is 1 but for the controllers of dynamic inversion, SPEC 3.10)
or, for a rule with error units (predictive coding, SPEC 3.7), where ``x``
is the value node and the error ``err = (x - mu) pi`` is a subexpression of
the same neuron (``mu`` the stored ``xbar`` under fixed prediction, the
current ``f(anow + b)`` under strict PC),

    tau dx/dt = relaxing * (-leak err + fb),

For GAIT-prop (SPEC 3.8) the first form holds with ``x`` the displacement
``xbar - t`` of the layer's target, started at 0; its ``fb`` carries the
inverse map of the layer above (`arsim.rules.gait`).

Here ``relaxing`` is 1 for hidden units during the relaxation steps of a
sample and 0 otherwise (input, output clamp, forward-sweep step). Phases are
gated by the integer step counter ``t_in_timesteps`` of the single network
clock, never by a second clock, so phases cannot drift.
"""

from __future__ import annotations

from brian2 import Equations

__all__ = ["NEURON_EQUATIONS", "neuron_equations", "store_code", "run_time_terms"]

NEURON_EQUATIONS = """
dx/dt = relaxing * (fb - leak * {state}) / tau : 1
relaxing = hidden * int(step_in_sample >= 1) * int(step_in_sample <= n_relax) : 1
step_in_sample = t_in_timesteps % steps_per_sample : integer
u = a + b : 1
a : 1
anow : 1
fpnow = act_fp(anow + b, act_kind, act_slope) : 1
fb : 1
zsum : 1
xbar : 1
fp : 1
b : 1
db_acc : 1
hidden : 1 (constant)
act_kind : integer (shared, constant)
act_slope : 1 (shared, constant)
x_start : 1 (shared, constant)
lr : 1 (shared, constant)
batch_size : integer (shared, constant)
learn_bias : 1 (shared, constant)
apply_update = int(t_in_timesteps > 0) * int((t_in_timesteps // steps_per_sample) % batch_size == 0) : 1
tau : second (shared, constant)
n_relax : integer (shared, constant)
steps_per_sample : integer (shared, constant)
err_gain : 1 (shared, constant)
signal_gain : 1 (shared, constant)
leak : 1 (shared, constant)
"""

#: the prediction ``mu`` of a unit with error units: frozen at the forward sweep, or recomputed every step
#: (``connected``: fixed prediction through error connections, ``mu = Phi xbar`` summed once per sample by ``err{l}``)
PREDICTIONS = {"fixed": "xbar", "strict": "act_f(anow + b, act_kind, act_slope)", "connected": "mu"}


#: the run-time seed of a stochastic rule's noise (`arsim.rules.base.Rule.stochastic`)
SEED_EQUATION = "noise_seed : integer (shared, constant)\nseed_tick : 1 (shared)\n"


def neuron_equations(error_units: str | None = None, terms: str = "", stochastic: bool = False) -> Equations:
    """Return the `Equations` of the arsim rate neuron.

    Parameters
    ----------
    error_units : {None, "fixed", "strict", "connected"}
        None: the relaxing state is the learning signal itself (AR and the
        feedback-alignment family); otherwise ``x`` is a value node and
        relaxes down the prediction error ``err = (x - mu) err_gain``, with
        ``mu`` of `PREDICTIONS` (predictive coding).
    terms : str
        Equation lines of the rule's own (`arsim.rules.base.Rule.neuron_terms`,
        e.g. PAL's noise and high-pass).
    stochastic : bool
        Add the integer ``noise_seed`` the rule's noise is seeded from.
    """
    extra = (terms.strip() + "\n" if terms.strip() else "") + (SEED_EQUATION if stochastic else "")
    if error_units is None:
        return Equations(NEURON_EQUATIONS.format(state="x") + extra)
    error = f"err = (x - {PREDICTIONS[error_units]}) * err_gain : 1\n"
    if error_units == "connected":
        error += "mu : 1\n"
    return Equations(NEURON_EQUATIONS.format(state="err") + error + extra)


def run_time_terms(terms: str, stochastic: bool) -> dict:
    """The run-time scalars a rule's terms add, ``{name: kind}`` with kind ``"integer"``, ``"time"`` or ``"float"``.

    Read from the equations themselves (their shared constants, and
    ``noise_seed``), so a rule declares each parameter once.
    """
    from brian2 import second
    from brian2.equations.equations import INTEGER, PARAMETER

    equations = Equations(terms.strip() + "\n" if terms.strip() else "") + Equations(SEED_EQUATION if stochastic else "")
    kinds = {}
    for name, eq in equations.items():
        if eq.type == PARAMETER and "shared" in eq.flags and "constant" in eq.flags:
            kinds[name] = "integer" if eq.var_type == INTEGER else "time" if eq.dim == second.dim else "float"
    return kinds


def store_code(role: str, loss: str = "mse", value_nodes: bool = False, connected: bool = False) -> str:
    """Code run once per sample, at the forward sweep, to store the forward state.

    Parameters
    ----------
    role : {"input", "hidden", "output", "controller"}
        The layer's role (controllers of dynamic inversion start every sample at 0).
    loss : {"mse", "ce"}
        Loss, which decides the output clamp ``x = e`` (SPEC section 1).
    value_nodes : bool
        The output is a value node clamped to ``xbar - e`` (predictive
        coding: its prediction error starts at ``-e``, SPEC 3.7) instead of
        to ``e``.
    connected : bool
        The layer has a prediction variable ``mu`` (error connections): the
        input and the output predict themselves (``Phi^L = I``), hidden
        layers get ``mu = Phi xbar`` from their ``err{l}`` projection.
    """
    code = _store_code(role, loss, value_nodes)
    return code + "\nmu = xbar" if connected and role in ("input", "output") else code


def _store_code(role: str, loss: str, value_nodes: bool) -> str:
    if value_nodes and role == "output":
        error = "2.0*(xbar - target_values(t, i))" if loss == "mse" else "(xbar - target_values(t, i))"
        forward = "xbar = act_f(u, act_kind, act_slope)\nfp = act_fp(u, act_kind, act_slope)" if loss == "mse" else "xbar = 1.0/zsum\nfp = 1.0"
        return f"{forward}\nx = xbar - {error}"
    if role == "controller":
        return "x = 0.0"
    if role == "input":
        return "xbar = input_values(t, i)\nfp = 1.0\nx = xbar"
    forward = "xbar = act_f(u, act_kind, act_slope)\nfp = act_fp(u, act_kind, act_slope)"
    if role == "hidden":
        return forward + "\nx = x_start * xbar"
    if loss == "mse":
        return forward + "\nx = 2.0*(xbar - target_values(t, i))"
    # ce: softmax written as 1 / sum_k exp(u_k - u_i), which cannot overflow
    return "xbar = 1.0/zsum\nfp = 1.0\nx = xbar - target_values(t, i)"
