"""Dispatch: the pure engine (model, geo, engine, workflow, sla) and its I/O shell."""
