"""Optional C extension: region decoding of JPEGs with the system's libjpeg-turbo (libjpeg headers).

Built when a compiler and libjpeg's headers are there; otherwise the install goes on without it and
the streaming loader decodes whole images (simplejpeg). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("ablation.data._jpegcrop", ["ablation/data/_jpegcrop.c"], libraries=["jpeg"], optional=True)]
)
