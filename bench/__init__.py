"""tailorfit's benchmark suite (issue #5): ``python -m bench`` measures a recipe's packaged artifacts beside the
artifacts a user would get from peer tools, on the same runtime and machine, and writes a dated report.

Layout: ``sections.py`` (the section interface and registry), one module per section (``artifact_quality.py``,
``ceiling.py``), ``context.py`` (what sections share: the recipe's run, the entries, one interleaved latency
measurement), ``runs.py`` (the recipe's step outputs and the extra tailorfit branches the bench needs),
``peers.py`` (artifacts built with optimum-intel, NNCF accuracy control and ONNX Runtime), ``measure.py``
(cost, memory), ``report.py`` (report.md / report.json / plots, and the README section).
"""
