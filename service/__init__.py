"""Ray Serve application for dense and compact checkpoints (not built yet: issue 5).

It will load checkpoints only through `pruning.load_checkpoint`, so the compact format v1 is the
whole contract between the offline package and the service.
"""
