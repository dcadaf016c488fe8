"""The command line ends the process group it made: left to interpreter exit, gloo can abort a finished run."""

import torch.distributed as dist

from bapo.runtime import distributed


def test_shutdown_destroys_the_process_group_and_is_a_no_op_without_one(tmp_path):
    distributed.shutdown()  # none made: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    assert dist.is_initialized()
    distributed.shutdown()
    assert not dist.is_initialized()
