# video-rnn CLI image: `docker build -t vrnn .` then `docker run --rm -v "$PWD:/work" vrnn extract …`
# Installs the project exactly as the README/CI do (`make setup`, pinned by constraints.txt).
# BASE: any Debian-like image with Python 3.11 (python3.11 on PATH, its venv module).
# Offline build (no network in the build container; docs/docker.md): `make docker-offline`,
# i.e. the pinned wheels downloaded on the host (`make wheelhouse`) and
# --build-arg PIP_NO_INDEX=1, on a BASE that already has make and git.
# Offline containers: build with --build-arg BAKE_IMAGENET_WEIGHTS=1 (needs network at build
# time) to put the ImageNet MobileNetV2 weights into the image's Keras cache.
ARG BASE=python:3.11-slim

# make runs the install, dvc needs git; apt installs them only where BASE lacks them
FROM ${BASE} AS system
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KERAS_HOME=/opt/keras \
    PATH=/opt/venv/bin:$PATH
RUN if ! command -v make >/dev/null || ! command -v git >/dev/null; then \
         apt-get update \
         && apt-get install -y --no-install-recommends make git \
         && rm -rf /var/lib/apt/lists/*; \
       fi

# The install stage sees wheelhouse/; the image copies only its results, never the wheels.
FROM system AS install
ARG PIP_NO_INDEX=0
ENV PIP_FIND_LINKS=/opt/wheelhouse
COPY wheelhouse /opt/wheelhouse
WORKDIR /opt/video-rnn
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY pipeline ./pipeline
COPY stages ./stages
RUN make setup VENV=/opt/venv EXTRAS=dvc

FROM system
ARG BAKE_IMAGENET_WEIGHTS=0
COPY --from=install /opt/venv /opt/venv
COPY --from=install /opt/video-rnn /opt/video-rnn
# A run writes nothing outside the mounted folder (the smoke test checks it with docker diff):
# `docker run --user UID` has no home directory, so the project's bytecode and matplotlib's
# font cache (Keras imports matplotlib) are made here, and no .pyc is written at run time
# (TensorFlow's autograph imports modules it generates in /tmp).
ENV PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/opt/matplotlib
RUN mkdir -p "$KERAS_HOME" "$MPLCONFIGDIR" \
    && python -m compileall -q /opt/video-rnn \
    && python -c "import matplotlib.font_manager" \
    && if [ "$BAKE_IMAGENET_WEIGHTS" = "1" ]; then \
         python -c "from pipeline.backbone import IMAGENET_SIZES, imagenet_weights_file; [imagenet_weights_file(s) for s in IMAGENET_SIZES]"; \
       fi \
    && useradd --create-home --uid 1000 vrnn \
    && chmod -R a+rX "$KERAS_HOME" \
    && chmod 1777 "$MPLCONFIGDIR"

USER vrnn
WORKDIR /work
ENTRYPOINT ["vrnn"]
CMD ["--help"]
