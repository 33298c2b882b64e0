"""The processing side: executors (MPI or local), the dispatcher that feeds them from the store,
the recorder that stores their results, the supervisor that restarts a dispatcher, the static
MPI pool, and the batch runner of `pixmill run`.
"""
