"""The one compiled module (the ingest passthrough walker); everything else is in
pyproject.toml. A machine without a C compiler still installs: the extension is
optional and ingest then uses the same walker in Python (slower, same answers)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("services.ingest._avrowalk", ["services/ingest/_avrowalk.pyx"], optional=True)],
    compiler_directives={"language_level": 3},
))
