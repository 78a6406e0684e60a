# One image for the three processes (service, gateway, simulator); compose picks the command.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md runstore.py logformat.py ./
COPY generation_service generation_service
COPY media_gateway media_gateway
COPY comfy_simulator comfy_simulator
COPY genctl genctl
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
# Named volumes take their owner from the mount point on first use.
RUN mkdir -p /runs /data && chown app:app /runs /data
COPY workflows workflows
USER app
EXPOSE 50051 8080 8188
CMD ["python", "-m", "generation_service", "--listen", "0.0.0.0:50051"]
