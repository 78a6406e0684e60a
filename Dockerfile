# One slim image for the three processes (generation service, media gateway, simulator); compose picks the
# command. Build stage: a virtualenv with the project and its dependencies (all from wheels: grpcio, av and
# numpy ship manylinux wheels, so no compiler is needed). Final stage: that virtualenv only, no pip cache,
# no build tools, a non-root user. tests/test_compose.py checks that the COPY lines below cover every module
# and package the wheel includes (pyproject's [tool.hatch.build.targets.wheel] only-include). The workflow
# templates are package data of generation_service, installed into the virtualenv with it. The client
# distribution (client/: the gRPC stubs, generation_client, genctl) is installed first: the service needs it.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client client
COPY comfy_generation comfy_generation
COPY generation_service generation_service
COPY media_gateway media_gateway
COPY comfy_simulator comfy_simulator
RUN /opt/venv/bin/pip install --no-compile ./client . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/pip uninstall -y pip setuptools

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app /runs /data \
    && chown app:app /runs /data  # named volumes take their owner from the mount point on first use
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY workflows workflows
COPY deploy/grpc_healthcheck.py grpc_healthcheck.py
USER app
# 50051 gRPC, 9100 service metrics, 8081 gateway (and its /metrics), 8188 simulator
EXPOSE 50051 9100 8081 8188
CMD ["python", "-m", "generation_service", "--listen", "0.0.0.0:50051"]
