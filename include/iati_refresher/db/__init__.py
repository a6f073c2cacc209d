"""The refresher database: connections, migrations and the repository (the one module with SQL)."""
