"""Builds the compiled tree walks (include/iati_refresher/iati/_compiled.pyx) against the
installed lxml's headers; everything else is in pyproject.toml.

Built with ``--no-build-isolation`` (Makefile, Dockerfile) so that the module is compiled
against the very lxml it runs with; it checks both versions when it is imported.
"""

from pathlib import Path

import lxml
from Cython.Build import cythonize
from lxml import etree
from setuptools import Extension, setup

HERE = Path(__file__).parent
BUILD_INFO = HERE / "include" / "iati_refresher" / "iati" / "_compiled_build.pxi"
BUILD_INFO.write_text(
    "# written by setup.py: the lxml and libxml2 versions _compiled is compiled against\n"
    f"BUILT_LXML_VERSION = {etree.LXML_VERSION!r}\n"
    f"BUILT_LIBXML_VERSION = {etree.LIBXML_VERSION!r}\n"
)

extension = Extension(
    "iati_refresher.iati._compiled",
    ["include/iati_refresher/iati/_compiled.pyx"],
    include_dirs=lxml.get_include(),
    extra_compile_args=["-O2"],
)

setup(ext_modules=cythonize([extension], language_level=3, quiet=True))
