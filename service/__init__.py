"""Ray Serve application serving dense and compact checkpoints side by side.

`config` (the configuration model), `schemas` (HTTP bodies), `errors` (request errors),
`qa_engine` / `summarize_engine` (batched inference within configured limits), `deployments` (one per
task and variant, `@serve.batch` with a token budget, knobs in `user_config`), `metrics` (one registry
fed by every replica), `ingress` (FastAPI routes and status codes), `app` (the application builder
named by `deploy/serve.yaml`) and `demo` (`blockserve demo`).

The service loads checkpoints only through `pruning.load_checkpoint`, so the compact format v1 is the
whole contract between the offline package and the service.
"""
