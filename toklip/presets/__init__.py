"""Preset TokLIP configurations as JSON data files (open_clip's model_configs habit)."""
