"""Packaging for volumecap.

Install it non-editable (``pip install .``) or editable in compat mode
(``pip install -e . --config-settings editable_mode=compat``): the default
editable mode installs an import hook, and twistd then does not find the
plugins under ``twisted/plugins``.
"""

from setuptools import setup

setup(
    name="volumecap",
    version="0.1.0",
    description="Distributed volume caps served from in-memory escrow slices",
    long_description=open("README.txt", encoding="utf-8").read(),
    long_description_content_type="text/plain",
    python_requires=">=3.11",
    packages=[
        "volumecap",
        "volumecap.wire",
        "volumecap.master",
        "volumecap.server",
        "twisted.plugins",
    ],
    package_data={"twisted.plugins": ["volumecap_master.py", "volumecap_server.py"]},
    install_requires=[
        "Twisted>=24.3",
        "zope.interface>=6",
        "pyOpenSSL>=24",
        "service_identity>=24",
        "tzdata>=2024.1",
        "txamqp>=0.8.2",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-twisted>=1.14", "mypy>=1.10", "mypy-zope>=1.0"],
        "bench": ["redis>=5", "hiredis>=2"],
    },
    entry_points={"console_scripts": ["volumecap = volumecap.cli:main"]},
)
