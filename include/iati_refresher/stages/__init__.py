"""Pure stage functions: plain values and injected clients in, outcomes out. No Airflow here."""
