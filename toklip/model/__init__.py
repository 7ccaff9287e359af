"""The composed TokLIP model and its parts."""
