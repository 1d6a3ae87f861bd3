# One image for every celery-durable service: worker, beat, flower, metrics, migrate, the
# example app and the integration tests (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# make: the tests service runs `make integration`, as CI does.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

WORKDIR /app

# The package and its dependencies first: this layer is rebuilt only when they change.
COPY pyproject.toml README.md ./
COPY celery_durable ./celery_durable
# The wheel carries the example shop for `celery-durable demo` (pyproject's data-files).
COPY examples ./examples
RUN pip install ".[test]"

# Then everything the services and tests run from the working directory: examples (the
# app `celery -A examples.order_app` imports), tests, scripts, the Makefile.
COPY . .

# The Makefile's install step is done: mark it so `make integration VENV=/usr/local` skips it.
# Writable directories for the non-root user: metrics files (a volume) and beat's schedule.
RUN touch /usr/local/.installed-stamp \
    && chmod 0755 docker/entrypoint.sh \
    && mkdir -p /var/lib/celery-durable/metrics /var/lib/celery-durable/beat \
    && chown -R app:app /var/lib/celery-durable

USER app
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["celery", "-A", "examples.order_app", "worker", "-P", "prefork", "-c", "2", "-l", "INFO", "-E"]
