# blockserve on a CUDA node: torch CUDA build + onnxruntime-gpu, running as a non-root user.
# Build:  docker build -t blockserve .
# Serve:  docker run --gpus all -p 8000:8000 -v /path/to/checkpoints:/models blockserve
#         (deploy/serve-gpu.yaml: /models/{qa,summarize}-{dense,pruned}; any other config: `serve CONFIG`)
# Other:  docker run --gpus all -v /path/to/checkpoints:/models blockserve bench --model /models/qa-pruned --device cuda
# KubeRay runs the same image with its own `ray start` command (deploy/kuberay/rayservice.yaml).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/app/.cache/huggingface

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV

# torch first, pinned to the CUDA 12.8 build of the version the project tests against.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pruning ./pruning
COPY service ./service
COPY loadtests ./loadtests
COPY blockserve ./blockserve
COPY deploy ./deploy
# The `gpu` extra brings onnxruntime-gpu (CUDA execution provider) instead of the CPU onnxruntime.
RUN pip install '.[gpu]'

RUN useradd --create-home --uid 1000 app && mkdir -p /models && chown app /models
USER app

# Checkpoints are mounted at /models (or baked in by a derived image).
VOLUME ["/models"]

EXPOSE 8000

# Healthy when Ray Serve's proxy answers its own health route (loading checkpoints takes a while).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/-/healthz', timeout=5)" || exit 1

ENTRYPOINT ["blockserve"]
CMD ["serve", "deploy/serve-gpu.yaml"]
