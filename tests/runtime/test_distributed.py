"""The command line ends the process group it made: left to interpreter exit, gloo can abort a finished run."""

import torch.distributed as dist

from bapo.runtime import distributed


def test_shutdown_destroys_the_process_group_and_is_a_no_op_without_one(tmp_path):
    distributed.shutdown()  # none made: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    assert dist.is_initialized()
    distributed.shutdown()
    assert not dist.is_initialized()


AGREE = """
import json, os, sys, time
from bapo.runtime import distributed
seen = distributed.agreed(["rank", int(os.environ["RANK"])])  # each process would answer differently
if distributed.rank() == 1:
    time.sleep(2)
t0 = time.time()
distributed.barrier()
# a file per process: two processes printing to one stdout can interleave their lines
with open(f"{sys.argv[1]}/rank{distributed.rank()}.json", "w") as f:
    json.dump({"rank": distributed.rank(), "seen": seen, "waited": time.time() - t0}, f)
distributed.shutdown()
"""


def test_every_process_takes_the_main_processes_answer_and_waits_at_a_barrier(tmp_path):
    import json
    import subprocess
    import sys

    assert distributed.agreed({"one": 1}) == {"one": 1}  # one process: its own answer
    (tmp_path / "agree.py").write_text(AGREE)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "agree.py"), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(x["rank"] for x in lines) == [0, 1] and all(x["seen"] == ["rank", 0] for x in lines)
    # rank 0 waited for rank 1's late arrival (accelerate's own wait returned at once on CPUs: its state said one process)
    assert next(x["waited"] for x in lines if x["rank"] == 0) > 1.5
