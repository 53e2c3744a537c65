"""crobim-d2: CroBIM for referring remote sensing image segmentation, as a Detectron2 plugin.

The multi-scale deformable attention op in csrc/ is compiled into ``crobim_d2._C``: CPU kernels always,
CUDA kernels when a CUDA toolkit is present and either a GPU is visible or ``FORCE_CUDA=1``.
"""
import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def build_extensions():
    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(here, "csrc")
    cpp = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    if not cpp:
        return []
    cu = sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    want_cuda = torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"
    extra = {"cxx": ["-O3", "-std=c++20"]}
    link = []
    if torch.__config__.parallel_info().find("parallel backend: OpenMP") >= 0 and sys.platform.startswith("linux"):
        # at::parallel_for is a header template: without -fopenmp the CPU kernels silently run on one
        # thread. The OpenMP runtime resolves to the libgomp torch has already loaded (same soname).
        extra["cxx"].append("-fopenmp")
        link.append("-fopenmp")
    define = []
    extension = CppExtension
    sources = cpp
    if want_cuda and CUDA_HOME is not None and cu:
        extension = CUDAExtension
        sources = cpp + cu
        define = [("WITH_CUDA", None)]
        extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]
    return [
        extension(
            "crobim_d2._C",
            sources=[os.path.relpath(s, here) for s in sources],
            include_dirs=[csrc],
            define_macros=define,
            extra_compile_args=extra,
            extra_link_args=link,
        )
    ]


setup(
    name="crobim_d2",
    version="0.1.0",
    description="CroBIM referring remote sensing image segmentation as a Detectron2 plugin",
    packages=find_packages(exclude=("tests", "benchmarks", "projects", "datasets", "tools")),
    package_data={"crobim_d2": ["resources/*/*"]},
    python_requires=">=3.10",
    ext_modules=build_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": [
        "crobim-predict=crobim_d2.geo.cli:main",
        "crobim-check-dataset=crobim_d2.data.check:main",
        "crobim-make-referring=crobim_d2.data.referring.cli:main",
        "crobim-serve=crobim_d2.serve.cli:main",
    ]},
)
