# video-rnn CLI image: `docker build -t vrnn .` then `docker run --rm -v "$PWD:/work" vrnn extract …`
# Installs the project exactly as the README/CI do (`make setup`, pinned by constraints.txt).
# Offline containers: build with --build-arg BAKE_IMAGENET_WEIGHTS=1 (needs network at build
# time) to put the ImageNet MobileNetV2 weights into the image's Keras cache.
FROM python:3.11-slim

ARG BAKE_IMAGENET_WEIGHTS=0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KERAS_HOME=/opt/keras \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends make git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/video-rnn
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY pipeline ./pipeline
COPY stages ./stages
RUN make setup VENV=/opt/venv EXTRAS=dvc

RUN mkdir -p "$KERAS_HOME" \
    && if [ "$BAKE_IMAGENET_WEIGHTS" = "1" ]; then \
         python -c "from pipeline.backbone import IMAGENET_SIZES, imagenet_weights_file; [imagenet_weights_file(s) for s in IMAGENET_SIZES]"; \
       fi \
    && useradd --create-home --uid 1000 vrnn \
    && chmod -R a+rX "$KERAS_HOME"

USER vrnn
WORKDIR /work
ENTRYPOINT ["vrnn"]
CMD ["--help"]
