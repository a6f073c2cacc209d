"""Running the project on one machine: loopback servers (PostgreSQL, Redis), a local Airflow
deployment (`make up`, the Celery test tier, the benchmarks), and the embedded defaults of
`make run` / `make up`.  Nothing here is used by a deployment's tasks."""
