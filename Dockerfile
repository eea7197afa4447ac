# celgate: build the wheel in one stage, install it into a clean slim image in the next.
#   docker build -t celgate .
#   docker run --rm -p 127.0.0.1:8787:8787 --network celgate-demo --env-file .env \
#     -e CELGATE_DEMO_URL=http://demo:9000/mcp -e CELGATE_LIMITS_BACKEND=memory \
#     -v "$PWD/deploy:/etc/celgate:ro" celgate
#   (docs/deploy.md starts the demo server on that network; compose.yaml does it all)
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY rules ./rules
RUN python -m build --wheel --outdir /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /dist/*.whl /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin celgate \
    && mkdir -p /etc/celgate
USER 10001:10001
EXPOSE 8787
# Rule files and the config are mounted here (see compose.yaml and deploy/).
VOLUME ["/etc/celgate"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=2)"]
ENTRYPOINT ["celgate", "run", "--config", "/etc/celgate/config.yaml"]
