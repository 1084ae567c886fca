"""Ray Serve application for dense and compact checkpoints (issue 5, in progress).

Built so far: `service.config`, the application's configuration model. Not built yet: deployments,
batching, the HTTP ingress and metrics — there is nothing to run here yet. The service will load
checkpoints only through `pruning.load_checkpoint`, so the compact format v1 is the whole contract
between the offline package and the service.
"""
