"""The bar blockserve is measured against: a QA model behind a plain FastAPI + uvicorn process.

What a user deploys without blockserve — one process, the model called once per request, no batching:

    python benchmarks/naive_server.py --model ../shared/models/minilm-l6-squad --dtype float32 --port 8100

It answers `POST /v1/qa` with the same body as blockserve (`question`, `context`; other fields ignored),
so `make serve-overhead` drives both with the same load generator. Not part of the service.
"""

import argparse
import time

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from transformers import AutoModelForQuestionAnswering, AutoTokenizer


class Question(BaseModel):
    model_config = ConfigDict(extra="ignore")
    question: str
    context: str


def build(model_dir: str, dtype: str) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    app = FastAPI()

    @app.post("/v1/qa")
    def answer(body: Question) -> dict:  # a plain `def`: FastAPI runs it in its thread pool
        started = time.perf_counter()
        encoded = tokenizer(body.question, body.context, truncation="only_second", max_length=384, return_tensors="pt")
        with torch.inference_mode():
            output = model(**encoded)
        start = int(output.start_logits[0].argmax())
        end = max(start, int(output.end_logits[0].argmax()))
        milliseconds = 1000.0 * (time.perf_counter() - started)
        text = tokenizer.decode(encoded["input_ids"][0, start : end + 1])
        return {"answer": text, "latency_ms": milliseconds, "inference_ms": milliseconds}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(build(args.model, args.dtype), host="127.0.0.1", port=args.port, log_level="warning")
