"""Serving: export of a checkpoint to a self-contained folder, and scoring with that folder alone."""
