# The S3-compatible store of docker/compose.yaml: moto's server, at the version constraints.txt
# pins (the one tests/ run against). Keeps objects in memory. Context: the repository root.
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY constraints.txt /opt/pins/constraints.txt
RUN pip install -c /opt/pins/constraints.txt "moto[server]" \
 && useradd --create-home --uid 1000 --user-group moto
USER 1000:1000
EXPOSE 5000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "5000"]
