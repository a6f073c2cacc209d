# The IATI refresher's Airflow image: Airflow 3.3.2 with the iati_refresher package, its
# DAGs and the status plugin.  Built by docker-compose.yaml (`docker compose build`).
#
# The Python version matches requirements.lock (compiled for 3.11).
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

USER root
# Owned by the airflow user so that named volumes mounted there start writable.  A C compiler
# builds the package's compiled hot paths (setup.py) against the lxml installed below.
RUN mkdir -p /opt/airflow/iati-refresher /opt/airflow/auth \
 && chown -R airflow:0 /opt/airflow/iati-refresher /opt/airflow/auth \
 && apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
USER airflow
WORKDIR /opt/airflow/iati-refresher

# Dependencies first, so code changes rebuild only the layers below.  requirements.txt names
# them (the celery provider included) and the lock pins every version: the image runs what
# `make test` tested.
COPY --chown=airflow:0 requirements.txt requirements.lock ./
RUN pip install --no-cache-dir -c requirements.lock -r requirements.txt

# The package itself (its dependencies are all installed above), then the IATI schemas
# for the built-in validator, fetched and checksum-verified at build time.
COPY --chown=airflow:0 pyproject.toml setup.py README.md* ./
COPY --chown=airflow:0 include ./include
# (built without isolation: the compiled hot paths must match the lxml installed above)
RUN pip install --no-cache-dir -c requirements.lock cython setuptools \
 && pip install --no-cache-dir --no-deps --no-build-isolation . \
 && python -c "from iati_refresher.iati.accelerated import PROBLEM; assert PROBLEM is None, PROBLEM" \
 && python -m iati_refresher.validation.fetch_schemas

COPY --chown=airflow:0 migrations ./migrations
COPY --chown=airflow:0 docker/airflow-init.sh ./docker/airflow-init.sh
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

# The package is installed (not editable): tell it where its migrations are.
ENV REFRESHER_MIGRATIONS_DIR=/opt/airflow/iati-refresher/migrations
WORKDIR /opt/airflow
