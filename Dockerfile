# The one storeflow image: every pipeline component, the KServe predictor and transformer, the webhook
# receiver. Tag it with the package version (image.tag in the config); never :latest.
FROM python:3.11-slim-bookworm

ARG STOREFLOW_GIT_COMMIT=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1 STOREFLOW_GIT_COMMIT=${STOREFLOW_GIT_COMMIT}

# UID 1000, as every kustomize container runs: pipeline tasks (which run as the image's user) and serving
# pods write the same state volume with one owner.
RUN useradd --uid 1000 --create-home storeflow
WORKDIR /opt/storeflow
COPY pyproject.toml README.md requirements.lock ./
COPY components components
COPY pipelines pipelines
COPY serving serving
RUN pip install --no-cache-dir -c requirements.lock . && python -c "import storeflow.components.config"

USER 1000
# KFP overrides the command per task; KServe runs `python -m storeflow.serving.predictor|transformer`.
CMD ["storeflow", "--help"]
