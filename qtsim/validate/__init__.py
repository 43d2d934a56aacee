"""Validation: predictions scored against full real decodes at held-out points."""
