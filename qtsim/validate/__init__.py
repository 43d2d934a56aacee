"""Validation: predictions scored against full real decodes at held-out points.

``plan`` (which points; the hold-out check) -> ``predict`` (predictions stored before each run)
-> ``score`` (errors, COR, verdicts) and ``coverage`` (band coverage, model-error record) ->
``report`` (Markdown, CSV, plots); ``run`` strings them together for ``qtsim validate``.
"""
