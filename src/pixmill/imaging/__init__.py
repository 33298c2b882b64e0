"""Pure image code, what a worker imports: formats, the operations, pipelines and the task itself.

Nothing here touches a store, a file system or a network, so it runs on any rank MPI reaches.
"""
