# Alignment Studio as a Hugging Face Docker Space (or any container host): the browser studio on port 7860, the
# embedded tiny-shapes model baked in, running as uid 1000 (what Spaces uses).
#
#   docker build -t alignment-studio .                                     # CPU torch (default)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t alignment-studio:cuda .
#   docker run -p 7860:7860 -v studio-data:/data alignment-studio
#
# Data (database, images, adapters) goes to STUDIO_DATA_DIR=/data/studio: Spaces mounts persistent storage at
# /data when it is bought, and the image's own /data belongs to uid 1000, so a fresh named volume does too.
# deploy/entrypoint.sh refuses to start when /data exists but is not writable, or when STUDIO_DATABASE_URL is set
# and the data directory cannot be written (rows without their blobs); it falls back to ~/app/studio-data (lost on
# restart) only when there is no /data at all. Other settings are STUDIO_* variables (python -m app --help).
FROM python:3.11-slim

# Index that torch comes from. The default is the CPU build; set a CUDA index for a GPU image, or "" for the
# default index's build (on Linux that pulls the CUDA libraries too).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    STUDIO_DATA_DIR=/data/studio \
    STUDIO_PERSISTENT_DIR=/data \
    STUDIO_FALLBACK_DATA_DIR=/home/user/app/studio-data

RUN useradd --create-home --uid 1000 --shell /bin/bash user \
    && mkdir -p /data && chown 1000:1000 /data
USER 1000
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH
WORKDIR /home/user/app

# Dependencies first, so code changes do not reinstall them. torch is installed alone from TORCH_INDEX_URL at the
# version requirements.txt pins; the same requirements.txt then installs everything else (README does the same).
COPY --chown=1000:1000 requirements.txt ./
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir --user --no-deps --index-url "$TORCH_INDEX_URL" \
            "$(grep -E '^torch==' requirements.txt)"; \
    fi \
    && pip install --no-cache-dir --user -r requirements.txt

COPY --chown=1000:1000 deploy/entrypoint.sh ./deploy/
COPY --chown=1000:1000 settings.py ./
COPY --chown=1000:1000 storage ./storage
COPY --chown=1000:1000 alignment ./alignment
COPY --chown=1000:1000 app ./app
COPY --chown=1000:1000 models/tiny-shapes ./models/tiny-shapes

EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=8)"]

# Choose the data directory (see deploy/entrypoint.sh), then run CMD.
ENTRYPOINT ["/bin/sh", "deploy/entrypoint.sh"]
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "7860"]
