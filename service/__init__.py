"""Ray Serve application for dense and compact checkpoints (issue 5, in progress).

Built: `config` (the configuration model), `schemas` (HTTP bodies), `metrics` (one registry fed by
every replica), `qa_engine` / `summarize_engine` (batched inference within configured limits),
`deployments` (one per task and variant, `@serve.batch` with a token budget, knobs in
`user_config`), `ingress` (FastAPI routes and status codes) and `app.build_app` (the application
builder); integration tests start it on localhost. Not built yet: `deploy/serve.yaml`, the
`blockserve serve` command, the ONNX runtime path in replicas, the serving demo and tests of 503/504.

The service loads checkpoints only through `pruning.load_checkpoint`, so the compact format v1 is the
whole contract between the offline package and the service.
"""
