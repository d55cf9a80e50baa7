"""Loaded by pytest before the plugins named after it (``-p ccfraud.pytest_startup`` first in pyproject.toml).

nbval, a plugin, imports nbformat, whose jsonschema compiles rfc3987-syntax's IRI grammar: 2.2 s
of every pytest process's start (``python -X importtime``), the controller's and each xdist
worker's. No notebook schema uses the ``iri`` formats, so the grammar is kept out as the stages
keep it out (:func:`ccfraud.reporting.without_iri_grammar`); jsonschema then checks no ``iri``
format in a test process either. Plugins load before conftest.py, hence a module of the installed
package: importable whatever the working directory.
"""

from ccfraud.reporting import without_iri_grammar

without_iri_grammar()
