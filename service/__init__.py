"""Ray Serve application for dense and compact checkpoints (issue 5, in progress).

Built: `config` (the configuration model), `schemas` (HTTP bodies), `metrics` (one registry fed by
every replica), `qa_engine` / `summarize_engine` (batched inference within configured limits),
`deployments` (one per task and variant, `@serve.batch` with a token budget, knobs in
`user_config`), `ingress` (FastAPI routes and status codes) and `app.build_app` (the application
builder, read by `blockserve serve deploy/serve.yaml`); integration tests start it on localhost and
exercise every route and error code. Not built yet: the serving demo and the HTTP overhead measurement.

The service loads checkpoints only through `pruning.load_checkpoint`, so the compact format v1 is the
whole contract between the offline package and the service.
"""
