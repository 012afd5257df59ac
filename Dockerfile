# The one storeflow image: every pipeline component, the KServe predictor and transformer, the webhook
# receiver. Tag it with the package version (image.tag in the config); never :latest. `make image` builds it.
#
# BASE_IMAGE: python:3.11-slim-bookworm, or an equivalent bookworm base from docker/build-base.sh where no
# container registry is reachable. Classic builder compatible (DOCKER_BUILDKIT=0): no RUN --mount.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1

# UID 1000, as every kustomize container runs: pipeline tasks (which run as the image's user) and serving
# pods write the same state volume with one owner.
RUN useradd --uid 1000 --create-home storeflow
# PyTensor (pymc-marketing's BTYD fits in the features stage) compiles its ops with g++ at run time, into
# $HOME/.pytensor; without a compiler it falls back to pure Python and the stage runs for many minutes.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/storeflow

# Dependencies first, every version from the lock: a code change rebuilds only the layers below.
# uv (as `make install` uses, pinned alike, removed again): pip took 5-6 minutes of a clean CI's image build
# for this layer. --compile-bytecode, as pip does by default: PYTHONDONTWRITEBYTECODE above means no .pyc is
# ever written later, and every task would compile pymc, mlflow & co. on import. uv's TLS from the system
# bundle, which carries the build machine's CA where there is one (docker/build-base.sh copies it in).
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/dependencies.txt \
 && pip install --quiet 'uv==0.13.9' \
 && UV_NATIVE_TLS=1 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    uv pip install --python "$(command -v python)" --no-cache --compile-bytecode \
      -c requirements.lock -r /tmp/dependencies.txt \
 && pip uninstall --quiet --yes uv && rm /tmp/dependencies.txt

# PyTensor's compiled ops for the BTYD fits, built once here instead of in every features task's container
# (its cache key holds the compiler flags, so another CPU compiles its own). In a fixed directory, not
# $HOME/.pytensor: a runner may set HOME (the artifact-passing test sets HOME=/tmp). The image user's
# matplotlib font cache comes along. btyd.py alone, as a script: only a change to it rebuilds this layer.
ENV PYTENSOR_FLAGS=base_compiledir=/var/cache/pytensor
COPY components/features/btyd.py /tmp/btyd.py
RUN HOME=/home/storeflow python /tmp/btyd.py && chown -R storeflow: /home/storeflow /var/cache/pytensor \
 && rm /tmp/btyd.py

COPY README.md ./
COPY components components
COPY pipelines pipelines
COPY serving serving
RUN pip install --no-deps --no-build-isolation -c requirements.lock . && pip check \
 && python -c "import storeflow.components.config, storeflow.pipelines.cli, storeflow.serving.transformer"

# Last, so that a new commit rebuilds no layer above.
ARG STOREFLOW_GIT_COMMIT=""
ENV STOREFLOW_GIT_COMMIT=${STOREFLOW_GIT_COMMIT}
USER 1000
# KFP overrides the command per task; KServe runs `python -m storeflow.serving.predictor|transformer`.
CMD ["storeflow", "--help"]
