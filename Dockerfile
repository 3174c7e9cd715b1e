# The broker's image: `broker serve` by default; the same image runs `broker migrate` and
# `broker emulator` (docker-compose.yml). Build: docker build -t sideband-broker .
FROM python:3.11-slim

# Inside a container the broker listens beyond loopback (its default is 127.0.0.1).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BROKER_HOST=0.0.0.0 \
    BROKER_PORT=8080

# The image holds a checkout in /app, installed in place (-e), as a developer's is: the broker
# then serves the demo page and the ops dashboard from `web/` itself (broker/api/web_files.py;
# a wheel carries its own copy as broker/web/, made by setup.py).
WORKDIR /app
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY broker/ broker/
COPY sideband/ sideband/
COPY emulator/ emulator/
COPY migrations/ migrations/
COPY web/ web/
COPY deploy/probe.py deploy/probe.py
# Compiled now: the checkout is root's, read-only to the user the broker runs as.
RUN pip install -e '.[postgres]' \
    && python -m compileall -q broker sideband emulator migrations

# Not root; its working directory is the one place it may write (a SQLite file or a
# development signing key, when no database URL or BROKER_SIGNING_KEY is given).
RUN useradd --system --create-home --home-dir /var/lib/broker --shell /usr/sbin/nologin broker
USER broker
WORKDIR /var/lib/broker

EXPOSE 8080

# Liveness: the process answers and reaches its database. Readiness (/readyz, 503 while
# draining or overloaded) is the load balancer's question; docker-compose.yml asks it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/app/deploy/probe.py", "/healthz"]

# Exec form: `broker` is PID 1 and gets the SIGTERM that starts its drain.
ENTRYPOINT ["broker"]
CMD ["serve"]
