# The project's workers: `prerank worker --agents ...`, `prerank topics create`, `prerank replay`.
#
#   docker build -t prerank .
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> -t prerank .
#
# Without TORCH_INDEX_URL pip resolves torch from the default index, which on Linux is the
# (much larger) CUDA build; the workers only need the CPU one.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PRERANK_WORKER__DATA_DIR=/var/lib/prerank/faust \
    PRERANK_WORKER__CHECKPOINT_DIR=/var/lib/prerank/checkpoints

RUN useradd --create-home --uid 10001 prerank \
    && mkdir -p /var/lib/prerank/faust /var/lib/prerank/checkpoints \
    && chown -R prerank:prerank /var/lib/prerank

WORKDIR /app

# Torch first and alone: the largest layer, rebuilt only when the index changes.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.3,<3"; \
    fi

COPY . /app
RUN pip install /app

USER prerank
VOLUME ["/var/lib/prerank"]
# 9464: /metrics of PrerankMetrics (and Faust's sensor); 6066: Faust's web server.
EXPOSE 9464 6066

ENTRYPOINT ["prerank"]
CMD ["worker", "--agents", "joiner,history,trainer,publisher,scorer"]
