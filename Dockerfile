# One image per service: docker build --build-arg SERVICE=events|agents|rag|gateway .
FROM python:3.11-slim
ARG SERVICE
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
COPY constraints.txt ./
COPY libs ./libs
COPY services/${SERVICE} ./services/${SERVICE}
# The rag service needs torch; take the CPU build rather than PyPI's CUDA one.
RUN if [ "$SERVICE" = "rag" ]; then \
      pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; \
    fi \
 && pip install -c constraints.txt ./libs/protos "./libs/common[db]" ./services/${SERVICE}
ENV SERVICE=${SERVICE} HOST=0.0.0.0
CMD ["sh", "-c", "exec python -m amelia_${SERVICE}"]
