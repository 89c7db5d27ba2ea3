"""Many runs from a JSONL job file: ``jobfile`` reads and checks the jobs, ``runner`` runs them
into one folder with locks, resume and ``batch.json``/``batch.csv``. It receives an executor
object and never imports one."""
