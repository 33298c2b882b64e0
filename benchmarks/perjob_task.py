"""One job as the original application ran it: `mpiexec -n W python perjob_task.py IN OUT PIPELINE`.

Every rank starts (interpreter, imports, MPI); rank 0 processes the image and writes the result.
"""

import sys
from pathlib import Path

from mpi4py import MPI

from pixmill.imaging.pipeline import parse_pipeline
from pixmill.imaging.process import Output, process

if MPI.COMM_WORLD.Get_rank() == 0:
    source, target, pipeline = sys.argv[1:4]
    Path(target).write_bytes(process(Path(source).read_bytes(), parse_pipeline(pipeline), Output()).data)
MPI.COMM_WORLD.Barrier()
