"""Activation functions, each in two forms that must agree to round-off.

Every activation is written once as a numpy pair ``(f, f')`` for the oracle
and the reference integrators, and once in C++ for the compiled model, where
a Brian2 `Function` selects it by an integer code at run time (so changing
the activation never recompiles). Both forms use the same arithmetic, so
Brian2 and numpy agree to a few ulp (SPEC section 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Activation", "ACTIVATIONS", "ACTIVATION_CODES", "get_activation", "brian_functions"]


@dataclass(frozen=True)
class Activation:
    """One activation function and its derivative.

    Attributes
    ----------
    name : str
        Name used in model files.
    f, fprime : callable
        numpy implementations of ``f(u)`` and ``f'(u)``.
    """

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    fprime: Callable[[np.ndarray], np.ndarray]


def _sigmoid(u):
    return 1.0 / (1.0 + np.exp(-u))


def _leaky_relu(slope: float) -> Activation:
    return Activation(
        name="leaky_relu",
        f=lambda u: u * ((u > 0) + slope * (u <= 0)),
        fprime=lambda u: (u > 0) + slope * (u <= 0) + 0.0 * u,
    )


# The sigmoid derivative is written s*(1-s) rather than exp(-u)/(1+exp(-u))^2
# so that it stays finite (0) when exp(-u) overflows.
ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation("linear", lambda u: u + 0.0, lambda u: np.ones_like(u)),
    "relu": Activation("relu", lambda u: u * (u > 0), lambda u: (u > 0) + 0.0 * u),
    "tanh": Activation("tanh", np.tanh, lambda u: 1.0 - np.tanh(u) ** 2),
    "sigmoid": Activation("sigmoid", _sigmoid, lambda u: _sigmoid(u) * (1.0 - _sigmoid(u))),
    "leaky_relu": _leaky_relu(0.01),
}


def get_activation(name: str, leaky_slope: float = 0.01) -> Activation:
    """Return the activation called ``name``.

    Parameters
    ----------
    name : str
        One of ``ACTIVATIONS``.
    leaky_slope : float
        Negative-side slope, used only by ``leaky_relu``.

    Raises
    ------
    KeyError
        If ``name`` is unknown.
    """
    if name == "leaky_relu":
        return _leaky_relu(float(leaky_slope))
    return ACTIVATIONS[name]


#: integer codes of the activations in the compiled model (run-time parameter)
ACTIVATION_CODES = {"linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "leaky_relu": 4}

_CPP_ACTIVATION = """
static inline double arsim_activation(const double u, const int kind, const double slope)
{
    switch (kind) {
        case 1: return u * (double)(u > 0);
        case 2: return tanh(u);
        case 3: return 1.0 / (1.0 + exp(-u));
        case 4: return u * ((double)(u > 0) + slope * (double)(u <= 0));
        default: return u;
    }
}
"""

_CPP_DERIVATIVE = """
static inline double arsim_activation_derivative(const double u, const int kind, const double slope)
{
    switch (kind) {
        case 1: return (double)(u > 0);
        case 2: { const double th = tanh(u); return 1.0 - th * th; }
        case 3: { const double s = 1.0 / (1.0 + exp(-u)); return s * (1.0 - s); }
        case 4: return (double)(u > 0) + slope * (double)(u <= 0);
        default: return 1.0;
    }
}
"""


_CPP_INVERSE = """
static inline double arsim_activation_inverse(const double y, const int kind, const double slope)
{
    switch (kind) {
        case 2: return atanh(y);
        case 3: return log(y / (1.0 - y));
        case 4: return y >= 0 ? y : y / slope;
        default: return y;  // linear (relu is not invertible: GAIT-prop refuses it)
    }
}
"""

#: activations with an inverse on their range (``act_finv``)
INVERTIBLE = ("linear", "tanh", "sigmoid", "leaky_relu")


def inverse(u, kind, slope):
    """``f^-1`` by activation code, the numpy twin of the C++ ``arsim_activation_inverse``."""
    y = np.asarray(u, dtype=np.float64)
    kind = int(np.ravel(kind)[0])
    slope = float(np.ravel(slope)[0])
    if kind == ACTIVATION_CODES["tanh"]:
        return np.arctanh(y)
    if kind == ACTIVATION_CODES["sigmoid"]:
        return np.log(y / (1.0 - y))
    if kind == ACTIVATION_CODES["leaky_relu"]:
        return np.where(y >= 0, y, y / slope)
    return y + 0.0


def _numpy_table(derivative: bool):
    by_code = {code: ACTIVATIONS[name] for name, code in ACTIVATION_CODES.items() if name != "leaky_relu"}

    def evaluate(u, kind, slope):
        u = np.asarray(u, dtype=np.float64)
        kind = int(np.ravel(kind)[0])
        slope = float(np.ravel(slope)[0])
        act = _leaky_relu(slope) if kind == ACTIVATION_CODES["leaky_relu"] else by_code[kind]
        return (act.fprime if derivative else act.f)(u)

    return evaluate


def brian_functions():
    """Brian2 `Function` objects ``act_f(u, kind, slope)``, ``act_fp(u, kind, slope)`` and the inverse ``act_finv``.

    The activation is chosen at run time by its integer code (see
    ``ACTIVATION_CODES``), so one compiled network serves every activation.
    Both have a numpy implementation (runtime device) and a C++ one.
    """
    from brian2 import Function

    functions = {}
    for name, pyfunc, cpp_name, cpp_code in (
        ("act_f", _numpy_table(False), "arsim_activation", _CPP_ACTIVATION),
        ("act_fp", _numpy_table(True), "arsim_activation_derivative", _CPP_DERIVATIVE),
        ("act_finv", inverse, "arsim_activation_inverse", _CPP_INVERSE),
    ):
        function = Function(
            pyfunc,
            arg_units=[1, 1, 1],
            return_unit=1,
            arg_types=["float", "integer", "float"],
            return_type="float",
            stateless=True,
        )
        function.implementations.add_implementation("cpp", cpp_code, name=cpp_name)
        functions[name] = function
    return functions
