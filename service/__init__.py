"""Ray Serve application for dense and compact checkpoints (issue 5, in progress).

Built so far: `service.config` (the configuration model), `service.schemas` (HTTP bodies) and
`service.metrics` (the metric registry) and `service.qa_engine` (windows, batched forward, top-k
spans; answers equal the evaluator's) and `service.summarize_engine` (batched generate within the
configured limits). Not built yet: deployments, batching and the HTTP ingress —
there is nothing to run here yet. The service will load
checkpoints only through `pruning.load_checkpoint`, so the compact format v1 is the whole contract
between the offline package and the service.
"""
