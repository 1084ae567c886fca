# blockserve on a CUDA node: torch CUDA build + onnxruntime-gpu, running as a non-root user.
# Build:  docker build -t blockserve .
# Run:    docker run --gpus all -v /path/to/checkpoints:/models blockserve bench --model /models/qa-compact --device cuda
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
COPY deploy ./deploy
# The `gpu` extra brings onnxruntime-gpu (CUDA execution provider) instead of the CPU onnxruntime.
RUN pip install '.[gpu]'

RUN useradd --create-home --uid 1000 app && mkdir -p /models && chown app /models
USER app

# Checkpoints are mounted at /models (or baked in by a derived image).
VOLUME ["/models"]

HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD python -c "import onnxruntime, torch, pruning; assert torch.cuda.is_available()" || exit 1

ENTRYPOINT ["blockserve"]
CMD ["--help"]
