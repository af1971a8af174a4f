# syntax=docker/dockerfile:1
# CIZO kit backend: one image, every process. The container runs `cizo <subcommand>`:
#   docker run --rm IMAGE bridge      (docker-compose.yml: command ["cizo", "bridge"])
#   docker run --rm IMAGE control
# Targets: runtime (bridge, control) and backup (runtime + PostgreSQL 16's pg_dump and
# pg_restore, for `cizo backup` / `cizo restore` in service backup-ledger).
# Configuration comes only from CIZO_* environment variables (cizo/settings.py).

# --- build: install the package and its dependencies into a virtualenv ---------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/cizo
ENV PATH=/opt/cizo/bin:$PATH

WORKDIR /src
# Only what `pip install .` needs (see .dockerignore): pyproject, README, the packages.
COPY . .
RUN pip install . && cizo --help >/dev/null

# --- runtime ---------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PATH=/opt/cizo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CIZO_API_HOST=0.0.0.0 \
    CIZO_API_PORT=8000 \
    CIZO_DATA_DIR=/var/lib/cizo

# An unprivileged user with a writable home for anything a process keeps locally.
RUN groupadd --system --gid 10001 cizo \
    && useradd --system --uid 10001 --gid cizo --home-dir /var/lib/cizo --create-home \
        --shell /usr/sbin/nologin cizo

COPY --from=build /opt/cizo /opt/cizo
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/cizo-healthcheck

USER cizo:cizo
WORKDIR /var/lib/cizo
EXPOSE 8000

ENTRYPOINT ["cizo"]
CMD ["--help"]

# --- backup: the runtime plus pg_dump/pg_restore of the server's major version ------------
# Debian's own client is PostgreSQL 15, and pg_dump refuses a newer server: the client
# comes from the PostgreSQL project's repository (PGDG), set up by Debian's
# postgresql-common helper. Keep the major version equal to the postgres image's.
FROM runtime AS backup
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common ca-certificates \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && apt-get install -y --no-install-recommends postgresql-client-16 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o cizo -g cizo -m 0750 /backups
USER cizo:cizo
