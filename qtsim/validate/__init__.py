"""Validation: predictions scored against full real decodes at held-out points.

``plan`` (which points; the hold-out check) -> ``predict`` (predictions stored before each run)
-> ``score`` (errors, COR, verdicts) and ``coverage`` (band coverage, model-error record) ->
``report`` (Markdown, CSV, plots); ``holdout`` (the held-out point specs the measurement code
runs, with their predictions, and the calibration's reference points measured again around
them); ``run`` strings them together for ``qtsim validate``.
"""
