"""The CBLAS the compiled projections link: OpenBLAS (default) or Intel MKL, both from registry wheels.

The batch-parallel projections (`arsim.brian.cpp_projection`) call CBLAS
``gemm`` from C++. Two libraries are supported, chosen by the model key
``blas`` (part of the build key):

``openblas``
    The ``scipy-openblas32`` wheel, the OpenBLAS build numpy and scipy ship
    (a dependency of arsim): ``cblas.h`` with ``scipy_``-prefixed functions,
    and its LAPACKE (``scipy_LAPACKE_``).
``mkl``
    Intel MKL from the ``mkl`` and ``mkl-include`` wheels (``pip install
    'arsim[mkl]'``): ``mkl_cblas.h``, the single dynamic library
    ``libmkl_rt``, unprefixed functions (CBLAS and LAPACKE). Measured on the development
    machine (AMD EPYC, 1 thread) it is no faster than OpenBLAS, so OpenBLAS
    stays the default; ``arsim bench --set blas=mkl`` measures it on yours.

A library's path is baked into the binary (rpath), so a build belongs to one
environment: `arsim.brian.devices` puts `BlasLibrary.key` into the build key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BLAS_CHOICES", "BlasLibrary", "blas_library", "missing"]

BLAS_CHOICES = ("openblas", "mkl")


@dataclass(frozen=True)
class BlasLibrary:
    """One CBLAS: what a user function needs to compile and link against it."""

    name: str
    version: str
    header: str
    include_dir: str
    lib_dir: str
    #: the linker's ``-l`` argument (``:file`` for a versioned shared object without an unversioned link)
    library: str
    #: prefix of the CBLAS function names (``scipy_cblas_dgemm`` or ``cblas_dgemm``)
    prefix: str
    #: environment variable of the library's thread count (the runner sets it to 1 unless the user does)
    threads_variable: str
    #: prefix of the LAPACKE function names (``scipy_LAPACKE_dgetrf`` or ``LAPACKE_dgetrf``)
    lapacke_prefix: str

    def gemm(self, real: str) -> str:
        """The ``gemm`` of the C++ floating-point type ``real`` (``double`` or ``float``)."""
        return f"{self.prefix}{'s' if real == 'float' else 'd'}gemm"

    def lapacke(self, routine: str, real: str) -> str:
        """The LAPACKE function ``routine`` (e.g. ``getrf``) of the C++ floating-point type ``real``."""
        return f"{self.lapacke_prefix}{'s' if real == 'float' else 'd'}{routine}"

    def compiler_kwds(self) -> dict:
        """Brian2 ``compiler_kwds`` of a user function that calls this CBLAS."""
        return {
            "headers": [f'"{self.header}"'],
            "include_dirs": [self.include_dir],
            "libraries": [self.library],
            "library_dirs": [self.lib_dir],
            "runtime_library_dirs": [self.lib_dir],
        }

    @property
    def key(self) -> list:
        """What the build key records of it: name, version and the library's directory."""
        return [self.name, self.version, self.lib_dir]

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.lib_dir})"


def _openblas() -> BlasLibrary:
    import scipy_openblas32

    return BlasLibrary("openblas", scipy_openblas32.__version__, "cblas.h", scipy_openblas32.get_include_dir(),
                       scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(), "scipy_cblas_", "OPENBLAS_NUM_THREADS",
                       "scipy_LAPACKE_")


def _installed_file(distribution: str, pattern: str) -> Path | None:
    """The first file of an installed distribution whose name matches ``pattern`` (None if not installed)."""
    from importlib import metadata

    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if Path(file.name).match(pattern):
            return Path(file.locate()).resolve()
    return None


def _mkl() -> BlasLibrary:
    from importlib import metadata

    header = _installed_file("mkl-include", "mkl_cblas.h")
    library = _installed_file("mkl", "libmkl_rt.so*")
    if header is None or library is None:
        raise ModuleNotFoundError(missing("mkl"))
    return BlasLibrary("mkl", metadata.version("mkl"), "mkl_cblas.h", str(header.parent), str(library.parent),
                       f":{library.name}", "cblas_", "MKL_NUM_THREADS", "LAPACKE_")


def missing(name: str) -> str | None:
    """Why the library ``name`` cannot be used here (None: it can)."""
    if name == "mkl":
        if _installed_file("mkl-include", "mkl_cblas.h") is None or _installed_file("mkl", "libmkl_rt.so*") is None:
            return "blas = 'mkl' needs Intel MKL's wheels (mkl, mkl-include): pip install 'arsim[mkl]'"
    return None


def blas_library(name: str = "openblas") -> BlasLibrary:
    """The installed CBLAS called ``name`` (one of `BLAS_CHOICES`)."""
    if name not in BLAS_CHOICES:
        raise ValueError(f"blas = {name!r}; expected one of {', '.join(repr(c) for c in BLAS_CHOICES)}")
    return _mkl() if name == "mkl" else _openblas()
