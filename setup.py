"""Builds the C++ CPU kernels (``mulact._C``) and maps ``kernels/`` to ``mulact.kernels``.

The extension talks to torch only through raw data pointers handed over by the Python
wrappers (see ``mulact/ops/_cpp.py``), so it links against pybind11 alone: it builds in an
isolated build environment without torch, and one build works with any torch version.
"""
import sys
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

# One object file per csrc/*.cpp, compiled in parallel on every core (NPY_NUM_BUILD_JOBS=N to
# change): the C++ build was most of the install time on 2 cores.
ParallelCompile("NPY_NUM_BUILD_JOBS").install()

openmp = [] if sys.platform == "darwin" else ["-fopenmp"]

ext = Pybind11Extension(
    "mulact._C",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", *openmp],
    extra_link_args=openmp,
)

setup(
    packages=find_packages(include=["mulact", "mulact.*"]) + ["mulact.kernels"],
    package_dir={"mulact.kernels": "kernels"},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
)
